"""``medtl pacs``: studies pulled from a PACS (DICOMweb or DIMSE) into a folder to build a manifest from, and the
DICOM-SEG a scoring wrote pushed back to it (``medtl.pacs``, ``medtl.archives``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtl.errors import on_interrupt

pacs_app = typer.Typer(help="Pull studies from a PACS, and push DICOM-SEG and SR back to it (DICOMweb or DIMSE).",
                       no_args_is_help=True)

ArchiveArg = Annotated[str, typer.Argument(
    help="The archive: its DICOMweb root (https://pacs.example.org/dicom-web) or its DIMSE node "
         "(dicom://CALLED_AE@host:port).")]
TokenOption = Annotated[Optional[str], typer.Option(
    "--token-env", help="DICOMweb: name of the environment variable that holds a bearer token (never the token).")]
CallingOption = Annotated[str, typer.Option(
    "--calling-ae", help="DIMSE: medtl's AE title, as the archive knows it.")]


@pacs_app.command("echo")
def pacs_echo(archive: ArchiveArg, token_env: TokenOption = None, calling_ae: CallingOption = "MEDTL") -> None:
    """Check that the archive answers (C-ECHO, or a DICOMweb study search) before a pull or a push."""
    from medtl.archives import open_archive

    source = open_archive(archive, token_env, calling_ae)
    typer.echo(f"{source.name}: {source.echo()}")


@pacs_app.command("find")
def pacs_find(
    archive: ArchiveArg,
    out: Annotated[Path, typer.Option("--out", help="Text file to write the studies' StudyInstanceUIDs to, one a line.")],
    modality: Annotated[Optional[str], typer.Option(help="Studies holding a series of this DICOM Modality (CT, MR...).")] = None,
    since: Annotated[Optional[str], typer.Option(help="Studies on or after this date (YYYY-MM-DD).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Studies on or before this date (YYYY-MM-DD).")] = None,
    token_env: TokenOption = None,
    calling_ae: CallingOption = "MEDTL",
) -> None:
    """Find a cohort's studies (a modality, a range of dates) and write their list for pacs pull --studies; only the
    count is shown."""
    from medtl.archives import open_archive
    from medtl.pacs import study_filters, write_study_list

    filters = study_filters(modality, since, until)
    source = open_archive(archive, token_env, calling_ae)
    uids = list(dict.fromkeys(source.find(filters)))
    write_study_list(uids, out)
    typer.echo(f"{out}: {len(uids):,} studies" + (f"; next: medtl pacs pull {source.name} --studies {out} --out export/"
                                                  if uids else ""))


@pacs_app.command("pull")
def pacs_pull(
    archive: ArchiveArg,
    out: Annotated[Path, typer.Option("--out", help="Folder to retrieve into (new, or one an earlier pull filled).")],
    studies: Annotated[Optional[Path], typer.Option(help="Text file of StudyInstanceUIDs, one a line.")] = None,
    accessions: Annotated[Optional[Path], typer.Option(
        help="Text file of accession numbers, one a line, as a report registry keys studies (in place of --studies); "
             "manifest build --labels then joins a sheet keyed by them.")] = None,
    modality: Annotated[Optional[list[str]], typer.Option(
        help="Only series of this DICOM Modality (CT, MR, DX...); repeat it for several (--modality CT --modality "
             "RTSTRUCT: scans and their contours, for manifest build --structures).")] = None,
    token_env: TokenOption = None,
    calling_ae: CallingOption = "MEDTL",
    move_port: Annotated[Optional[int], typer.Option(
        min=1, max=65535, help="DIMSE: retrieve by C-MOVE to medtl listening on this port, as the archive's "
        "administrator entered medtl's node (--calling-ae, this host, this port); without it, by C-GET.")] = None,
) -> None:
    """Retrieve each study's series into OUT/study0001/study0001_SE01 (no UID in a name; OUT/studies.csv says which
    is which); a rerun retrieves only what is missing."""
    from medtl.archives import open_archive
    from medtl.errors import MedtlError
    from medtl.pacs import pull, read_study_list

    if (studies is None) == (accessions is None):
        raise MedtlError("give --studies (StudyInstanceUIDs) or --accessions (accession numbers): one list of studies")
    by, listed = ("study", studies) if studies is not None else ("accession", accessions)
    entries = read_study_list(listed, by)  # type: ignore[arg-type]
    source = open_archive(archive, token_env, calling_ae, move_port)
    with on_interrupt("every series retrieved so far is kept whole; rerun the same command to retrieve the rest"):
        summary = pull(source, entries, out, [m.upper() for m in modality or []], str(listed), progress=True, by=by)
    typer.echo(f"{out}: {summary.retrieved} series retrieved now, {summary.present} already there (from {source.name})")
    for where, why in summary.failed.items():
        typer.echo(f"{where}: {why}", err=True)
    if summary.failed:
        typer.echo(f"{len(summary.failed)} of the studies gave no series; rerun to retry them", err=True)
        raise typer.Exit(1)
    typer.echo(f"next: medtl manifest build {out} --out manifest.csv")


@pacs_app.command("push")
def pacs_push(
    archive: ArchiveArg,
    folder: Annotated[Path, typer.Argument(
        help="A scoring's --masks-out or --reports-out folder: its DICOM-SEG and SR files are stored.")],
    token_env: TokenOption = None,
    calling_ae: CallingOption = "MEDTL",
) -> None:
    """Store a scoring's DICOM-SEG and SR in the archive, beside the studies they describe; a rerun sends only the
    rest."""
    from medtl.archives import open_archive
    from medtl.pacs import push

    with on_interrupt("the files stored so far are listed in the folder's .medtl-pushed; rerun the same command to "
                      "store the rest"):
        stored, before, failed = push(open_archive(archive, token_env, calling_ae), folder, progress=True)
    typer.echo(f"{folder}: {stored} object(s) stored now, {before} by an earlier push")
    for name, why in failed.items():
        typer.echo(f"{name}: {why}", err=True)
    if failed:
        raise typer.Exit(1)
