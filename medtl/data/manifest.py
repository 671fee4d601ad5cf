"""The manifest: one row per case, the only way data enters medtl. Schema in data_manifests/README.md."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medtl.data.dicom import parse_series_ref, series_ref
from medtl.errors import ManifestError
from medtl.files import OTHER_WORKBOOKS, SHEETS, WORKBOOKS, sha256_file

REQUIRED = ("case_id", "image")
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
"""How people name the splits (any capitals), in medtl's words."""


def scan_cases(table: pd.DataFrame) -> list[dict[str, str]]:
    """Each row as scoring takes it, locally or on Spark: case id, image path, and the view the manifest states
    ("" where it states none, so the film's own header is what counts)."""
    views = table["view"].fillna("") if "view" in table else pd.Series("", index=table.index)
    return [{"case_id": str(r.case_id), "image": r.image_path, "view": view}
            for r, view in zip(table.itertuples(index=False), views)]


def rows_of_split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one split: "train", "val" or "test"."""
    return table[table["split"] == name]


@dataclass(frozen=True)
class Manifest:
    """A validated manifest table with absolute paths in ``image_path`` / ``mask_path``."""

    table: pd.DataFrame
    path: Path
    escapes: tuple[tuple[str, str], ...] = ()
    """(case_id, message) for each path outside the manifest's folder, when read with ``keep_going``."""

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def has_labels(self) -> bool:
        return "label" in self.table and self.table["label"].notna().any()

    @property
    def has_masks(self) -> bool:
        return "mask" in self.table and self.table["mask"].notna().any()

    def digest(self) -> str:
        return file_digest(self.path)


def file_digest(path: Path) -> str:
    return sha256_file(path)


def resolve_case_path(raw: str, root: Path, data_root: Path | None, case_id: str, column: str) -> str:
    """Resolves a manifest path relative to the manifest; refuses one that escapes unless under data_root.

    A ``folder#series=UID`` reference keeps its series part.
    """
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", raw):
        raise ManifestError(f"case {case_id}: {column} path {raw!r} is a URL; medtl reads files on this machine: "
                            "download or mount them and give their paths")
    p, uid = parse_series_ref(raw)
    if re.match(r"[A-Za-z]:[\\/]", str(p)):
        raise ManifestError(f"case {case_id}: {column} path {raw!r} is a Windows drive path; write it relative to the "
                            "manifest (images/scan.png) or as the folder is mounted on this machine")
    if "\\" in str(p) and not (root / p).exists():  # a manifest written on Windows: images\scan.png
        p = Path(str(p).replace("\\", "/"))
    full = (p if p.is_absolute() else root / p).resolve()
    allowed = [root.resolve()] + ([data_root.resolve()] if data_root else [])
    if not any(full == a or a in full.parents for a in allowed):
        raise ManifestError(
            f"case {case_id}: {column} path {raw!r} points outside the manifest's folder; "
            "move the file under it or set data.data_root to the folder that holds it"
        )
    return series_ref(full, uid) if uid else str(full)


UNREADABLE_CSV = (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError)
"""What pandas raises for a file that is not comma-separated UTF-8 text."""


def read_sheet(path: Path) -> pd.DataFrame:
    """A table a person wrote (manifest, label sheet, splits), as CSV or an Excel workbook, every value as text
    with the spaces a spreadsheet leaves around it trimmed (``lesion `` is no class of its own, `` label`` is the
    label column), empty cells missing and wholly empty rows dropped. A file that is neither comma-separated UTF-8
    nor a one-sheet ``.xlsx`` — the usual ways a spreadsheet's export goes wrong — is one clear error."""
    suffix = path.suffix.lower()
    if suffix in OTHER_WORKBOOKS:
        raise ManifestError(f"{path}: medtl reads .xlsx workbooks and CSV; save it as .xlsx or as CSV UTF-8")
    table = _read_workbook(path) if suffix in WORKBOOKS else _read_csv(path)
    _refuse_doubled_columns(path, [str(c) for c in table.columns])
    table.columns = _known_names([str(c).strip() for c in table.columns])
    table = _below_title(table.apply(lambda column: column.str.strip()))
    return table.replace("", pd.NA).dropna(how="all").reset_index(drop=True)  # the empty rows a spreadsheet leaves


def _refuse_doubled_columns(path: Path, columns: list[str]) -> None:
    """Two columns of one name (pandas reads the second as ``label.1``): which one holds the labels is a question
    only the person who wrote the sheet can answer."""
    for column in columns:
        doubled = re.fullmatch(r"(.+)\.\d+", column)
        if doubled and doubled.group(1) in columns:
            raise ManifestError(f"{path}: two columns are headed {doubled.group(1)!r}; keep the one that holds the data, "
                                "or rename the other")


KNOWN_COLUMNS = ("case_id", "patient_id", "image", "mask", "label", "split", "fold", "view")


