"""Delineations in: the named structures of a DICOM RTSTRUCT structure set or DICOM-SEG segmentation, as a NIfTI mask
on the grid of the series they reference, for ``manifest build --structures``.

Radiotherapy departments keep delineations as RTSTRUCT: closed planar polygons in patient coordinates (LPS, mm),
each drawn on one slice. A voxel is in a structure when its centre lies inside the polygon; polygons on one slice
combine by exclusive or, so an inner contour cuts a hole (the convention of plastimatch and of most planning
systems). Research archives, viewers (3D Slicer, OHIF) and medtl's own ``score --masks-out`` keep them as DICOM-SEG:
frames of pixels, each naming the source slice it lies on, which highdicom reads onto the series' slices (a reader's
corrections to medtl's own segmentation come back this way as training labels; medtl's own, uncorrected, never do). The mask is written with the affine
the series itself loads with, so image and mask share one world by construction, which ``manifest check`` confirms.

Why not rt-utils, which DESIGN.md names for RTSTRUCT: it needs opencv-python (a GUI build that wants libGL on
import), places a contour on a slice only through the optional ContourImageSequence, and rounds each vertex to a
whole pixel before filling. An even-odd scanline fill of the exact vertices (``inside_polygon``, checked against
matplotlib's point-in-polygon test), on the geometry ``medtl.data.dicom`` already derives, needs none of that.

Only geometry and structure names are read: no patient or study tag leaves this module.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from medtl.data import dicom
from medtl.errors import DataError, ManifestError

logger = logging.getLogger(__name__)

ON_SLICE = 0.25
"""How far (in slices) a contour may lie off the nearest slice centre: rounding in planning systems stays far below."""
KINDS = {"RTSTRUCT": "structure set", "SEG": "segmentation"}
OWN = "medtl"
"""The Manufacturer of the DICOM-SEG that ``score --masks-out`` writes (``medtl.dicom_seg``)."""
CLOSED = {"CLOSED_PLANAR", "CLOSEDPLANAR_XOR"}
"""Contour types that enclose an area: both combine by exclusive or (the second says so outright, since 2021)."""


@dataclass(frozen=True)
class Delineation:
    """A structure set or a segmentation: the series it references and its structures by lower-case name, as
    closed planar contours (LPS mm; a structure set) or a segment number (a segmentation)."""

    path: Path
    kind: str
    series_uids: frozenset[str]
    contours: dict[str, list[np.ndarray]] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    image_uids: frozenset[str] = frozenset()
    """The slices its contours name (ContourImageSequence), for a structure set that names no series."""
    frame_uid: str = ""
    """Its Frame of Reference, for one that names neither series nor slices."""
    own: bool = False
    """A segmentation medtl's scoring wrote: a model's own output, never read as a training label."""

    @property
    def names(self) -> list[str]:
        return sorted(n for n in {*self.contours, *self.segments} if n)


def structure_names(values: list[str]) -> list[list[str]]:
    """``--structures`` values as classes: each value one class, its comma-separated names that class's aliases (the
    same structure named ``GTV`` at one site and ``GTVp`` at another), compared in lower case."""
    classes = [[n.strip().lower() for n in v.split(",") if n.strip()] for v in values]
    if not all(classes):
        raise ManifestError("--structures: an empty structure name; give names such as --structures GTV or "
                            "--structures GTV,GTVp")
    seen: dict[str, int] = {}
    for index, names in enumerate(classes):
        for name in names:
            if seen.setdefault(name, index) != index:
                raise ManifestError(f"--structures: structure {name!r} is named for two classes; name it once")
    return classes


def read_delineation(path: Path) -> Delineation | None:
    """The structure set or segmentation at ``path``, or None for any other DICOM object; a malformed one is a
    DataError naming the file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    kind = str(ds.get("Modality", "")).upper()
    if kind not in KINDS:
        return None
    try:
        if kind == "SEG":
            if str(ds.get("Manufacturer", "")) == OWN:
                return Delineation(path, KINDS[kind], frozenset(), own=True)
            uids = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
            segments = {str(s.get("SegmentLabel", "")).strip().lower(): int(s.SegmentNumber)
                        for s in ds.get("SegmentSequence", [])}
            return Delineation(path, KINDS[kind], frozenset(uids), segments=segments)
        uids = {str(series.SeriesInstanceUID)
                for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
                for study in frame.get("RTReferencedStudySequence", [])
                for series in study.get("RTReferencedSeriesSequence", [])}
        rois = list(ds.get("StructureSetROISequence", []))
        names = {int(roi.ROINumber): str(roi.get("ROIName", "")).strip().lower() for roi in rois}
        contours: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
        images: set[str] = set()
        for roi in ds.get("ROIContourSequence", []):
            closed = [c for c in roi.get("ContourSequence", [])
                      if str(c.get("ContourGeometricType", "")).upper() in CLOSED]
            contours.setdefault(names.get(int(roi.ReferencedROINumber), ""), []).extend(_points(c) for c in closed)
            images |= {str(i.ReferencedSOPInstanceUID) for c in closed for i in c.get("ContourImageSequence", [])}
        frames = {str(roi.get("ReferencedFrameOfReferenceUID", "")) for roi in rois} - {""}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DataError(f"{path.name}: a {KINDS[kind]} whose structure tags are malformed; export it again") from None
    return Delineation(path, KINDS[kind], frozenset(uids), contours=contours, image_uids=frozenset(images),
                       frame_uid=frames.pop() if len(frames) == 1 else "")


