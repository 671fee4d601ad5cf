"""``medtl manifest build``: a manifest from a folder of scans, with no patient identifier copied in.

DICOM files are grouped into series by SeriesInstanceUID wherever they lie and whatever their names;
NIfTI and PNG files are one case each. ``patient_id`` comes from the labels sheet, or for DICOM is a keyed
pseudonym of the PatientID (``medtl.data.pseudonyms``), else a hash of the case id; never a DICOM header value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medtl.config_sections import CaseIds
from medtl.data import dicom
from medtl.data.label_sheets import case_id_from_file, join_labels
from medtl.data.manifest import SPLIT_NAMES, read_sheet
from medtl.data.readers import IMAGE_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, archive_hint
from medtl.data.slicer_masks import SLICER_SUFFIX, place_slicer_masks
from medtl.errors import ManifestError
from medtl.files import table_path, write_table

logger = logging.getLogger(__name__)


@dataclass
class DicomWalk:
    """What discovery read besides the cases, for a step that needs it without walking the folder again: each
    DICOM case's slice headers, by reference, and the DICOM objects that hold no scan (structure sets among them)."""

    series: dict[str, list[dicom.SliceHeader]] = field(default_factory=dict)
    not_scans: list[Path] = field(default_factory=list)


def discover_cases(folder: Path, ids: CaseIds = "folder", progress: bool = False,
                   identifiers: dict[str, dict[str, str]] | None = None,
                   walk: DicomWalk | None = None) -> list[tuple[str, str]]:
    """(case_id, image reference) for every scan under ``folder`` (or ``folder`` itself when it is one file): one
    per DICOM series, NIfTI or image file. DICOM objects that hold no scan (a DICOMDIR, reports, presentation
    states, segmentations) are not cases.

    A series alone in its folder is that folder; a series sharing a folder with others is referenced as
    ``folder#series=UID`` so one row is always one series, and nothing is written next to the data. Two scans
    never share a case id: that would put one patient's prediction, or mask file, in another's place.
    ``identifiers``, when given, is filled with each DICOM series' PatientID and AccessionNumber by reference
    (``patient_id``, ``accession``): raw, for ``build_manifest`` to key into a pseudonym and to join a sheet keyed
    by them; they go nowhere else. ``walk``, when given, is filled with what else the walk read.
    """
    folder = Path(folder)
    if folder.is_file():  # one scan given by itself (a single-file DICOM, NIfTI or image)
        return [(case_id_from_file(folder), str(folder))]
    found: list[tuple[str, str, Path]] = []  # case id, reference, what names it
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name.lower().endswith((*NIFTI_SUFFIXES, *ITK_SUFFIXES, *IMAGE_SUFFIXES)):
            found.append((case_id_from_file(path), str(path), path))
    series, not_scans = dicom.scan_series(folder, progress)
    in_series = {h.path for headers in series.values() for h in headers} | set(not_scans)
    if walk is not None:
        walk.not_scans[:] = not_scans
    if not_scans:
        logger.info("%s: %d DICOM object(s) hold no scan (a DICOMDIR, reports, segmentations); not cases",
                    folder, len(not_scans))
    by_parent: dict[Path, list[str]] = {}
    for uid, headers in series.items():
        for parent in {h.path.parent for h in headers}:
            by_parent.setdefault(parent, []).append(uid)
    for path in sorted(folder.rglob("*.dcm")):
        if path.is_file() and path not in in_series:  # unreadable DICOM: listed so the problem is reported, not lost
            found.append((case_id_from_file(path), str(path), path))
    for uid, headers in sorted(series.items(), key=lambda kv: str(kv[1][0].path)):
        parents = {h.path.parent for h in headers}
        parent = headers[0].path.parent
        if len(headers) == 1 and len(by_parent[parent]) > 1:
            found.append((case_id_from_file(headers[0].path), str(headers[0].path), headers[0].path))
        elif len(parents) == 1 and len(by_parent[parent]) == 1:
            found.append((parent.name if parent != folder else f"series_{uid[-8:]}", str(parent), parent))
        else:
            where = parent if len(parents) == 1 else folder
            found.append((f"{parent.name}_{uid[-8:]}", dicom.series_ref(where, uid), where / uid[-8:]))
        if walk is not None:
            walk.series[found[-1][1]] = headers
        ds = headers[0].dataset
        tags = {key: str(ds.get(tag, "")).strip() for key, tag in (("patient_id", "PatientID"),
                                                                  ("accession", "AccessionNumber"))} if ds is not None else {}
        if identifiers is not None and any(tags.values()):
            identifiers[found[-1][1]] = {key: value for key, value in tags.items() if value}
    cases = [(_path_id(named, folder) if ids == "path" and named != folder else case, ref) for case, ref, named in found]
    _refuse_undecodable_names(cases, folder)
    _refuse_shared_ids(cases, folder, ids)
    return cases


