"""RTSTRUCT contours in: a radiotherapy structure set's named structures as a NIfTI mask on its series' grid.

Radiotherapy departments keep their delineations as DICOM RTSTRUCT: closed planar polygons in patient coordinates
(LPS, mm), each drawn on one slice of the series the structure set references. ``manifest build --contours``
turns them into the masks a segmentation model trains on. A voxel is in a structure when its centre lies inside
the polygon; polygons on one slice combine by exclusive or, so an inner contour cuts a hole (the convention of
plastimatch and of most planning systems). The mask is written with the affine the series itself loads with, so
image and mask share one world by construction, which ``manifest check`` confirms.

Why not rt-utils, which DESIGN.md names for this: it needs opencv-python (a GUI build that wants libGL on import),
places a contour on a slice only through the optional ContourImageSequence, and rounds each vertex to a whole pixel
before filling. Matplotlib's point-in-polygon test, on the geometry ``medtl.data.dicom`` already derives, needs none of
that.

Only geometry and structure names are read from a structure set: no patient or study tag leaves this module.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medtl.data import dicom
from medtl.errors import DataError, ManifestError

logger = logging.getLogger(__name__)

ON_SLICE = 0.25
"""How far (in slices) a contour may lie off the nearest slice centre: rounding in planning systems stays far below."""


@dataclass(frozen=True)
class StructureSet:
    """A structure set's referenced series and, by lower-case name, each structure's closed planar contours (LPS mm)."""

    path: Path
    series_uids: frozenset[str]
    structures: dict[str, list[np.ndarray]]


def structure_names(values: list[str]) -> list[list[str]]:
    """``--contours`` values as classes: each value one class, its comma-separated names that class's aliases (the
    same structure named ``GTV`` at one site and ``GTVp`` at another), compared in lower case."""
    classes = [[n.strip().lower() for n in v.split(",") if n.strip()] for v in values]
    if not all(classes):
        raise ManifestError("--contours: an empty structure name; give names such as --contours GTV or --contours GTV,GTVp")
    seen: dict[str, int] = {}
    for index, names in enumerate(classes):
        for name in names:
            if seen.setdefault(name, index) != index:
                raise ManifestError(f"--contours: structure {name!r} is named for two classes; name it once")
    return classes


def read_structure_set(path: Path) -> StructureSet | None:
    """The structure set at ``path``, or None for any other DICOM object; a malformed one is a DataError naming
    the file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        return None
    try:
        uids = {str(series.SeriesInstanceUID)
                for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
                for study in frame.get("RTReferencedStudySequence", [])
                for series in study.get("RTReferencedSeriesSequence", [])}
        names = {int(roi.ROINumber): str(roi.get("ROIName", "")).strip().lower()
                 for roi in ds.get("StructureSetROISequence", [])}
        structures: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
        for roi in ds.get("ROIContourSequence", []):
            polygons = structures.setdefault(names.get(int(roi.ReferencedROINumber), ""), [])
            polygons += [_points(c) for c in roi.get("ContourSequence", [])
                         if str(c.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DataError(f"{path.name}: a structure set whose ROI or contour tags are malformed; export it again") from None
    return StructureSet(path, frozenset(uids), structures)


def _points(contour: Any) -> np.ndarray:
    points = np.asarray([float(v) for v in contour.ContourData], dtype=float)
    if points.size < 9 or points.size % 3 or not np.isfinite(points).all():
        raise ValueError("ContourData")
    return points.reshape(-1, 3)


def rasterize(polygons: list[np.ndarray], shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The voxels of an (i, j, k) grid with RAS ``affine`` whose centres lie inside ``polygons`` (LPS mm), combined by
    exclusive or on each slice. A polygon off the grid's slices, or outside it, is a DataError."""
    from matplotlib.path import Path as Polygon

    mask = np.zeros(shape, dtype=bool)
    to_voxel = np.linalg.inv(affine)
    for points in polygons:
        ras = np.c_[points * [-1.0, -1.0, 1.0], np.ones(len(points))]
        ijk = (ras @ to_voxel.T)[:, :3]
        k = float(np.round(ijk[:, 2].mean()))
        if np.abs(ijk[:, 2] - k).max() > ON_SLICE:
            raise DataError("a contour does not lie on the slices of the series it references (drawn on another "
                            "series, or an oblique plane)")
        if not 0 <= k < shape[2]:
            raise DataError(f"a contour lies {'below' if k < 0 else 'above'} the series' slices")
        lo = np.clip(np.floor(ijk[:, :2].min(0)).astype(int), 0, None)
        hi = np.minimum(np.ceil(ijk[:, :2].max(0)).astype(int) + 1, shape[:2])
        if (hi <= lo).any():
            raise DataError("a contour lies outside the series' field of view")
        ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
        inside = Polygon(ijk[:, :2]).contains_points(np.c_[ii.ravel(), jj.ravel()]).reshape(ii.shape)
        mask[lo[0]:hi[0], lo[1]:hi[1], int(k)] ^= inside
    return mask


def series_grid(headers: list[dicom.SliceHeader]) -> tuple[tuple[int, int, int], np.ndarray]:
    """The shape and RAS affine a classic series loads with (``dicom.load_series``), from its headers alone."""
    problems = dicom.series_problems(headers)
    if problems:
        raise DataError(problems[0])
    ordered, _ = dicom.order_slices(headers)
    first = ordered[0]
    if len(ordered) < 2 or first.position is None or first.orientation is None:
        raise DataError("contours are read onto a series of two or more single-frame slices")
    return (first.columns, first.rows, len(ordered)), dicom.series_affine(first, dicom.slice_step(ordered))


def label_map(sets: list[StructureSet], classes: list[list[str]], shape: tuple[int, int, int],
              affine: np.ndarray) -> np.ndarray:
    """Class index per voxel (1 for the first ``--contours`` class...; a later class wins where two overlap, as a
    GTV drawn inside its PTV). A class none of ``sets`` names is a DataError listing the names there are."""
    if len(sets) > 1:
        raise DataError(f"{len(sets)} structure sets reference this series ({', '.join(s.path.name for s in sets)}); "
                        "keep the one to train on beside it")
    labels = np.zeros(shape, dtype=np.uint8)
    for index, aliases in enumerate(classes, start=1):
        found = [name for name in aliases if name in sets[0].structures]
        if not found:
            there = sorted(n for n in sets[0].structures if n)
            raise DataError(f"its structure set {sets[0].path.name} names no {' or '.join(aliases)} (it names "
                            f"{', '.join(there[:12]) or 'no structure'}{', ...' if len(there) > 12 else ''}); add the "
                            "name it uses to --contours, as --contours NAME,OTHER")
        polygons = sets[0].structures[found[0]]
        if not polygons:
            raise DataError(f"its structure {found[0]} in {sets[0].path.name} holds no closed planar contour")
        labels[rasterize(polygons, shape, affine)] = index
    return labels


def structure_sets(paths: list[Path]) -> dict[str, list[StructureSet]]:
    """The structure sets among ``paths`` (DICOM objects that hold no scan), by the series each references; one
    that cannot be read is said and left out."""
    by_series: dict[str, list[StructureSet]] = {}
    for path in paths:
        try:
            found = read_structure_set(path)
        except DataError as err:
            logger.warning("%s", err)
            continue
        except Exception:  # noqa: BLE001 - pydicom raises several types for a damaged file
            logger.warning("%s: not a readable DICOM file; left out", path.name)
            continue
        for uid in found.series_uids if found else ():
            by_series.setdefault(uid, []).append(found)  # type: ignore[arg-type]
    return by_series


def write_contour_masks(cases: list[tuple[str, str]], series: dict[str, list[dicom.SliceHeader]],
                        not_scans: list[Path], values: list[str], out_dir: Path) -> dict[str, Path]:
    """For each DICOM case (``cases``: id and reference; ``series``: slice headers by reference) whose series a
    structure set references, the mask of the ``--contours`` structures, written to ``out_dir/CASE.nii.gz``; by case
    id. A case that gets none is said with why; its row keeps an empty mask for ``manifest check`` to list."""
    import nibabel as nib

    from medtl.files import claim_case_files, write_atomically

    classes = structure_names(values)
    sets = structure_sets(not_scans)
    if not sets:
        raise ManifestError("--contours: no RTSTRUCT structure set found among the DICOM files; export the structure "
                            "sets with their series, or give NIfTI masks with --masks")
    mine = {case: (series[ref], sets.get(series[ref][0].series_uid, [])) for case, ref in cases if ref in series}
    claim_case_files(out_dir, "--contours-out", [case for case, (_, found) in mine.items() if found], "contours",
                     "build without --contours")
    written: dict[str, Path] = {}
    for case, (headers, found) in mine.items():
        if not found:
            continue
        try:
            shape, affine = series_grid(headers)
            image = nib.Nifti1Image(label_map(found, classes, shape, affine), affine)
        except DataError as err:
            logger.warning("case %s: no mask from contours: %s", case, err)
            continue
        path = out_dir / f"{case}.nii.gz"
        write_atomically(path, lambda fh, image=image: fh.write(gzip.compress(image.to_bytes())), binary=True)
        written[case] = path
    if not written:
        raise ManifestError("--contours: no case got a mask; the lines above say why")
    uncovered = sum(not found for _, found in mine.values())
    if uncovered:
        logger.warning("%d DICOM series have no structure set referencing them, so no mask (e.g. case %s)", uncovered,
                       next(case for case, (_, found) in mine.items() if not found))
    return written
