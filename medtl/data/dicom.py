"""DICOM series: discovery by SeriesInstanceUID, slice order by position along the slice normal, affine.

MONAI's PydicomReader orders slices by InstanceNumber and measures spacing along z alone (see DESIGN.md),
so medtl orders by the projection of ImagePositionPatient on the slice normal and measures the spacing
there. Patient-module tags are never read into anything that leaves this module.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medtl.errors import DataError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HEADER_TAGS = [
    "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "ImagerPixelSpacing", "InstanceNumber", "Rows", "Columns", "RescaleSlope", "RescaleIntercept",
    "Modality", "NumberOfFrames", "SamplesPerPixel",
]


@dataclass(frozen=True)
class SliceHeader:
    """The geometry of one DICOM file. The parsed dataset rides along for pixel loading only: nothing from it
    other than geometry is ever copied out, logged or written."""

    path: Path
    series_uid: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    has_pixels: bool
    frames: int
    dataset: Any = field(default=None, repr=False, compare=False)
    """The parsed file with its pixel data deferred, so loading does not parse the file a second time."""
    problem: str | None = None
    """Why the file's geometry cannot be trusted (a malformed numeric tag), reported for its series."""


def series_ref(folder: Path, uid: str) -> str:
    """Names one series inside a folder that holds several: ``folder#series=UID``."""
    return f"{folder}#series={uid}"


def parse_series_ref(ref: str) -> tuple[Path, str | None]:
    path, sep, rest = str(ref).partition("#series=")
    return Path(path), (rest if sep else None)


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICM preamble (or at least parses as DICOM)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            return True
        return path.suffix.lower() == ".dcm"
    except OSError:
        return False


def numbers(ds: Any, keyword: str, count: int, path: Path) -> tuple[float, ...] | None:
    """``count`` finite numbers from a numeric tag, None when absent. A malformed value is a DataError that
    names the file and the tag but never echoes the raw text (it may hold anything, PHI included)."""
    try:
        raw = ds.get(keyword)
        if raw is None or raw == "":
            return None
        values = [raw] if count == 1 and not isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else list(raw)
        out = tuple(float(v) for v in values)
    except Exception:  # noqa: BLE001 - pydicom raises several types for a bad DS/IS string
        out = ()
    if len(out) != count or not all(np.isfinite(out)):
        raise DataError(f"{path.name}: {keyword} is not {count} number(s); fix or remove the tag")
    return out


def read_header(path: Path) -> SliceHeader:
    """Reads geometry tags only (no pixels); raises DataError naming the file when it is not usable DICOM."""
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from None
    has_pixels = any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    series_uid = str(ds.get("SeriesInstanceUID", "")) or f"file:{path.name}"
    try:
        spacing = numbers(ds, "PixelSpacing", 2, path) or numbers(ds, "ImagerPixelSpacing", 2, path) or (1.0, 1.0)
        size = [numbers(ds, k, 1, path) for k in ("Rows", "Columns", "NumberOfFrames")]
        position = numbers(ds, "ImagePositionPatient", 3, path)
        orientation = numbers(ds, "ImageOrientationPatient", 6, path)
    except DataError as err:
        return SliceHeader(path, series_uid, None, None, (1.0, 1.0), 0, 0, has_pixels, 1, ds, problem=str(err))
    return SliceHeader(
        path=path,
        series_uid=series_uid,
        position=position,
        orientation=orientation,
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(size[0][0]) if size[0] else 0,
        columns=int(size[1][0]) if size[1] else 0,
        has_pixels=has_pixels,
        frames=int(size[2][0]) if size[2] else 1,
        dataset=ds,
    )


NOT_SCANS = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "KO", "PR", "REG", "DOC"}
"""Modalities of objects made from scans (segmentations, structure sets, dose, reports, selections, registrations,
documents): a DICOM-SEG medtl wrote back beside its series holds pixels but is no scan to score."""


MODALITIES = {"CT": "ct", "MR": "mr", "US": "us", **dict.fromkeys(("CR", "DX", "RG", "MG", "RF", "XA", "IO", "PX"), "xray")}
"""DICOM Modality -> ``data.modality``, for scans whose intensity preset medtl knows; others (OT, SC, PT...) go unchecked."""


