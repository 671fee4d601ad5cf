"""Studies pulled from a PACS into a folder ``manifest build`` reads, and the DICOM-SEG ``score --masks-out`` writes
pushed back to it, over DICOMweb or DIMSE (``medtl.archives``).

The export is named by position, never by identifier: ``study0001/study0001_SE01`` (series in SeriesNumber order),
so case ids, logs and MLflow carry no UID. Which folder holds which study and series is kept in the export's own
``studies.csv``, beside the DICOM files that hold every tag anyway, and read by nothing else in medtl. A series is
written to a hidden folder and renamed when whole: a rerun after a crash or a refused study retrieves only what is
missing.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtl.archives import ArchiveUnavailable, DicomWeb, Dimse
from medtl.errors import MedtlError
from medtl.files import write_atomically

Archive = DicomWeb | Dimse

logger = logging.getLogger(__name__)

INDEX = "studies.csv"
PUSHED = ".medtl-pushed"


@dataclass
class PullSummary:
    """What a pull did: series retrieved now, series already there, and the studies that failed, with why."""

    retrieved: int = 0
    present: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def read_study_list(path: Path, by: str = "study") -> list[str]:
    """The entries of a list file, one a line (blank lines and # comments skipped), each once in the order given:
    StudyInstanceUIDs (``by="study"``), or accession numbers (``by="accession"``), as a report registry keys studies."""
    option = "--studies" if by == "study" else "--accessions"
    what = "StudyInstanceUID" if by == "study" else "accession number"
    if not path.is_file():
        raise MedtlError(f"{option} {path}: file not found; give a text file of {what}s, one a line")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").splitlines()]
    entries = list(dict.fromkeys(line for line in lines if line))
    if by == "study":
        bad = next((i for i, uid in enumerate(entries) if not all(part.isdigit() for part in uid.split("."))), None)
        if bad is not None:
            raise MedtlError(f"{option} {path}: entry {bad + 1} is not a DICOM UID (digits and dots); give one "
                             f"{what} a line, or accession numbers with --accessions")
    if not entries:
        raise MedtlError(f"{option} {path}: no {what} in it")
    return entries


def resolve_accessions(archive: Archive, accessions: list[str], source: str,
                       summary: PullSummary) -> list[tuple[str, str]]:
    """(entry, StudyInstanceUID) for each study the archive files under each accession number; an accession number
    it does not know is counted in ``summary`` by its entry, never shown (it identifies a patient's visit)."""
    found: list[tuple[str, str]] = []
    for entry, accession in enumerate(accessions, start=1):
        where = f"entry {entry} of {source}"
        try:
            studies = archive.studies(accession)
        except ArchiveUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the transports each raise their own
            summary.failed[where] = _failure(exc)
            continue
        if not studies:
            summary.failed[where] = "no study with that accession number in the archive"
        found += [(where, study) for study in studies]
    return found


def _index(out: Path) -> list[dict[str, str]]:
    if not (out / INDEX).is_file():
        return []
    with open(out / INDEX, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_index(out: Path, rows: list[dict[str, str]]) -> None:
    columns = ["folder", "study_instance_uid", "series_instance_uid", "modality"]

    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(out / INDEX, write)


def _study_labels(uids: list[str], rows: list[dict[str, str]]) -> dict[str, str]:
    """``study0001``... by the order of the list, keeping the label an earlier pull gave a study."""
    labels = {r["study_instance_uid"]: r["folder"].split("/", 1)[0] for r in rows}
    taken = {int(label.removeprefix("study")) for label in labels.values() if label.removeprefix("study").isdigit()}
    number = 0
    for uid in uids:
        if uid not in labels:
            number = next(n for n in range(number + 1, len(uids) + len(taken) + 2) if n not in taken)
            labels[uid] = f"study{number:04d}"
    return labels


def _series_folder(label: str, rows: list[dict[str, str]]) -> str:
    """The next ``LABEL/LABEL_SEnn`` of a study: numbers an earlier pull gave stay with their series."""
    used = {r["folder"] for r in rows if r["folder"].startswith(f"{label}/")}
    number = next(n for n in range(1, len(used) + 2) if f"{label}/{label}_SE{n:02d}" not in used)
    return f"{label}/{label}_SE{number:02d}"


def _retrieve(archive: Archive, study: str, series: str, folder: Path) -> None:
    """One series into ``folder``, through a hidden folder beside it renamed when whole: a failure leaves nothing."""
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        archive.retrieve(study, series, partial)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _failure(exc: Exception) -> str:
    """A study's or file's failure in a few words: the archive's own text may quote UIDs, so only medtl's is kept."""
    return str(exc) if isinstance(exc, RuntimeError) and str(exc) else type(exc).__name__


def pull(archive: Archive, entries: list[str], out: Path, modalities: list[str] | None = None,
         source: str = "--studies", progress: bool = False, by: str = "study") -> PullSummary:
    """Retrieves every series of the studies ``entries`` name (StudyInstanceUIDs, or accession numbers with
    ``by="accession"``), of ``modalities`` where given (CT and RTSTRUCT, say, for a scan and its contours), into
    ``out``; see the module's docstring. An archive that cannot be used stops the pull in one line; a study it cannot
    give is counted in the summary by its entry in ``source``, and the pull goes on."""
    from medtl.files import claim_folder
    from medtl.log import counted

    claim_folder(out, "--out", "pacs")
    summary = PullSummary()
    studies = (resolve_accessions(archive, entries, source, summary) if by == "accession"
               else [(f"entry {n} of {source}", uid) for n, uid in enumerate(entries, start=1)])
    rows = _index(out)
    labels = _study_labels([uid for _, uid in studies], rows)
    known = {(r["study_instance_uid"], r["series_instance_uid"]): r["folder"] for r in rows}
    for where, study in counted(studies, "studies", progress):
        label = labels[study]
        try:
            found = [s for s in archive.series(study) if not modalities or s["modality"].upper() in modalities]
            if not found:
                summary.failed[where] = f"no {' or '.join(modalities or [])}{' ' if modalities else ''}series in the archive"
            found.sort(key=lambda s: (int(s["number"] or 0) if s["number"].lstrip("-").isdigit() else 0, s["uid"]))
            for item in found:
                if (study, item["uid"]) in known and (out / known[(study, item["uid"])]).is_dir():
                    summary.present += 1
                    continue
                folder = known.get((study, item["uid"])) or _series_folder(label, rows)
                _retrieve(archive, study, item["uid"], out / folder)
                if (study, item["uid"]) not in known:
                    rows.append({"folder": folder, "study_instance_uid": study, "series_instance_uid": item["uid"],
                                 "modality": item["modality"]})
                    known[(study, item["uid"])] = folder
                _write_index(out, rows)  # after each series: what a crash leaves is indexed and whole
                summary.retrieved += 1
        except ArchiveUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the transports and pydicom each raise their own
            summary.failed[where] = _failure(exc)
    return summary


def push(archive: Archive, folder: Path, progress: bool = False) -> tuple[int, int, dict[str, str]]:
    """Stores every DICOM-SEG and DICOM SR under ``folder`` (``score --masks-out`` or ``--reports-out``) in the
    archive; returns how many were stored now, how many an earlier push stored (listed in ``folder/.medtl-pushed``, so
    a rerun sends only the rest), and the files the archive refused, with why."""
    import pydicom

    from medtl.data.dicom import is_dicom_file
    from medtl.log import counted

    fix = "give the --masks-out or --reports-out folder of a scoring of DICOM studies"
    if not folder.is_dir():
        raise MedtlError(f"{folder}: not a folder; {fix}")
    segs = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_dicom_file(p) and str(
        pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")) in ("SEG", "SR")]
    if not segs:
        raise MedtlError(f"{folder}: holds no DICOM-SEG or SR; {fix}")
    log = folder / PUSHED
    done = set(log.read_text().splitlines()) if log.is_file() else set()
    todo = [p for p in segs if str(p.relative_to(folder)) not in done]
    failed: dict[str, str] = {}
    for path in counted(todo, "storing", progress):
        try:
            refused = archive.store(pydicom.dcmread(path))
        except ArchiveUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the transports and pydicom each raise their own
            refused = _failure(exc)
        if refused:
            failed[path.name] = refused
            continue
        with open(log, "a") as fh:
            fh.write(f"{path.relative_to(folder)}\n")
    return len(todo) - len(failed), len(segs) - len(todo), failed


def study_filters(modality: str | None, since: str | None, until: str | None) -> dict[str, str]:
    """Query keys for the studies of a modality between two dates (YYYY-MM-DD, either end open), as a cohort is
    defined; a date that is no date is refused in one line."""
    from datetime import date

    filters: dict[str, str] = {}
    days = []
    for option, value in (("--since", since), ("--until", until)):
        try:
            days.append(date.fromisoformat(value).strftime("%Y%m%d") if value else "")
        except ValueError:
            raise MedtlError(f"{option} {value}: not a date; give it as YYYY-MM-DD") from None
    if any(days):
        filters["StudyDate"] = f"{days[0]}-{days[1]}"
    if modality:
        filters["ModalitiesInStudy"] = modality.upper()
    if not filters:
        raise MedtlError("medtl pacs find: give --modality, --since or --until; a search for every study in an "
                         "archive is refused")
    return filters


def write_study_list(uids: list[str], out: Path) -> None:
    """The list ``pacs pull --studies`` reads, written whole; identifiers go to this file alone, never to a log."""
    write_atomically(out, lambda fh: fh.write("".join(f"{uid}\n" for uid in uids)))
