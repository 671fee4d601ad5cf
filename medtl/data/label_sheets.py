"""Label sheets joined to the scans ``manifest build`` found. A sheet names its cases by case id, by file (as public
sets do: ChestX-ray14's ``Image Index``, CheXpert's ``Path``), or, for DICOM, by accession or patient number (as a
hospital's report registry does); each is read as case ids, and no DICOM identifier reaches the manifest."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medtl.data import dicom
from medtl.data.findings import findings_hint
from medtl.data.manifest import KNOWN_COLUMNS, read_sheet
from medtl.data.readers import IMAGE_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES
from medtl.errors import ManifestError

logger = logging.getLogger(__name__)

ACCESSION_NAMES = {"accession", "accessionnumber", "accessionno", "accno", "acc"}
"""How a sheet heads the accession number (any capitals, spaces, dots, dashes or underscores)."""

TAIL_DEPTH = 6
"""The most trailing path parts a sheet's file reference is matched on (``train/patient00001/study1/view1.jpg``)."""


def case_id_from_file(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *IMAGE_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def join_labels(table: pd.DataFrame, labels: list[Path], cases: list[tuple[str, str]], folder: Path,
                identifiers: dict[str, dict[str, str]], out: Path) -> pd.DataFrame:
    """``table`` (one row per scan found in ``folder``) with the sheets' columns joined on case id, for the manifest
    at ``out``; several sheets are one (CheXpert's train.csv and valid.csv). ``cases`` is (case id, reference) per
    scan; ``identifiers`` each case's raw DICOM numbers, to join a sheet keyed by them."""
    sheets = [_keyed_sheet(Path(p), table, cases, folder, identifiers) for p in labels]
    sheet = sheet_views(pd.concat(sheets, ignore_index=True) if len(sheets) > 1 else sheets[0])
    name = " + ".join(Path(p).name for p in labels)
    if "label" not in sheet and "mask" not in table:
        logger.warning("%s has no label column (it has %s): the manifest holds no labels until the column that holds "
                       "the classes is named 'label'%s", name, ", ".join(sheet.columns), findings_hint(sheet, out))
    copies = sheet.duplicated()
    if copies.any():  # a row pasted twice says nothing new; two rows that differ are a question only a person can answer
        logger.warning("%s: %d row(s) repeat an earlier row exactly (e.g. case %s); each is read once", name,
                       int(copies.sum()), sheet.loc[copies, "case_id"].iloc[0])
        sheet = sheet[~copies]
    repeated = sheet["case_id"][sheet["case_id"].duplicated()]
    if len(repeated):
        case = repeated.iloc[0]
        raise ManifestError(f"{name}: case {case} has {int((sheet['case_id'] == case).sum())} rows; give one row per "
                            "case_id (a case with two labels cannot be trained on)")
    _say_unjoined(sheet, table, name)
    return table.merge(sheet, on="case_id", how="left")


def sheet_views(sheet: pd.DataFrame) -> pd.DataFrame:
    """The sheet with a ``view`` column where it states each film's view as CheXpert does: a ``Frontal/Lateral``
    column, and the frontal films' ``AP/PA``. A lateral film is ``LATERAL``, a frontal one without AP or PA
    ``FRONTAL``; the sheet's own columns stay. (ChestX-ray14's ``View Position`` is read as ``view`` by its name.)"""
    side = next((c for c in sheet.columns if str(c).replace(" ", "").lower() == "frontal/lateral"), None)
    if "view" in sheet or side is None:
        return sheet
    projection = next((c for c in sheet.columns if str(c).replace(" ", "").lower() == "ap/pa"), None)
    stated = sheet[projection].str.upper() if projection else pd.Series(pd.NA, index=sheet.index, dtype="object")
    lateral = sheet[side].str.lower().str.startswith("lat", na=False)
    frontal = sheet[side].str.lower().str.startswith("front", na=False)
    view = stated.where(stated.notna() & frontal, pd.NA)
    return sheet.assign(view=view.mask(lateral, "LATERAL").mask(frontal & view.isna(), "FRONTAL"))


def _keyed_sheet(labels: Path, table: pd.DataFrame, cases: list[tuple[str, str]], folder: Path,
                 identifiers: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One sheet with a case_id column: its own, or read from the scans' files or DICOM numbers it is keyed by."""
    sheet = read_sheet(labels)
    if "case_id" not in sheet:
        sheet = keyed_by_files(sheet, labels, cases, folder)
    if "case_id" not in sheet:
        sheet = keyed_by_tags(sheet, labels, identifiers)
    stems = sheet["case_id"].map(lambda c: case_id_from_file(Path(c)) if isinstance(c, str) else c)
    if stems.isin(table["case_id"]).sum() > sheet["case_id"].isin(table["case_id"]).sum():
        logger.info("%s names cases by file (e.g. %s): read as case %s", labels.name,
                    sheet["case_id"][stems != sheet["case_id"]].iloc[0], stems[stems != sheet["case_id"]].iloc[0])
        sheet = sheet.assign(case_id=stems)
    return sheet


def _say_unjoined(sheet: pd.DataFrame, table: pd.DataFrame, name: str) -> None:
    unmatched = sorted(set(sheet["case_id"].dropna()) - set(table["case_id"]))
    if unmatched:
        example, hint = _excel_hint(unmatched, table["case_id"])
        logger.warning("%d label rows match no scan (e.g. %s)%s", len(unmatched), example, hint)
    unlabelled = sorted(set(table["case_id"]) - set(sheet["case_id"]))
    if unlabelled:
        logger.warning("%d scans have no row in %s (e.g. %s): they stay unlabelled", len(unlabelled), name,
                       unlabelled[0])


def _parts(reference: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[\\/]+", reference.strip()) if p not in ("", "."))


def _file_index(cases: list[tuple[str, str]], folder: Path) -> tuple[dict[tuple[str, ...], str | None], ...]:
    """Each scan's trailing path parts (the last one with and without its suffix) to its case id, and its path below
    ``folder`` to its case id; None where two scans share them (``view1_frontal.jpg`` in every study folder)."""
    tails: dict[tuple[str, ...], str | None] = {}
    below: dict[tuple[str, ...], str | None] = {}
    root = os.path.abspath(folder)
    for case, ref in cases:
        path = os.path.abspath(dicom.parse_series_ref(ref)[0])
        parts, relative = _parts(path), _parts(os.path.relpath(path, root))
        for index, keys in ((tails, [parts[-k:] for k in range(1, min(TAIL_DEPTH, len(parts)) + 1)]),
                            (below, [relative])):
            for tail in keys:
                for key in {tail, (*tail[:-1], case_id_from_file(Path(tail[-1])))}:
                    index[key] = case if index.get(key, case) == case else None
    return tails, below


def file_matcher(cases: list[tuple[str, str]], folder: Path) -> Callable[[object], str | None]:
    """value -> the case id of the one scan it names, or None. A value names a scan when it ends the scan's path
    (``00000001_000.png``, ``train/patient00001/study1/view1_frontal.jpg``, a file's name without its suffix), or
    when the scan's whole path below ``folder`` ends the value (the folders above named otherwise:
    ``CheXpert-v1.0-small/train/...`` for scans unpacked into ``chexpert/train/...``)."""
    tails, below = _file_index(cases, folder)
    depths = sorted({len(k) for k in below}, reverse=True)

    def case_of(value: object) -> str | None:
        parts = _parts(value) if isinstance(value, str) else ()
        if parts[-TAIL_DEPTH:] in tails:  # None there: several scans end so
            return tails[parts[-TAIL_DEPTH:]]
        return next((below[parts[-k:]] for k in depths if k < len(parts) and parts[-k:] in below), None)

    return case_of


def keyed_by_files(sheet: pd.DataFrame, labels: Path, cases: list[tuple[str, str]], folder: Path) -> pd.DataFrame:
    """A sheet keyed by the scans' files (``file_matcher``) read as one keyed by case id: the key is the column whose
    values name the most scans, each one scan alone, when they name at least half of its rows. Else the sheet as it
    is."""
    case_of = file_matcher(cases, folder)

    best, best_cases, best_count = None, None, 0
    for column in (c for c in sheet.columns if c == "image" or c not in KNOWN_COLUMNS):
        if not sheet[column].dropna().head(200).map(case_of).notna().any():  # a sheet of 200,000 rows: columns at a glance
            continue
        found = sheet[column].map(case_of)
        count = int(found.notna().sum())
        if count > best_count and count * 2 >= sheet[column].notna().sum():
            best, best_cases, best_count = column, found, count
    if best is None:
        return sheet
    logger.info("%s names scans by its %r column: %d of its %d rows name a scan", labels.name, best, best_count,
                len(sheet))
    keyed = sheet.drop(columns=[best])
    keyed.insert(0, "case_id", best_cases.where(best_cases.notna(), sheet[best]))
    return keyed


def keyed_by_tags(sheet: pd.DataFrame, labels: Path, identifiers: dict[str, dict[str, str]]) -> pd.DataFrame:
    """A sheet keyed by accession number or patient id, as a hospital's report registry is, as one keyed by case id:
    every series of a study (or scan of a patient) takes that row. ``identifiers`` holds each case's raw DICOM
    values; the manifest gets none of them, and messages count them, never show them."""
    sheet = sheet.rename(columns={c: "accession" for c in sheet.columns
                                  if re.sub(r"[\s._-]+", "", c.lower()) in ACCESSION_NAMES})
    key = next((k for k in ("accession", "patient_id") if k in sheet), None)
    if key is None:
        raise ManifestError(f"{labels}: needs a case_id column to join on, a column of the scans' file names or paths, "
                            f"or for DICOM scans an accession number or patient_id column (has {', '.join(sheet.columns)})")
    if not any(key in ids for ids in identifiers.values()):
        raise ManifestError(f"{labels}: keyed by {key}, which none of the scans states (only DICOM carries it); give "
                            "a case_id column, or a column of the scans' file names")
    rows = sheet.dropna(subset=[key]).drop_duplicates()
    repeated = int(rows[key].duplicated().sum())
    if repeated:
        raise ManifestError(f"{labels}: {repeated} {key} value(s) have two different rows; give one row per {key}")
    rows = rows.set_index(key)
    matched = [(case, ids[key]) for case, ids in identifiers.items() if ids.get(key) in rows.index]
    unused = len(set(rows.index) - {value for _, value in matched})
    say = logger.warning if unused else logger.info
    say("%s is keyed by %s: %d scans take its rows%s", labels.name, key, len(matched),
        f"; {unused} of its rows match no scan" if unused else "")
    keyed = rows.loc[[value for _, value in matched]].reset_index(drop=True)
    keyed.insert(0, "case_id", [case for case, _ in matched])
    return keyed.drop(columns=["patient_id"], errors="ignore")  # the hospital's patient number stays out


def _excel_hint(unmatched: list[str], cases: pd.Series) -> tuple[str, str]:
    """An unmatched sheet id to show, and what a spreadsheet did to it where that is plain: ids like 1-2 read as
    dates, 007 stored as the number 7 (its leading zeros gone), or 12 saved as the decimal 12.0."""
    dates = [c for c in unmatched if re.fullmatch(r"\d{4}-\d\d-\d\d( 00:00:00)?", c)]
    if dates:
        return dates[0], ("; Excel reads ids like 1-2 or 3/4 as dates: format the case_id column as Text and type "
                          "them again")
    padded = {c.lstrip("0") or "0": c for c in cases if isinstance(c, str) and c.isdigit() and c.startswith("0")}
    stripped = [c for c in unmatched if c.isdigit() and c in padded]
    if stripped:
        return stripped[0], (f"; scan {padded[stripped[0]]!r} has this id with leading zeros, which a spreadsheet "
                             "drops from numbers: format the case_id column as Text and type the ids again")
    decimals = [c for c in unmatched if re.fullmatch(r"\d+\.0+", c) and c.split(".")[0] in set(cases)]
    if decimals:
        return decimals[0], (f"; scan {decimals[0].split('.')[0]!r} has this id without the decimals, which the "
                             "sheet's ids gained when saved as numbers (a column with an empty cell): write them as text")
    return unmatched[0], ""