def _known_names(columns: list[str]) -> list[str]:
    """``Case ID``, ``CaseID`` or ``Label`` as people head a sheet, read as medtl's column names; other columns (the
    subgroups a config names) keep theirs, and a name already taken is not doubled."""
    def known(c: str) -> str:
        plain = re.sub(r"[\s.-]+", "_", c.lower())
        plain = {"caseid": "case_id", "patientid": "patient_id", "labels": "label", "finding_labels": "label",
                 "view_position": "view", "viewposition": "view"}.get(plain, plain)  # as ChestX-ray14 heads them
        return plain if plain in KNOWN_COLUMNS and plain not in columns else c

    renamed = [known(c) for c in columns]
    return renamed if len(set(renamed)) == len(renamed) else columns


def _below_title(table: pd.DataFrame) -> pd.DataFrame:
    """The table under the row that names ``case_id`` when a title or a note sits above it (a sheet headed
    "Labels, reader 1, 2026" and a blank row), as spreadsheets kept for people often are."""
    if "case_id" in table.columns:
        return table
    for i, row in enumerate(table.head(10).itertuples(index=False)):
        names = _known_names(["" if pd.isna(v) else str(v) for v in row])
        if "case_id" in names:
            below = table.iloc[i + 1:]
            below.columns = names
            return below.loc[:, [c != "" for c in below.columns]]
    return table


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except UNREADABLE_CSV as exc:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ManifestError(f"{path}: saved as UTF-16 (Excel's Unicode Text), not comma-separated UTF-8; save "
                                "it as CSV UTF-8") from None
        if b"\0" in head:  # no CSV in UTF-8 holds a NUL byte; a scan, an image or an archive does
            raise ManifestError(f"{path}: a binary file (a scan?), not a sheet; give the CSV or .xlsx that lists the "
                                "cases (`medtl manifest build DIR` writes one for a folder of scans; `score --input` "
                                "scores scans as they are)") from None
        raise ManifestError(f"{path}: not a readable CSV ({type(exc).__name__}); save it as comma-separated UTF-8") from None
    sep = next((c for c in ";\t|" if len(table.columns) == 1 and c in str(table.columns[0])), None)
    if sep:
        raise ManifestError(f"{path}: its columns are separated by {sep!r}; save it as comma-separated UTF-8 "
                            "(in Excel: CSV UTF-8)")
    return table


def _read_workbook(path: Path) -> pd.DataFrame:
    """The one sheet of a workbook that holds data; with several, guessing which holds the labels could train on
    the wrong one, so that is refused."""
    try:
        sheets = pd.read_excel(path, sheet_name=None, dtype=str, keep_default_na=False, na_values=[""])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ManifestError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__}; a password-protected one "
                            "cannot be read); save it again from Excel as .xlsx or as CSV UTF-8") from None
    filled = {name: t for name, t in sheets.items() if not t.empty}
    if len(filled) > 1:
        raise ManifestError(f"{path}: {len(filled)} sheets hold data ({', '.join(map(repr, filled))}); keep only the "
                            "one to read in the workbook, or save that sheet as CSV UTF-8")
    return next(iter(filled.values()), pd.DataFrame(columns=[]))