def modality_mismatch(tag: str, expected: str) -> str | None:
    """Why a scan whose DICOM Modality is ``tag`` does not belong with data.modality ``expected`` (an MR series under a
    CT window comes out all black or all white, an ultrasound frame reaches a chest-film model, and either is still
    given a confident answer), or None."""
    found = MODALITIES.get(tag.upper())
    if expected == "none" or found in (None, expected):
        return None
    return (f"other modality: DICOM Modality {tag} ({found}) under data.modality {expected}: a {expected} model has never "
            f"seen such a scan, and its intensity preset may scale it wrongly; use data.modality {found} (and a model "
            "trained with it), or leave the case out")


def modality_tag(header: SliceHeader) -> str:
    return str(header.dataset.get("Modality", "")) if header.dataset is not None else ""


def view_tag(header: SliceHeader) -> str:
    """A film's ViewPosition (PA, AP, LL...) in capitals; empty where the file does not say."""
    return str(header.dataset.get("ViewPosition", "")).strip().upper() if header.dataset is not None else ""


def film_view(ref: str) -> str:
    """The ViewPosition of the DICOM film at ``ref`` (its file, or a folder holding only it); empty for any other
    scan, and for a file that cannot be read (reporting that is the check's)."""
    path = Path(ref)
    files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path]
    if len(files) != 1 or not is_dicom_file(files[0]):
        return ""
    try:
        header = read_header(files[0])
    except DataError:
        return ""
    return "" if header.problem else view_tag(header)


STATED_IN_MANIFEST = "the manifest's view column"


def view_mismatch(view: str, views: list[str] | None, source: str = "DICOM ViewPosition") -> str | None:
    """Why a film of ``view`` (as ``source`` states it) does not belong with a model of ``views`` (a lateral film
    through a model of frontal ones is still given a confident answer), or None; a film that states no view is not
    judged."""
    if not views or not view or view in views:
        return None
    return (f"other view: a {view} film ({source}), and the model takes {', '.join(views)} films only "
            f"(data.views); leave the case out, or train a model with {view} films (or with {view} in data.views)")


def scan_series(folder: Path, progress: bool = False) -> tuple[dict[str, list[SliceHeader]], list[Path]]:
    """Groups every DICOM file under ``folder`` (recursively, any file names) by SeriesInstanceUID; returns the
    series and, apart, the files that hold no scan (a DICOMDIR, a report, a segmentation, a localizer)."""
    from medtl.log import counted

    series: dict[str, list[SliceHeader]] = defaultdict(list)
    not_scans: list[Path] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in counted(files, "reading headers", progress and len(files) > 1):
        if not is_dicom_file(path):
            continue
        try:
            header = read_header(path)
        except DataError:
            continue
        if _not_a_scan(header):
            not_scans.append(path)
        else:
            series[header.series_uid].append(header)
    return dict(series), not_scans


def _not_a_scan(header: SliceHeader) -> bool:
    """No pixels and no image size (an image that lost its pixels keeps its Rows), a modality of NOT_SCANS, or a
    CT's localizer (scout), which exports often file in the series it planned, at a right angle to its slices."""
    ds = header.dataset
    if not header.has_pixels and not header.rows:
        return True
    if ds is None:
        return False
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return str(ds.get("Modality", "")).upper() in NOT_SCANS or "LOCALIZER" in {str(v).upper() for v in values}


def find_series(folder: Path) -> dict[str, list[SliceHeader]]:
    """The scan series under ``folder``, by SeriesInstanceUID (see ``scan_series``)."""
    return scan_series(folder)[0]


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:6])
    return np.cross(row, col)


