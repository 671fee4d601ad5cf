"""``medtl manifest`` and ``medtl weights``: the commands that prepare data and pretrained weights before
anything trains. Thin, like the rest of the CLI: parse, call one library function, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtl.cli_options import CaseIdsOption, SetOption, UncertainOption

manifest_app = typer.Typer(help="Build, check and split manifests.", no_args_is_help=True)
weights_app = typer.Typer(help="List, import and verify pretrained weights (offline cache).", no_args_is_help=True)


@manifest_app.command("build")
def manifest_build(
    folder: Annotated[Path, typer.Argument(help="Folder holding DICOM series, NIfTI, MetaImage, NRRD or PNG files.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write.")],
    labels: Annotated[Optional[list[Path]], typer.Option(
        help="CSV or .xlsx workbook with case_id (or the scans' file names) and label, and any subgroup columns; "
             "repeat it for a set that ships several (CheXpert's train.csv and valid.csv).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Folder of masks named like their cases.")] = None,
    ids: CaseIdsOption = "folder",
    label_folders: Annotated[bool, typer.Option(
        "--label-folders", help="Label each scan by the folder it lies in (NORMAL/, PNEUMONIA/); a train/, val/ or "
        "test/ folder above it sets its split.")] = False,
    structures: Annotated[Optional[list[str]], typer.Option(
        help="Masks from the RTSTRUCT structure sets or DICOM-SEG segmentations beside the DICOM series: a structure's "
             "or segment's name (any case), one class each time it is given (--structures PTV --structures GTV: labels "
             "1 and 2, the later winning where they overlap); NAME,OTHER for the names one goes by at different "
             "sites.")] = None,
    structures_out: Annotated[Optional[Path], typer.Option(
        help="Folder for the masks --structures writes, and for 3D Slicer segmentations (.seg.nrrd) placed on their "
             "scan's grid and numbered by segment name, one CASE.nii.gz each (default: beside --out, named after it "
             "with _masks).")] = None,
) -> None:
    """Walk a folder and write a manifest (one row per series or file)."""
    from medtl.data.build import build_manifest
    from medtl.data.findings import finding_counts, unfit_labels
    from medtl.log import logger

    table = build_manifest(folder, out, labels, masks, ids=ids, progress=True, label_folders=label_folders,
                           structures=structures or (), structures_out=structures_out)
    counts = [f"{column}s " + ", ".join(f"{k} {v:,}" for k, v in table[column].value_counts().sort_index().items())
              for column in ("label", "split", "view") if column in table and table[column].notna().any()]
    if structures:
        names = [s.split(",")[0].strip().lower() for s in structures]
        counts.append(f"masks from structures {int(table['mask'].notna().sum()):,} (data.classes: "
                      f"[background, {', '.join(names)}])")
    typer.echo("; ".join([f"{out}: {len(table):,} cases", *counts]))
    findings = "" if "label" in table else finding_counts(table)
    if findings:  # a column per finding: how many of each, before choosing one
        typer.echo(findings)
    unfit = unfit_labels(table["label"], out) if "label" in table and table["label"].notna().any() else None
    if unfit:  # said now, not first by the check or the training that refuses it
        logger.warning("%s: %s", out.name, unfit)


@manifest_app.command("check")
def manifest_check(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV.")],
    deep: Annotated[bool, typer.Option("--deep", help="Also read every voxel (NaN/Inf, decoding).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="Config naming classes, spatial_dims and modality.")] = None,
    set_: SetOption = None,
) -> None:
    """Print every problem in a manifest; exit 1 when there is any."""
    from medtl.config import load_config
    from medtl.data.check import Geometry, check_manifest, in_hounsfield
    from medtl.data.manifest import read_manifest
    from medtl.data.check_tables import print_check

    cfg = load_config(config, set_).data if (config or set_) else None
    m = read_manifest(manifest, cfg.data_root if cfg else None, keep_going=True)
    seen: dict[str, Geometry] = {}
    problems = check_manifest(m, cfg.classes if cfg else None, cfg.spatial_dims if cfg else None, deep, progress=True,
                              modality=cfg.modality if cfg else None, views=cfg.views if cfg else None,
                              seen=seen, hounsfield=cfg is not None and in_hounsfield(cfg.modality, cfg.ct_window))
    if print_check(m, problems, seen, cfg.subgroups if cfg else None, deep):
        raise typer.Exit(1)


@manifest_app.command("split")
def manifest_split(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write, with a split (or fold) column.")],
    val: Annotated[float, typer.Option(help="Fraction of patients for validation.")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of patients for test.")] = 0.15,
    folds: Annotated[Optional[int], typer.Option(help="Write k cross-validation folds instead.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives the same split.")] = 0,
    test_list: Annotated[Optional[Path], typer.Option(
        "--test-list", help="The test cases, one per line (case ids, file names or paths), as a public set's official "
        "test split (ChestX-ray14's test_list.txt); --val is then a fraction of the other patients.")] = None,
) -> None:
    """Patient-grouped, label-stratified split."""
    from medtl.data.check_tables import print_counts
    from medtl.data.splits import write_split

    table, column = write_split(manifest, out, val, test, folds, seed, test_list)
    print_counts(table, column)


@manifest_app.command("finding")
def manifest_finding(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV whose labels join several findings (Effusion|Infiltration), "
                                                  "or with a column per finding (1, 0, -1, blank), as CheXpert's.")],
    finding: Annotated[str, typer.Argument(help="The finding a model is to learn, as the labels or its column write it.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write: the finding present or absent per case.")],
    uncertain: UncertainOption = None,
) -> None:
    """One finding of a sheet of several per case, present or absent: the manifest a model of it trains on. In a
    finding's own column, 1 is present and 0 or blank (not mentioned) absent."""
    from medtl.data.findings import present_absent, write_one_finding

    table = write_one_finding(manifest, finding, out, uncertain)  # type: ignore[arg-type]
    counts = table["label"].value_counts()
    typer.echo(f"{out}: {len(table):,} cases; " + ", ".join(f"{c} {int(counts.get(c, 0)):,}" for c in present_absent(finding)))