def read_manifest(path: str | Path, data_root: Path | None = None, keep_going: bool = False) -> Manifest:
    """Reads and validates the schema: required columns, unique case ids, known splits, safe paths.

    ``keep_going`` (for ``manifest check``) records every path that escapes the manifest's folder instead of
    stopping at the first; such a case gets no resolved path."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*") if p.suffix.lower() in SHEETS)
        hint = (f"give the manifest inside it ({path / inside[0]})" if len(inside) == 1 else
                f"give one of its sheets ({', '.join(inside[:3])})" if inside else
                f"build a manifest of its scans with `medtl manifest build {path} --out manifest.csv`")
        raise ManifestError(f"{path}: a folder, not a manifest; {hint}")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; build one with `medtl manifest build DIR --out {path.name}`")
    table = read_sheet(path)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; a manifest needs case_id and image")
    if table["case_id"].isna().any():
        raise ManifestError(f"{path}: row {int(table['case_id'].isna().idxmax()) + 2} has an empty case_id")
    if "patient_id" not in table:
        table["patient_id"] = table["case_id"]
    table["patient_id"] = table["patient_id"].fillna(table["case_id"])
    if "split" not in table:
        table["split"] = pd.NA
    table["split"] = table["split"].map(lambda s: SPLIT_NAMES.get(s.casefold(), s) if isinstance(s, str) else s)
    bad = table["split"].notna() & ~table["split"].isin(SPLITS)
    if bad.any():
        row = table[bad].iloc[0]
        raise ManifestError(f"{path}: case {row['case_id']}: split {row['split']!r} is not one of train, val, test (or empty)")
    if "view" in table:  # as DICOM writes a ViewPosition, so a sheet's "pa" is the header's PA
        table["view"] = table["view"].map(lambda v: v.upper() if isinstance(v, str) else v)
    root = path.resolve().parent
    escapes: list[tuple[str, str]] = []

    def resolve(raw: Any, case: str, column: str) -> str | None:
        if pd.isna(raw):
            return None
        try:
            return resolve_case_path(str(raw), root, data_root, case, column)
        except ManifestError as exc:
            if not keep_going:
                raise
            escapes.append((case, str(exc).removeprefix(f"case {case}: ")))
            return None

    table["image_path"] = [resolve(r, c, "image") for r, c in zip(table["image"], table["case_id"])]
    if "mask" in table:
        table["mask_path"] = [resolve(r, c, "mask") for r, c in zip(table["mask"], table["case_id"])]
    return Manifest(table=table, path=path.resolve(), escapes=tuple(escapes))


def rebased(manifest: Manifest, folder: Path) -> pd.DataFrame:
    """The manifest's table for a manifest written in ``folder``: file paths relative to that folder (they resolve
    against the manifest that holds them), the resolved columns dropped. A file outside ``folder`` is an error
    naming the case, since the new manifest could not reach it."""
    root = folder.resolve()
    table = manifest.table.drop(columns=[c for c in ("image_path", "mask_path") if c in manifest.table])
    for column in ("image", "mask"):
        if f"{column}_path" not in manifest.table:
            continue
        rebased_paths = []
        for case, resolved in zip(manifest.table["case_id"], manifest.table[f"{column}_path"]):
            if resolved is None or pd.isna(resolved):
                rebased_paths.append(None)
                continue
            path, uid = parse_series_ref(resolved)
            if path != root and root not in path.parents:
                raise ManifestError(f"case {case}: {column} {path} is outside {root}, where the new manifest would go; "
                                    f"write it in {manifest.path.parent} or a folder above its files")
            rel = path.relative_to(root).as_posix()
            rebased_paths.append(series_ref(Path(rel), uid) if uid else rel)
        table[column] = rebased_paths
    return table


def label_spelling(label: str) -> str:
    """What two spellings of one class share: ``Pneumonia`` and ``pneumonia``, ``1`` and the ``1.0`` a column
    with an empty cell is saved as by pandas."""
    try:
        number = float(label)
    except ValueError:
        return " ".join(label.casefold().split())
    return str(int(number)) if number.is_integer() else str(number)


def other_spellings(labels: pd.Series) -> dict[str, str]:
    """Each label that is another spelling of a more frequent one, mapped to that one: the same words in other
    capitals or spacing, or a rare label a typing slip away from a common one (``pneumonai`` once beside
    ``pneumonia`` 29 times). Taken as classes, each would train a class of its own out of a typing difference."""
    counts = labels.dropna().astype(str).value_counts()
    first: dict[str, str] = {}
    twins: dict[str, str] = {}
    for label, n in counts.items():  # most frequent first, so it is the spelling kept
        key = label_spelling(label)
        common = first.get(key) or next((kept for other, kept in first.items()
                                         if counts[kept] >= 10 * n and typing_slip(key, other)), None)
        if common is not None:
            twins[label] = common
        else:
            first[key] = label
    return twins


def typing_slip(a: str, b: str) -> bool:
    """Whether ``a`` is a typing slip of ``b``: one letter wrong, missing, extra or swapped with its neighbour (two
    in words of eight letters or more). Labels that differ in their digits (``grade 1``, ``grade 2``) are classes."""
    if re.sub(r"\d", "", a) == re.sub(r"\d", "", b) or min(len(a), len(b)) < 4:
        return False
    limit = 2 if min(len(a), len(b)) >= 8 else 1
    if abs(len(a) - len(b)) > limit:
        return False
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):  # optimal string alignment distance (Damerau-Levenshtein without re-edits)
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1] <= limit


def label_column_problem(labels: pd.Series) -> str | None:
    """Why a label column holds no classes (report text, ids or measurements pasted in: most labels on one case
    only), or None. Each would otherwise be a class of one case."""
    counts = labels.dropna().astype(str).value_counts()
    once = int((counts == 1).sum())
    if len(counts) < 10 or once <= len(counts) / 2:
        return None
    return (f"{len(counts)} different labels, {once} of them on one case only: the label column looks like free text "
            "or identifiers; give each case one of a few class names, or set data.classes")


def class_names(manifest: Manifest, configured: list[str] | None) -> list[str]:
    """Configured classes, else the manifest's labels sorted (integers numerically); a label column that holds no
    set of classes (``findings.unfit_labels``), or labels that look like one class spelt two ways, are refused there,
    since each label would become a class."""
    if configured:
        return list(configured)
    from medtl.data.findings import unfit_labels

    labels = manifest.table["label"].dropna().unique().tolist() if manifest.has_labels else []
    unfit = unfit_labels(manifest.table["label"], manifest.path) if manifest.has_labels else None
    if unfit:
        raise ManifestError(f"{manifest.path.name}: {unfit}")
    twins = other_spellings(manifest.table["label"]) if manifest.has_labels else {}
    if twins:
        label, kept = next(iter(twins.items()))
        raise ManifestError(f"{manifest.path.name}: labels {kept!r} and {label!r} look like one class spelt two ways and "
                            f"would be two classes; write one spelling throughout, or set data.classes")
    try:
        return [str(v) for v in sorted(labels, key=lambda v: int(v))]
    except ValueError:
        return sorted(str(v) for v in labels)


def public_columns(subgroups: list[str]) -> list[str]:
    """The only manifest columns allowed into logs and MLflow: ids, labels and configured subgroups."""
    return ["case_id", "label", "split", *subgroups]