def order_slices(headers: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray]:
    """Sorts slices by position along the slice normal; returns them with their positions (mm)."""
    if len(headers) == 1:
        return headers, np.zeros(1)
    if any(h.position is None or h.orientation is None for h in headers):
        raise DataError(f"{headers[0].path.parent.name}: series without ImagePositionPatient/ImageOrientationPatient; cannot order its slices")
    normal = slice_normal(headers[0].orientation)  # type: ignore[arg-type]
    proj = np.array([float(np.dot(normal, h.position)) for h in headers])  # type: ignore[arg-type]
    order = np.argsort(proj, kind="stable")
    return [headers[i] for i in order], proj[order]


def series_problems(headers: list[SliceHeader], tol: float = 1e-3) -> list[str]:
    """Geometry problems that make a series unsafe to stack: mixed orientation/size, duplicates, gaps."""
    problems: list[str] = [h.problem for h in headers if h.problem]
    if problems:
        return problems[:1]
    if not all(h.has_pixels for h in headers):
        missing = [h.path.name for h in headers if not h.has_pixels]
        problems.append(f"DICOM without pixel data ({', '.join(missing[:3])})")
    if len(headers) < 2:
        return problems
    oris = {tuple(np.round(h.orientation, 4)) for h in headers if h.orientation is not None}
    if len(oris) > 1:
        problems.append("slices with inconsistent ImageOrientationPatient")
    if len({(h.rows, h.columns) for h in headers}) > 1:
        problems.append("slices with different sizes")
    if len({tuple(np.round(h.pixel_spacing, 4)) for h in headers}) > 1:
        problems.append("slices with inconsistent PixelSpacing")
    if problems or any(h.position is None or h.orientation is None for h in headers):
        return problems or ["slices without ImagePositionPatient/ImageOrientationPatient"]
    _, pos = order_slices(headers)
    steps = np.diff(pos)
    if np.any(steps < tol):
        positions, counts = np.unique(np.round(pos, 2), return_counts=True)
        if len(positions) > 1 and len(set(counts)) == 1:  # k whole volumes at the same n positions
            problems.append(f"{counts[0]} volumes at the same {len(positions)} positions in one series (duplicate slice: "
                            "echoes, b-values or time points); export each volume as a series of its own")
        else:
            problems.append("two slices at the same position (duplicate slice)")
    elif steps.size:
        step = float(np.median(steps))
        gaps = np.flatnonzero(steps > 1.5 * step)
        if gaps.size:
            problems.append(f"missing slice: gap of {steps[gaps[0]]:.2f} mm where spacing is {step:.2f} mm")
        elif np.max(np.abs(steps - step)) > max(tol, 0.01 * step):
            problems.append("inconsistent slice spacing")
    return problems


def _pixels(header: SliceHeader) -> np.ndarray:
    ds = None
    try:
        ds = header.dataset if header.dataset is not None else pydicom.dcmread(header.path)
        raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault; its text may quote the header
        raise DataError(f"{header.path.name}: cannot decode pixel data ({type(exc).__name__}){_decoder_hint(ds)}") from None
    if "ModalityLUTSequence" in ds:  # a lookup table in place of slope and intercept (some CR and XA)
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    arr = raw.astype(np.float32)
    slope = (numbers(ds, "RescaleSlope", 1, header.path) or (1.0,))[0] or 1.0
    intercept = (numbers(ds, "RescaleIntercept", 1, header.path) or (0.0,))[0]
    return arr * slope + intercept


def _decoder_hint(ds: pydicom.Dataset | None) -> str:
    """Names the compression and what would decode it: a missing codec is the site's to install, not bad data."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return ""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"; {syntax.name} is a transfer syntax pydicom cannot decode: convert the series (e.g. dcmdjpeg or gdcmconv --raw)"
    if not decoder.is_available:
        return f"; no decoder for {syntax.name} is installed here: {'; '.join(decoder.missing_dependencies)}"
    return f"; its {syntax.name} data do not decode: the file may be damaged" if syntax.is_compressed else ""


def load_series(headers: list[SliceHeader]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks a series into an (i, j, k) array in real units with its RAS affine.

    i runs along the row direction (columns of the pixel array), j along the column direction, k along the
    slice normal, matching NibabelReader's convention so both readers feed the same transforms. Every scan
    comes out as MONOCHROME2 (high values bright): a site whose radiographs are stored MONOCHROME1 would
    otherwise reach a model as the negatives of the films it was trained on.
    """
    problems = series_problems(headers)
    if problems:
        raise DataError(f"{headers[0].path.parent.name}: {problems[0]}")
    ordered, _ = order_slices(headers)
    first = ordered[0]
    if len(ordered) > 1:
        array = np.stack([_pixels(h).T for h in ordered], axis=-1)
        affine = series_affine(first, slice_step(ordered))
    elif first.frames > 1 and "PerFrameFunctionalGroupsSequence" in _dataset(first):
        array, affine = _enhanced_volume(first)
    else:
        array, affine = _single_file(first)
    if _inverted(_dataset(first)):
        array = array.min() + array.max() - array
    return array, affine


