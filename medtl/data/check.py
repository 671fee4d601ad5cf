"""``medtl manifest check``: every problem in a manifest, each named by case id, before any training starts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from medtl.config_sections import DEFAULT_MASK_CLASSES
from medtl.data import dicom
from medtl.data.findings import unfit_labels
from medtl.data.manifest import Manifest, label_spelling, other_spellings, typing_slip
from medtl.data.itk_formats import content_digest, load_itk, read_itk_header
from medtl.data.readers import check_nifti_size, dicom_headers, nibabel_format, nifti_problem, scan_kind
from medtl.errors import DataError
from medtl.log import counted


OTHER_VIEW = "other view"
"""The kind of problem that training, given data.views, settles by leaving the film out: a choice, not a fault."""


@dataclass(frozen=True)
class Problem:
    case_id: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Geometry:
    shape: tuple[int, ...]
    affine: np.ndarray | None
    blank: float | None = None
    """The one value of every voxel, when ``deep`` read them all and found no other."""
    modality: str = ""
    """The DICOM Modality tag; empty for NIfTI and image files, which carry none."""
    view: str = ""
    """A DICOM film's ViewPosition, else the manifest's view (``view_source``); empty where neither states one."""
    view_source: str = "DICOM ViewPosition"
    minimum: float | None = None
    """The lowest voxel, when ``deep`` read them all."""


def _dicom_file_geometry(path: Path) -> Geometry:
    header = dicom.read_header(path)
    if header.problem:
        raise DataError(header.problem)
    if not header.has_pixels:
        raise DataError("DICOM without pixel data")
    try:
        ds = pydicom.dcmread(path)
        raw = ds.get("PixelData")
    except Exception:  # noqa: BLE001 - a header that parses but a body that does not
        raise DataError("truncated DICOM: the pixel data cannot be read") from None
    per_pixel = int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 16)) // 8
    expected = header.rows * header.columns * header.frames * per_pixel
    if raw is not None and not ds.file_meta.TransferSyntaxUID.is_compressed and len(raw) < expected:
        raise DataError(f"truncated DICOM: pixel data holds {len(raw)} of {expected} bytes")
    shape = (header.columns, header.rows) if header.frames == 1 else (header.columns, header.rows, header.frames)
    return Geometry(shape, None, modality=dicom.modality_tag(header), view=dicom.view_tag(header))


def scan_geometry(ref: str, deep: bool = False) -> Geometry:
    """Shape (and affine where the format has one) from headers; with ``deep``, every voxel is read too."""
    path, uid = dicom.parse_series_ref(ref)
    if not path.exists():
        raise DataError("missing file")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError("empty file")
    kind = scan_kind(ref)
    if kind == "nifti":
        check_nifti_size(path)
        try:
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            problem = nifti_problem(img.get_data_dtype(), shape, img.affine)
            if problem:
                raise DataError(problem)
            blank, minimum = _voxels(np.asanyarray(img.dataobj)) if deep else (None, None)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
            raise DataError(f"unreadable {nibabel_format(path)} ({type(exc).__name__})") from None
        return Geometry(shape, img.affine, blank, minimum=minimum)
    if kind == "itk":
        header = read_itk_header(path)
        blank, minimum = _voxels(load_itk(path)[0]) if deep else (None, None)
        return Geometry(header.shape, header.affine, blank, minimum=minimum)
    if kind == "image":
        try:
            with Image.open(path) as im:
                im.verify()
                size = im.size
            if deep:
                with Image.open(path) as im:
                    pixels = np.asarray(im)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"unreadable image ({type(exc).__name__})") from None
        blank, minimum = _voxels(pixels) if deep else (None, None)
        return Geometry((size[0], size[1]), None, blank, minimum=minimum)
    if path.is_file():
        geometry = _dicom_file_geometry(path)
    else:
        headers = dicom_headers(path, uid)
        problems = dicom.series_problems(headers)
        if problems:
            raise DataError("; ".join(problems))
        ordered, _ = dicom.order_slices(headers)
        first = ordered[0]
        if len(ordered) == 1:  # a film (or one multi-frame file) in a folder of its own
            geometry = _dicom_file_geometry(first.path)
        else:
            affine = dicom.series_affine(first, dicom.slice_step(ordered))
            geometry = Geometry((first.columns, first.rows, len(ordered)), affine, modality=dicom.modality_tag(first))
    if deep:
        from medtl.data.readers import load_scan

        blank, minimum = _voxels(load_scan(ref).numpy())
        geometry = replace(geometry, blank=blank, minimum=minimum)  # its modality and view kept
    return geometry


def _voxels(data: np.ndarray) -> tuple[float | None, float | None]:
    """The value every voxel holds (or None) and the lowest; NaN or Inf anywhere is the case's error."""
    if not np.all(np.isfinite(data)):
        raise DataError(f"{int(np.sum(~np.isfinite(data)))} NaN/Inf voxels")
    if not data.size:
        return None, None
    low = float(data.min())
    return (low if low == float(data.max()) else None), low