def _refuse_undecodable_names(cases: list[tuple[str, str]], folder: Path) -> None:
    """A name written in an older encoding (Latin-1 from a Windows or SMB share) reaches Python as undecodable bytes,
    and no manifest, log or MLflow record can hold it: one line naming the first, instead of an error at writing."""
    bad = [ref for _, ref in cases if not _utf8(ref)]
    if bad:
        shown = os.path.relpath(dicom.parse_series_ref(bad[0])[0], folder).encode("utf-8", "surrogateescape")
        raise ManifestError(f"{folder}: {len(bad)} scan(s) named in an encoding other than UTF-8 (an older Windows or "
                            f"share's; the first: {shown.decode('utf-8', 'backslashreplace')}); rename them to UTF-8, "
                            f"for instance with convmv -f latin1 -t utf8 -r --notest {folder}, and run again")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_id(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder)
    return "_".join([*rel.parts[:-1], case_id_from_file(rel)])


def _refuse_shared_ids(cases: list[tuple[str, str]], folder: Path, ids: CaseIds) -> None:
    first: dict[str, str] = {}
    for case, ref in cases:
        if case in first:
            a, b = (os.path.relpath(dicom.parse_series_ref(r)[0], folder) for r in (first[case], ref))
            fix = ("--ids path names each case by its path below the folder (check that no folder name is a patient's)"
                   if ids == "folder" else "rename one of them")
            raise ManifestError(f"{folder}: {a} and {b} would both be case {case!r}; {fix}")
        first[case] = ref


MASK_SUFFIXES = ("_mask", "_seg", "_label", "_gt", ".seg", "-label")
"""How a mask beside its scan is named; the last two as 3D Slicer saves a segmentation and a labelmap."""


def _mask_of(case_id: str) -> str | None:
    """The image case a mask-named file belongs to (``mr000_mask`` → ``mr000``), else None."""
    for suffix in MASK_SUFFIXES:
        if case_id.lower().endswith(suffix) and len(case_id) > len(suffix):
            return case_id[: -len(suffix)]
    return None