@manifest_app.command("shift")
def manifest_shift(
    manifest: Annotated[Path, typer.Argument(help="Source-domain manifest of 2D PNG images.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the shifted images and their manifest.")],
    gamma: Annotated[float, typer.Option(help="Intensity gamma.")] = 1.6,
    contrast: Annotated[float, typer.Option(help="Contrast factor around mid-grey.")] = 0.7,
    blur: Annotated[float, typer.Option(help="Gaussian blur sigma (pixels).")] = 0.8,
    noise: Annotated[float, typer.Option(help="Gaussian noise std (intensity 0-1).")] = 0.04,
    downsample: Annotated[float, typer.Option(help="Resolution factor (resample down and back up).")] = 0.6,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the noise.")] = 0,
) -> None:
    """Make a target domain from real images with a scanner-like shift (for domain adaptation)."""
    from medtl.data.shift import Shift, make_shifted_domain

    path = make_shifted_domain(manifest, out, Shift(gamma, contrast, blur, noise, downsample), seed)
    typer.echo(f"{path}: written")


@manifest_app.command("import-medmnist")
def manifest_import_medmnist(
    npz: Annotated[Path, typer.Argument(help="MedMNIST .npz file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write images and manifest.csv into.")],
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names in label order.")] = None,
) -> None:
    """Write a MedMNIST file as real image files with a manifest keeping the official splits."""
    from medtl.data.sources import import_medmnist

    path = import_medmnist(npz, out, classes.split(",") if classes else None)
    typer.echo(f"{path}: written")


@weights_app.command("list")
def weights_list() -> None:
    """Known weights: name, dims, where found, SHA-256; how to import the missing ones."""
    from rich.console import Console
    from rich.table import Table

    from medtl.models.weights import cache_dir, weights_table

    rows = weights_table()
    table = Table(title=f"pretrained weights (cache: {cache_dir()})", title_justify="left")
    for col in ("name", "dims", "found", "sha256"):
        table.add_column(col, no_wrap=col == "name")
    for row in rows:
        table.add_row(row["name"], row["dims"], row["found"], row["sha256"])
    console = Console(width=min(Console().width, 100))  # fits an 80-column terminal; a pipe gets the same
    console.print(table)
    missing = [r for r in rows if r["found"] == "missing"]
    if missing:
        console.print("\nTo use a missing one, download its file where you have internet, then import it:")
        for row in missing:
            console.print(f"  medtl weights import {row['name']} FILE", highlight=False)
            console.print(f"    {row['url'] or row['source']}", highlight=False, soft_wrap=True)


@weights_app.command("import")
def weights_import(
    name: Annotated[str, typer.Argument(help="Weight name from `medtl weights list`.")],
    file: Annotated[Path, typer.Argument(help="The downloaded file, or the folder it was downloaded to.")],
) -> None:
    """Verify a downloaded weight file and copy it into medtl's cache."""
    from medtl.models.weights import import_weights

    typer.echo(f"{name}: imported to {import_weights(name, file)}")


@weights_app.command("verify")
def weights_verify() -> None:
    """Check the SHA-256 of every cached or packaged weight file."""
    from medtl.models.weights import verify_all

    problems = verify_all()
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("all present weight files verified")