def check_manifest(
    manifest: Manifest,
    classes: list[str] | None = None,
    spatial_dims: int | None = None,
    deep: bool = False,
    progress: bool = False,
    modality: str | None = None,
    views: list[str] | None = None,
    seen: dict[str, Geometry] | None = None,
    hounsfield: bool = False,
) -> list[Problem]:
    """Every problem found, in manifest order; an empty list means the manifest is safe to train on. ``seen`` is
    filled with each fit image's geometry by case id, read with the headers the check reads anyway: its shape, and
    the view its film states, or where it states none the manifest's ``view`` column. ``hounsfield``: scans are CT
    read in HU (``in_hounsfield``), which ``deep`` checks."""
    table = manifest.table
    problems: list[Problem] = []
    if table.empty:
        return [Problem("-", "no cases", f"{manifest.path.name} lists no case; add rows (case_id, image, label)")]
    needs_label = "label" in table and "mask" not in table  # a labelled (classification) manifest
    for case in table.loc[table["case_id"].duplicated(), "case_id"].unique():
        problems.append(Problem(str(case), "duplicate case_id", f"{int((table['case_id'] == case).sum())} rows"))
    escaped = {case for case, _ in manifest.escapes}
    problems += [Problem(case, next((kind for kind in ("Windows drive path", "URL") if f"is a {kind}" in message),
                                    "path outside the manifest's folder"), message) for case, message in manifest.escapes]
    for row in counted(list(table.itertuples(index=False)), "reading every voxel" if deep else "checking", progress):
        case = str(row.case_id)
        if case in escaped:
            continue
        image_geometry = None
        if not isinstance(row.image, str):
            problems.append(Problem(case, "no image", "empty image cell; give the scan's path or remove the row"))
            continue
        try:
            image_geometry = _image_geometry(str(row.image_path), deep, spatial_dims, modality, views,
                                             manifest_view(row), hounsfield)
            if seen is not None:
                seen[case] = image_geometry
        except DataError as exc:
            problems.append(Problem(case, _kind_of(str(exc)), f"{row.image}: {exc}"))
        mask_path = getattr(row, "mask_path", None)
        if "mask" in table and not isinstance(row.mask, str) and not isinstance(getattr(row, "label", None), str):
            problems.append(Problem(case, "no mask", "empty mask cell (and no label): nothing to train or evaluate "
                                    "against; give the case's mask or remove the row"))
        if isinstance(mask_path, str):
            try:
                mask_geometry = scan_geometry(mask_path, deep)
                if image_geometry is not None:
                    _check_mask(image_geometry, mask_geometry, slicer=mask_path.lower().endswith(".seg.nrrd"))
                if deep:
                    _check_mask_values(mask_path, len(classes or DEFAULT_MASK_CLASSES))
            except DataError as exc:
                problems.append(Problem(case, "mask " + _kind_of(str(exc)), f"{row.mask}: {exc}"))
        problems.extend(_label_problems(case, getattr(row, "label", None), needs_label, classes))
    if not classes and needs_label:
        problems.extend(_label_spellings(table, manifest.path))
    problems.extend(_leakage(table))
    problems.extend(_duplicate_images(table, deep))
    return problems


def view_counts(seen: dict[str, Geometry]) -> Counter[str]:
    """How many of the checked films state each view."""
    return Counter(g.view for g in seen.values() if g.view)


def manifest_view(row: Any) -> str:
    """The view a manifest row states for its film (a sheet's ``View Position``), for films that state none."""
    view = getattr(row, "view", None)
    return view if isinstance(view, str) else ""