def _points(contour: Any) -> np.ndarray:
    points = np.asarray([float(v) for v in contour.ContourData], dtype=float)
    if points.size < 9 or points.size % 3 or not np.isfinite(points).all():
        raise ValueError("ContourData")
    return points.reshape(-1, 3)


def rasterize(polygons: list[np.ndarray], shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The voxels of an (i, j, k) grid with RAS ``affine`` whose centres lie inside ``polygons`` (LPS mm), combined by
    exclusive or on each slice. A polygon off the grid's slices, or outside it, is a DataError."""
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
        mask[lo[0]:hi[0], lo[1]:hi[1], int(k)] ^= inside_polygon(ijk[:, :2], lo, hi)
    return mask


def inside_polygon(polygon: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each pixel centre (i, j) of the box ``lo`` <= (i, j) < ``hi`` lies inside ``polygon`` (vertices in
    (i, j)), by the even-odd rule, one row of j at a time: a body outline of 500 vertices over a 512 x 512 slice
    takes milliseconds, where a point-by-point test takes a third of a second."""
    x, y = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    rows = np.arange(lo[1], hi[1], dtype=float)[:, None]
    crosses = (np.minimum(y, y2) <= rows) & (rows < np.maximum(y, y2))  # each edge counted once per row it spans
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.where(crosses, x + (rows - y) * (x2 - x) / (y2 - y), np.inf)
    at.sort(axis=1)
    columns = np.arange(lo[0], hi[0], dtype=float)
    left = np.stack([np.searchsorted(row, columns, side="right") for row in at], axis=1)  # crossings left of each
    return left % 2 == 1


def segment_mask(path: Path, number: int, ordered: list[dicom.SliceHeader]) -> np.ndarray:
    """Segment ``number`` of the segmentation at ``path`` on the (i, j, k) grid of the ``ordered`` slices, each frame
    placed on the slice it names (highdicom); a frame that names no slice of them, or does not keep the source
    pixels' positions, is a DataError."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
        frames = seg.get_pixels_by_source_instance([str(h.dataset.SOPInstanceUID) for h in ordered],
                                                   segment_numbers=[number], assert_missing_frames_are_empty=True)
    except Exception as exc:  # noqa: BLE001 - highdicom raises several types for frames it cannot place
        raise DataError(f"its segmentation {path.name} cannot be placed on the series' slices "
                        f"({type(exc).__name__}: frames of another series, or resampled off its pixels)") from None
    return np.asarray(frames[..., 0]).transpose(2, 1, 0) >= 0.5  # slice, row, column -> column, row, slice


def series_grid(headers: list[dicom.SliceHeader]) -> tuple[list[dicom.SliceHeader], tuple[int, int, int], np.ndarray]:
    """The slices in the order, and the shape and RAS affine, a classic series loads with (``dicom.load_series``),
    from its headers alone."""
    problems = dicom.series_problems(headers)
    if problems:
        raise DataError(problems[0])
    ordered, _ = dicom.order_slices(headers)
    first = ordered[0]
    if len(ordered) < 2 or first.position is None or first.orientation is None:
        raise DataError("structures are read onto a series of two or more single-frame slices")
    return ordered, (first.columns, first.rows, len(ordered)), dicom.series_affine(first, dicom.slice_step(ordered))


def label_map(found: list[Delineation], classes: list[list[str]], headers: list[dicom.SliceHeader]) -> nib.Nifti1Image:
    """The NIfTI of class indices on the series' grid (1 for the first ``--structures`` class...; a later class wins
    where two overlap, as a GTV drawn inside its PTV). A class the delineation does not name is a DataError listing
    the names it has."""
    if len(found) > 1:
        raise DataError(f"{len(found)} structure sets or segmentations reference this series "
                        f"({', '.join(d.path.name for d in found)}); keep the one to train on beside it")
    source = found[0]
    ordered, shape, affine = series_grid(headers)
    labels = np.zeros(shape, dtype=np.uint8)
    for index, aliases in enumerate(classes, start=1):
        name = next((n for n in aliases if n in source.contours or n in source.segments), None)
        if name is None:
            there = source.names
            raise DataError(f"its {source.kind} {source.path.name} names no {' or '.join(aliases)} (it names "
                            f"{', '.join(there[:12]) or 'no structure'}{', ...' if len(there) > 12 else ''}); add the "
                            "name it uses to --structures, as --structures NAME,OTHER")
        if name in source.segments:
            labels[segment_mask(source.path, source.segments[name], ordered)] = index
        elif source.contours[name]:
            labels[rasterize(source.contours[name], shape, affine)] = index
        else:
            raise DataError(f"its structure {name} in {source.path.name} holds no closed planar contour")
    return nib.Nifti1Image(labels, affine)


def delineations(paths: list[Path],
                 series: dict[str, list[dicom.SliceHeader]]) -> tuple[dict[str, list[Delineation]], int, int]:
    """The structure sets and segmentations among ``paths`` (DICOM objects that hold no scan), by the series (of
    ``series``: slice headers by reference) each references, how many there are, and how many medtl's scoring wrote
    (left out: a model's own output is no training label); one that cannot be read, or placed, is said and left out.

    A structure set names its series in RTReferencedSeriesSequence; one that does not (the tag is optional, and some
    planning and auto-contouring systems leave it out) is placed by the slices its contours name, else by its Frame
    of Reference where one series alone shares it."""
    by_slice = {str(h.dataset.get("SOPInstanceUID", "")): h.series_uid for hs in series.values() for h in hs
                if h.dataset is not None}
    by_frame: dict[str, set[str]] = {}
    for headers in series.values():
        if headers[0].dataset is not None:
            by_frame.setdefault(str(headers[0].dataset.get("FrameOfReferenceUID", "")), set()).add(headers[0].series_uid)
    found_by_series: dict[str, list[Delineation]] = {}
    count, own = 0, 0
    for path in paths:
        try:
            found = read_delineation(path)
        except DataError as err:
            logger.warning("%s", err)
            continue
        except Exception:  # noqa: BLE001 - pydicom raises several types for a damaged file
            logger.warning("%s: not a readable DICOM file; left out", path.name)
            continue
        if found is None or found.own:
            own += found is not None
            continue
        count += 1
        uids = found.series_uids or {by_slice[u] for u in found.image_uids if u in by_slice}
        if not uids and len(by_frame.get(found.frame_uid, ())) == 1:
            uids = by_frame[found.frame_uid]
        if not uids:
            logger.warning("%s: a %s that names no series found here, by series, slice or frame of reference; left "
                           "out", path.name, found.kind)
        for uid in uids:
            found_by_series.setdefault(uid, []).append(found)
    if own:
        logger.info("%d DICOM-SEG that medtl's scoring wrote left out: a model's own output is no training label (a "
                    "reader's correction, saved by a viewer as a new object, is read)", own)
    return found_by_series, count, own


def write_structure_masks(cases: list[tuple[str, str]], series: dict[str, list[dicom.SliceHeader]],
                          not_scans: list[Path], values: list[str], out_dir: Path,
                          progress: bool = False) -> dict[str, Path]:
    """For each DICOM case (``cases``: id and reference; ``series``: slice headers by reference) whose series a
    structure set or segmentation references, the mask of the ``--structures`` written to ``out_dir/CASE.nii.gz``;
    by case id. A case that gets none is said with why; its row keeps an empty mask for ``manifest check`` to list."""
    from medtl.files import claim_case_files, write_atomically
    from medtl.log import counted

    classes = structure_names(values)
    sets, count, own = delineations(not_scans, series)
    if not count and own:
        raise ManifestError("--structures: the only segmentations here are DICOM-SEG that medtl's scoring wrote, and a "
                            "model's own output is no training label; have a reader correct them in a viewer (which "
                            "saves a new object), or give masks with --masks")
    if not count:
        raise ManifestError("--structures: no RTSTRUCT structure set or DICOM-SEG segmentation found among the DICOM "
                            "files; export them with their series, or give NIfTI masks with --masks")
    mine = {case: (series[ref], sets.get(series[ref][0].series_uid, [])) for case, ref in cases if ref in series}
    claim_case_files(out_dir, "--structures-out", [case for case, (_, found) in mine.items() if found], "structures",
                     "build without --structures")
    written: dict[str, Path] = {}
    for case, (headers, found) in counted([(c, m) for c, m in mine.items() if m[1]], "drawing structures", progress):
        try:
            image = label_map(found, classes, headers)
        except DataError as err:
            logger.warning("case %s: no mask from its structures: %s", case, err)
            continue
        path = out_dir / f"{case}.nii.gz"
        write_atomically(path, lambda fh, image=image: fh.write(gzip.compress(image.to_bytes())), binary=True)
        written[case] = path
    if not written:
        raise ManifestError("--structures: no case got a mask; the lines above say why")
    uncovered = [case for case, (_, found) in mine.items() if not found]
    if uncovered:
        logger.warning("%d DICOM series have no structure set or segmentation referencing them, so no mask (e.g. "
                       "case %s)", len(uncovered), uncovered[0])
    return written