def pair_masks(cases: list[tuple[str, str]], masks: Path | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Splits discovered files into image cases and their masks: files under ``masks`` (named like their
    image, optionally with a mask suffix), and files beside their image named ``<case>_mask`` (or another of
    ``MASK_SUFFIXES``). A mask is never listed as a case of its own, nor is a 3D Slicer segmentation named like no
    scan (Slicer saves ``Segmentation.seg.nrrd`` beside ``CT.nrrd``): it is said, with the name that pairs it."""
    found: dict[str, str] = {}
    if masks is not None:
        root = Path(masks).resolve()
        for path in sorted(p for p in Path(masks).rglob("*") if p.is_file()):
            c = case_id_from_file(path)
            found[_mask_of(c) or c] = str(path)
        cases = [(c, ref) for c, ref in cases if root not in Path(dicom.parse_series_ref(ref)[0]).resolve().parents]
    ids = {c for c, _ in cases}
    images, lone = [], []
    for c, ref in cases:
        owner = _mask_of(c)
        if owner is not None and owner in ids:
            found.setdefault(owner, ref)
        elif ref.lower().endswith(SLICER_SUFFIX):
            lone.append(Path(ref).name)
        else:
            images.append((c, ref))
    if lone:
        logger.warning("%d 3D Slicer segmentation(s) named like no scan, left out (%s): name each <scan>.seg.nrrd "
                       "after the scan it was drawn on", len(lone), ", ".join(lone[:3]))
    return images, found


def _relative(ref: str, base: Path) -> str:
    path, uid = dicom.parse_series_ref(ref)
    rel = os.path.relpath(path.resolve(), base)
    return dicom.series_ref(Path(rel), uid) if uid else rel


def salted_patient_id(case_id: str, salt: str) -> str:
    return "p_" + hashlib.sha256(f"{salt}:{case_id}".encode()).hexdigest()[:12]


PATIENT_FOLDER = re.compile(r"(patient|subject|sub)[-_]?[a-z]*\d+[a-z\d]*", re.IGNORECASE)
"""A folder named for its patient: CheXpert's ``patient00001``, BIDS's ``sub-01``, ``Subject_12``."""


def patient_folder(ref: str, root: Path) -> str | None:
    """The deepest folder between ``root`` and a scan named for its patient, or None."""
    path = Path(os.path.abspath(dicom.parse_series_ref(ref)[0])).relative_to(os.path.abspath(root))
    return next((p.name for p in path.parents if PATIENT_FOLDER.fullmatch(p.name)), None)


def _patient_ids(cases: list[tuple[str, str]], identifiers: dict[str, dict[str, str]], salt: str,
                 root: Path) -> list[str]:
    """A patient id per case where the labels sheet gives none: a keyed pseudonym of a DICOM series' PatientID, or
    of the patient folder every scan lies in (``patient00001/study1/view1.jpg``), so a patient's scans (series,
    studies, follow-ups) split together; else a hash of the case id."""
    from medtl.data.pseudonyms import id_key, pseudonym

    patients = {ref: ids["patient_id"] for ref, ids in identifiers.items() if "patient_id" in ids}
    folders = {ref: patient_folder(ref, root) for _, ref in cases if ref not in patients}
    if folders and all(folders.values()):  # a folder per patient only where every scan has one
        patients |= folders  # a folder may be named with a hospital number: pseudonymised, and never shown
        logger.info("patient_id from the patient folder each scan lies in, pseudonymised: %d patients, so a "
                    "patient's scans split together", len(set(folders.values())))
    key = id_key() if any(ref in patients for _, ref in cases) else b""
    return [pseudonym(patients[ref], key) if ref in patients else salted_patient_id(case, salt) for case, ref in cases]


def build_manifest(
    folder: Path,
    out: Path,
    labels: Path | Sequence[Path] | None = None,
    masks: Path | None = None,
    salt: str = "medtl",
    ids: CaseIds = "folder",
    progress: bool = False,
    label_folders: bool = False,
    structures: Sequence[str] = (),
    structures_out: Path | None = None,
) -> pd.DataFrame:
    """Writes the manifest CSV at ``out`` with paths relative to it and returns the table. Labels come from the
    ``labels`` sheet (or sheets), or with ``label_folders`` from the folder each scan lies in (``folder_labels``);
    masks from the ``masks`` folder, or with ``structures`` from the structure sets or segmentations beside the
    DICOM series, written to ``structures_out`` (``medtl.data.structures``), where 3D Slicer segmentations that
    needed placing on their scan's grid also go (``medtl.data.slicer_masks``)."""
    folder, out = Path(folder), table_path(out)  # refused before the folder is walked
    sheets = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(p) for p in labels or []]
    structures_out = _refuse_sources(folder, out, sheets, masks, structures, structures_out, label_folders)
    identifiers: dict[str, dict[str, str]] = {}
    walk = DicomWalk()
    cases, mask_refs = pair_masks(discover_cases(folder, ids, progress, identifiers, walk), masks)
    if not cases:
        raise ManifestError(f"{folder}: no DICOM, NIfTI, MetaImage, NRRD or PNG file found{archive_hint(folder)}")
    mask_refs = _paired_masks(cases, mask_refs, masks, folder, structures_out)
    out = Path(out)
    if any(out.resolve() == sheet.resolve() for sheet in sheets):
        raise ManifestError(f"--out {out}: that is the label sheet; write the manifest to a new file so the sheet is kept")
    base = out.resolve().parent
    rows = [{"case_id": c, "image": _relative(ref, base)} for c, ref in cases]
    table = pd.DataFrame(rows)
    if mask_refs:
        table["mask"] = [_relative(mask_refs[c], base) if c in mask_refs else None for c in table["case_id"]]
    if sheets:
        raw = {case: identifiers.get(ref, {}) for case, ref in cases}
        table = join_labels(table, sheets, cases, folder, raw, out)
    if label_folders:
        table = table.merge(folder_labels(cases, folder), on="case_id", how="left")
    views = [dicom.film_view(ref) or None for _, ref in cases]  # a column to sort laterals out by, a subgroup
    if any(views) and "view" not in table:
        table["view"] = views
    derived = pd.Series(_patient_ids(cases, identifiers, salt, folder), index=table.index)
    table["patient_id"] = table["patient_id"].fillna(derived) if "patient_id" in table else derived
    if structures:
        table["mask"] = None
    front = ["case_id", "patient_id", "image"] + [c for c in ("mask", "label", "split") if c in table]
    table = table[front + [c for c in table.columns if c not in front]]
    _refuse_losing_columns(out, table)
    if structures:
        from medtl.data.structures import write_structure_masks

        made = write_structure_masks(cases, walk.series, walk.not_scans, list(structures), structures_out, progress)
        table["mask"] = [_relative(str(made[c]), base) if c in made else None for c in table["case_id"]]
    write_table(table, out)
    return table