def _image_geometry(path: str, deep: bool, spatial_dims: int | None, modality: str | None,
                    views: list[str] | None, stated_view: str = "", hounsfield: bool = False) -> Geometry:
    """The image's geometry, or the DataError that makes it unfit: wrong dimensionality, other modality or view,
    blank. ``stated_view`` is the manifest's view, which stands where the file states none (PNG, JPEG)."""
    geometry = scan_geometry(path, deep)
    if not geometry.view and stated_view:
        geometry = replace(geometry, view=stated_view, view_source=dicom.STATED_IN_MANIFEST)
    _check_dims(geometry, spatial_dims)
    other = ((modality and dicom.modality_mismatch(geometry.modality, modality))
             or dicom.view_mismatch(geometry.view, views, geometry.view_source))
    if other:
        raise DataError(other)
    if geometry.blank is not None:  # a mask of zeros is a case without a lesion; an image is not
        raise DataError(blank_problem(geometry.blank))
    unlike_ct = hounsfield_problem(geometry.minimum) if hounsfield and geometry.minimum is not None else None
    if unlike_ct:
        raise DataError(unlike_ct)
    return geometry


def in_hounsfield(modality: str, ct_window: tuple[float, float]) -> bool:
    """Whether a config reads its scans as CT in Hounsfield units: its window starts below 0 (air is -1000)."""
    return modality == "ct" and ct_window[0] < 0


def hounsfield_problem(minimum: float) -> str | None:
    """Why a CT scan whose lowest voxel is ``minimum`` is not in Hounsfield units, or None. A CT holds air (-1000)
    or at least fat (-100); a conversion that dropped the DICOM RescaleIntercept stores them at 0 or above, and an
    MR scan has no negative values. Windowed as HU, either would train or score as a wrong image without a word."""
    if minimum < 0:
        return None
    return (f"not in Hounsfield units: no voxel is below 0 (lowest {minimum:g}), where a CT holds air (-1000) or fat "
            "(-100); convert it to HU (a NIfTI written without the DICOM RescaleIntercept, or an MR scan?), or set "
            "data.ct_window to the range its values are in")


def blank_problem(value: float) -> str:
    """A scan whose every voxel holds one value: nothing in it to learn from or score, yet a model would answer."""
    return (f"blank: every voxel is {value:g}; the export failed or the scan is empty, so re-export it or remove "
            "its row")


def _label_problems(case: str, label: object, needs_label: bool, classes: list[str] | None) -> list[Problem]:
    if needs_label and not isinstance(label, str):
        return [Problem(case, "no label", "empty label; label the case or remove its row")]
    if classes and isinstance(label, str) and label not in classes:
        return [Problem(case, "unknown label", f"label {label!r} is not one of {', '.join(classes)}"
                        f"{_label_hint(label, classes)}")]
    return []


def _label_spellings(table: pd.DataFrame, path: Path) -> list[Problem]:
    """Cases whose label is another spelling of a more common one, when no config names the classes."""
    unfit = unfit_labels(table["label"], path)
    if unfit:
        return [Problem("-", "label column", unfit)]
    twins = other_spellings(table["label"])
    return [Problem(str(case), "label spelling", f"label {label!r} looks like another spelling of {twins[label]!r}, "
                    f"which {n} other cases use; write {twins[label]!r}, or set data.classes")
            for case, label in zip(table["case_id"], table["label"]) if isinstance(label, str) and label in twins
            for n in [int((table["label"] == twins[label]).sum())]]


def _label_hint(label: str, classes: list[str]) -> str:
    """What an unknown label most likely is: a class written in other capitals or as ``1.0``, a class index, or a
    class misspelt."""
    same = [c for c in classes if label_spelling(c) == label_spelling(label)]
    if same:
        return f" (labels are matched exactly: write {same[0]!r})"
    if label.isdigit() and int(label) < len(classes):
        return f" (a class index? write the class names, or set data.classes to [{', '.join(map(str, range(len(classes))))}])"
    near = [c for c in classes if typing_slip(label_spelling(label), label_spelling(c))]
    return f" (misspelt? write {near[0]!r})" if near else ""


def _check_mask_values(path: str, n_classes: int) -> None:
    from medtl.data.readers import load_scan

    problem, _ = mask_problem(np.unique(load_scan(path).numpy()), n_classes)
    if problem:
        raise DataError(problem)