def _dataset(header: SliceHeader) -> Any:
    return header.dataset if header.dataset is not None else pydicom.dcmread(header.path, defer_size="1 KB")


def _inverted(ds: Any) -> bool:
    """Whether low values display white: an INVERSE presentation LUT, or MONOCHROME1 without one (the rule
    highdicom's get_volume applies)."""
    shape = str(ds.get("PresentationLUTShape", "") or "")
    return shape == "INVERSE" if shape else str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"


def _single_file(header: SliceHeader) -> tuple[np.ndarray, np.ndarray]:
    """One film, or a multi-frame file without per-frame geometry (a cine loop): frames stack along k."""
    arr = _pixels(header)
    if int(_dataset(header).get("SamplesPerPixel", 1)) > 1:
        arr = arr.mean(axis=-1)
    arr = arr.T if header.frames == 1 else arr.transpose(2, 1, 0)  # (frame,) row, column -> column, row(, frame)
    if header.orientation is not None and header.position is not None:
        return arr, series_affine(header, 1.0)
    ps = header.pixel_spacing
    return arr, np.diag([ps[1], ps[0], 1.0, 1.0])


def _enhanced_volume(header: SliceHeader) -> tuple[np.ndarray, np.ndarray]:
    """An enhanced multi-frame image (its geometry per frame, in functional groups) through highdicom, in the
    layout and slice order a classic series gets."""
    import highdicom as hd

    try:
        volume = hd.imread(str(header.path)).get_volume(dtype=np.float32, apply_presentation_lut=False,
                                                       apply_voi_transform=False)
    except Exception as exc:  # noqa: BLE001 - highdicom raises several types for frames it cannot place
        raise DataError(f"{header.path.name}: the frames of this multi-frame image do not form one regularly "
                        f"spaced volume ({type(exc).__name__}); export the series as single-frame files") from None
    array = np.asarray(volume.array).transpose(2, 1, 0)  # slice, row, column -> column, row, slice
    affine = LPS_TO_RAS @ np.asarray(volume.affine)[:, [2, 1, 0, 3]]
    if np.dot(np.cross(affine[:3, 0], affine[:3, 1]), affine[:3, 2]) < 0:  # slices ascend along the normal
        affine[:3, 3] += affine[:3, 2] * (array.shape[2] - 1)
        affine[:3, 2] *= -1
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array), affine


def series_affine(first: SliceHeader, step: float | np.ndarray) -> np.ndarray:
    """The RAS affine of a series from its first slice and ``step``: the spacing along the slice normal, or the
    LPS vector from one slice's position to the next, which carries a tilted gantry's shear (slices that step
    along the table, not along their normal)."""
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:6])  # type: ignore[index]
    lps = np.eye(4)
    lps[:3, 0] = row * first.pixel_spacing[1]
    lps[:3, 1] = col * first.pixel_spacing[0]
    lps[:3, 2] = np.cross(row, col) * step if np.ndim(step) == 0 else step
    lps[:3, 3] = first.position  # type: ignore[assignment]
    return LPS_TO_RAS @ lps


def slice_step(ordered: list[SliceHeader]) -> np.ndarray:
    """The mean LPS vector from one slice's position to the next, of slices ordered along the normal."""
    first, last = (np.asarray(h.position, dtype=float) for h in (ordered[0], ordered[-1]))
    return (last - first) / (len(ordered) - 1)