def _refuse_sources(folder: Path, out: Path, sheets: list[Path], masks: Path | None, structures: Sequence[str],
                    structures_out: Path | None, label_folders: bool) -> Path:
    """Sources that cannot be read, or that contradict each other, refused before the folder is walked; returns the
    folder the structures' masks go to (beside ``out`` unless given), refused inside ``folder``."""
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder; give the folder that holds the scans")
    missing = next((sheet for sheet in sheets if not sheet.is_file()), None)
    if missing is not None:  # said before a walk of 100,000 files, not after
        raise ManifestError(f"{missing}: labels file not found")
    if sheets and label_folders:
        raise ManifestError("--labels and --label-folders: give one source of labels")
    if masks is not None and structures:
        raise ManifestError("--masks and --structures: give one source of masks")
    structures_out = Path(structures_out) if structures_out else out.with_name(f"{out.stem}_masks")
    if structures:
        from medtl.data.structures import structure_names

        structure_names(list(structures))
        _outside(structures_out, folder, "--structures-out")
    if masks is not None and not Path(masks).is_dir():
        raise ManifestError(f"--masks {masks}: not a folder; give the folder that holds the masks")
    return structures_out


def _paired_masks(cases: list[tuple[str, str]], mask_refs: dict[str, str], masks: Path | None, folder: Path,
                  placed: Path) -> dict[str, str]:
    """The masks found for the cases: a ``--masks`` folder naming none of them is refused, and 3D Slicer
    segmentations are placed on their scans' grids in ``placed`` (``medtl.data.slicer_masks``)."""
    if masks is not None and not any(c in mask_refs for c, _ in cases):
        raise ManifestError(f"--masks {masks}: no file there is named like a case of {folder} (e.g. {cases[0][0]}.nii.gz "
                            f"or {cases[0][0]}_mask.nii.gz)")
    if any(ref.lower().endswith(SLICER_SUFFIX) for ref in mask_refs.values()):
        _outside(placed, folder, "--structures-out")
        mask_refs = place_slicer_masks(cases, mask_refs, placed)
    return mask_refs


def _outside(written: Path, folder: Path, option: str) -> None:
    """The masks medtl writes go outside the scans' folder, where the next build would read them as scans."""
    if written.resolve().is_relative_to(folder.resolve()):
        raise ManifestError(f"{option} {written}: inside {folder}, where the next build would read its masks as scans; "
                            f"give {option} (or --out, beside which it goes) outside it")


def folder_labels(cases: list[tuple[str, str]], folder: Path) -> pd.DataFrame:
    """case_id, label and, where a train/, val/ or test/ folder lies above the scan, split: the class-per-folder
    layout most public image sets ship in (chest_xray/train/PNEUMONIA/x.jpeg). A scan's class folder is the
    folder holding its file, or holding its series folder."""
    root, rows = Path(os.path.abspath(folder)), []
    for case, ref in cases:
        path, uid = dicom.parse_series_ref(ref)
        holder = Path(os.path.abspath(path if uid else path.parent))  # as found below the folder: links not followed
        if holder == root:
            raise ManifestError(f"--label-folders: case {case} lies in {folder} itself; give the folder that holds the "
                                "class folders (FOLDER/CLASS/scan, or FOLDER/train/CLASS/scan)")
        if holder.name.lower() in SPLIT_NAMES:
            raise ManifestError(f"--label-folders: case {case} lies in {holder.name}/, a split folder, not in a class "
                                "folder (FOLDER/train/CLASS/scan)")
        splits = {SPLIT_NAMES[p.lower()] for p in holder.relative_to(root).parts[:-1] if p.lower() in SPLIT_NAMES}
        rows.append({"case_id": case, "label": holder.name, "split": splits.pop() if len(splits) == 1 else None})
    table = pd.DataFrame(rows)
    return table if table["split"].notna().any() else table.drop(columns="split")


def _refuse_losing_columns(out: Path, table: pd.DataFrame) -> None:
    """A rebuilt manifest may replace an old one, but not drop what the old one held (labels, a split)."""
    if not out.is_file():
        return
    try:
        old = read_sheet(out).columns
    except ManifestError:
        raise ManifestError(f"--out {out}: a file that is not a manifest is there; choose another name") from None
    lost = [c for c in old if c not in table]
    if lost:
        raise ManifestError(f"--out {out}: the manifest there has column(s) {', '.join(lost)} that the new one would not; "
                            "write to a new file (or give --labels with them)")