def _check_dims(geometry: Geometry, spatial_dims: int | None) -> None:
    shape = geometry.shape
    spatial = tuple(s for s in shape[:3])
    if len(shape) > 4 or (len(shape) == 4 and shape[3] > 1):
        volumes = int(np.prod(shape[3:]))
        raise DataError(f"unexpected dimensionality: {len(shape)}-D image {shape}, {volumes} volumes in one file "
                        "(echoes, b-values, time points); give each volume as its own file")
    if spatial_dims is not None:
        got = len([s for s in spatial if s > 1]) if len(spatial) == 3 else len(spatial)
        if got != spatial_dims:
            raise DataError(f"unexpected dimensionality: {got}-D image {shape}, config expects {spatial_dims}-D")


def mask_problem(values: np.ndarray, n_classes: int) -> tuple[str | None, float]:
    """Why a mask's distinct values are not class indices 0..n-1, or None; and the scale that makes them indices
    (masks drawn as 0/255, the usual 8-bit convention, are 0/1)."""
    v = np.asarray(values, dtype=np.float64)
    scale = 1 / 255 if v.size and v.size <= 2 and v.max() == 255 else 1.0
    v = v * scale
    fractional = v[v != np.round(v)]
    if fractional.size:
        return (f"mask holds values that are not class indices (e.g. {fractional[0]:g}); save it with whole-number "
                "labels, 0 for background"), scale
    outside = v[(v < 0) | (v >= n_classes)]
    if outside.size:
        return (f"mask holds label {outside[0]:g}, but there are {n_classes} classes (0 to {n_classes - 1}); name every "
                "label in data.classes, background first, or fix the mask"), scale
    return None, scale


def _check_mask(image: Geometry, mask: Geometry, slicer: bool = False) -> None:
    if tuple(image.shape[:3]) != tuple(mask.shape[:3]):
        hint = ("; a 3D Slicer segmentation is saved cropped to its segments, and `manifest build` places it on its "
                "scan's grid" if slicer else "")
        raise DataError(f"shape mismatch: mask {mask.shape} vs image {image.shape}{hint}")
    if image.affine is not None and mask.affine is not None and not np.allclose(image.affine, mask.affine, atol=1e-3):
        raise DataError("affine mismatch: mask and image are not in the same space")


def _kind_of(message: str) -> str:
    for key in ("header declares", "missing file", "empty file", "truncated DICOM", "DICOM without pixel data", "several series",
                "missing slice", "duplicate slice", "inconsistent", "NaN/Inf", "unexpected dimensionality",
                "shape mismatch", "affine mismatch", "not a DICOM", "not a readable DICOM", "unreadable",
                "not class indices", "classes (0 to", "blank", "other modality", OTHER_VIEW, "complex-valued",
                "not in Hounsfield units",
                "voxel size of 0"):
        if key in message:
            return "labels not class indices" if key in ("not class indices", "classes (0 to") else key
    return "unreadable"


def _duplicate_images(table: pd.DataFrame, deep: bool) -> list[Problem]:
    """A scan listed twice (the same file, or with ``deep`` the same bytes under another name) counts twice in
    training and, across splits, puts a test case in training: the later rows are problems naming the first."""
    problems, first_of = [], {}
    for row in table.itertuples(index=False):
        path = row.image_path if isinstance(row.image_path, str) else None
        if path is None:
            continue
        keys = [("same file", path)]
        if deep and "#" not in path and Path(path).is_file():
            keys.append(("same content", content_digest(Path(path))))
        for kind, key in keys:
            if key in first_of:
                other, split = first_of[key]
                where = f" ({split} and {row.split})" if isinstance(split, str) and split != row.split else ""
                problems.append(Problem(str(row.case_id), "duplicate image",
                                        f"{kind} as case {other}{where}; list each scan once, under one case"))
                break
            first_of[key] = (str(row.case_id), row.split)
    return problems


def _leakage(table: pd.DataFrame) -> list[Problem]:
    problems = []
    with_split = table[table["split"].notna()]
    for patient, group in with_split.groupby("patient_id"):
        splits = sorted(group["split"].unique())
        if len(splits) > 1:
            for case in group["case_id"]:
                problems.append(Problem(str(case), "patient in two splits", f"patient {patient} is in {' and '.join(splits)}"))
    return problems


def class_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Cases per class and split, the table every check prints."""
    if "label" not in table or table["label"].isna().all():
        return pd.DataFrame()
    split = table["split"].fillna("(none)")
    return pd.crosstab(table["label"], split)
