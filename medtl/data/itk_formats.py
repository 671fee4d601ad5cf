"""MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr): the formats of grand-challenge.org, LUNA16 and 3D Slicer.

SimpleITK reads them, with their geometry in ITK's LPS world; medtl turns that into the RAS affine and the
(column, row, slice) voxel order its NIfTI and DICOM readers give, so the rest of the pipeline cannot tell the
formats apart. A mask scored on such a scan is written back in the scan's format, on its exact grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtl.config_sections import max_voxels
from medtl.data.dicom import LPS_TO_RAS
from medtl.errors import DataError

ITK_FORMATS = {".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD", ".nhdr": "NRRD"}
"""Suffix to format name; a .mhd or .nhdr header names a data file beside it (.raw, .zraw), which is no scan."""

DETACHED = (".mhd", ".nhdr")
"""Headers whose voxels lie in a data file beside them: two scans may have the same header and other voxels."""

WRITTEN_AS = {".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd"}
"""A mask is one self-contained file in its scan's format: no detached data file to lose on the way to a viewer."""


def itk_format(path: Path | str) -> str | None:
    """'MetaImage' or 'NRRD' from the file name, else None."""
    return ITK_FORMATS.get(Path(path).suffix.lower())


@dataclass(frozen=True)
class ItkHeader:
    """What the header says, before any voxel is read: shape in medtl's (column, row[, slice]) order and the affine
    from voxel indices to RAS millimetres (3 x 3 for a film, as medtl's DICOM films have, 4 x 4 for a volume), and
    the header's key/value fields (3D Slicer names its segments there)."""

    shape: tuple[int, ...]
    affine: np.ndarray
    fields: dict[str, str] = field(default_factory=dict)


def _reader(path: Path) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"unreadable {itk_format(path)} header ({_first_line(exc)})") from None
    return reader


def _first_line(exc: Exception) -> str:
    """ITK's exceptions run over several lines with the C++ source file first; the description is what helps."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    described = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Description:")]
    return (described or lines[-1:] or [type(exc).__name__])[0]


def _affine(spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    if len(spacing) == 2:
        return np.array([[spacing[0], 0.0, 0.0], [0.0, spacing[1], 0.0], [0.0, 0.0, 1.0]])
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def read_itk_header(path: Path) -> ItkHeader:
    """The header, once it is shown to describe one grey 2-D or 3-D image within the voxel limit and with a usable
    geometry: a header is a claim, checked before the voxels are allocated. Errors name no file: the caller does."""
    import SimpleITK as sitk

    path = Path(path)
    reader = _reader(path)
    shape = tuple(int(n) for n in reader.GetSize())
    if reader.GetDimension() not in (2, 3):
        raise DataError(f"a {reader.GetDimension()}-D image {shape}; give one 2-D or 3-D image per case")
    if reader.GetNumberOfComponents() > 1:
        raise DataError(f"{reader.GetNumberOfComponents()} values per voxel (a colour or vector image, or a 3D Slicer "
                        "segmentation whose segments overlap, saved in layers); give one grey channel, or export the "
                        "segmentation as a labelmap")
    if "complex" in sitk.GetPixelIDValueAsString(reader.GetPixelID()):
        raise DataError("complex-valued voxels (MR phase or k-space data); give a magnitude image")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels():
        raise DataError(f"header declares {voxels:,} voxels, above the limit of {max_voxels():,} "
                        "(set MEDTL_MAX_VOXELS to allow larger scans)")
    affine = _affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    if not np.isfinite(affine).all() or np.linalg.cond(affine[:-1, :-1]) > 1e9:
        raise DataError("its spacing or direction gives a voxel size of 0 or NaN; fix the header or "
                        "re-export the scan with its geometry")
    return ItkHeader(shape, affine, {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()})


def load_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels as float32 in (column, row[, slice]) order, and the RAS affine of ``read_itk_header``."""
    import SimpleITK as sitk

    path = Path(path)
    header = read_itk_header(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"unreadable {itk_format(path)} voxels ({_first_line(exc)}); the file or the "
                        "data file its header names is missing or truncated") from None
    array = sitk.GetArrayViewFromImage(image)  # ITK hands them over slice, row, column
    return np.ascontiguousarray(array.T, dtype=np.float32), header.affine


def write_itk_mask(labels: np.ndarray, source: Path, out_stem: Path, classes: list[str] | None = None) -> Path:
    """``labels`` (on ``source``'s grid, in medtl's voxel order) as a mask in ``source``'s format, with its origin,
    spacing and direction copied from ``source``'s header; returns the path written. Beside an NRRD scan it is a
    3D Slicer segmentation (``.seg.nrrd``) whose segments carry the ``classes``' names (background first)."""
    import SimpleITK as sitk

    reader = _reader(Path(source))
    size = tuple(int(n) for n in reader.GetSize())
    mask = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(labels, dtype=np.uint8).reshape(size).T))
    mask.SetOrigin(reader.GetOrigin())
    mask.SetSpacing(reader.GetSpacing())
    mask.SetDirection(reader.GetDirection())
    suffix = WRITTEN_AS[Path(source).suffix.lower()]
    if suffix == ".nrrd":
        suffix = ".seg.nrrd"
        for n, name in enumerate((classes or ["background", "lesion"])[1:]):
            for key, value in (("ID", f"Segment_{n + 1}"), ("Name", name), ("LabelValue", str(n + 1)), ("Layer", "0")):
                mask.SetMetaData(f"Segment{n}_{key}", value)
    out = out_stem.with_name(out_stem.name + suffix)
    sitk.WriteImage(mask, str(out), useCompression=True)
    return out


def data_files(path: Path) -> list[Path]:
    """The files a detached header (.mhd, .nhdr) names for its voxels, read from its text: ``ElementDataFile`` or
    ``data file``; where it names a list or a pattern, the files beside it with its stem. Empty for other files."""
    path = Path(path)
    if path.suffix.lower() not in DETACHED:
        return []
    named = None
    with open(path, "rb") as fh:
        for raw in fh.read(65536).decode("latin-1").splitlines():
            key, sep, value = raw.partition("=" if path.suffix.lower() == ".mhd" else ":")
            if sep and key.strip().lower() in ("elementdatafile", "data file", "datafile"):
                named = value.strip()
                break
    if named and named.upper() != "LOCAL" and not named.upper().startswith("LIST") and "%" not in named:
        return [path.parent / named]
    return sorted(p for p in path.parent.glob(f"{path.stem}.*") if p != path and p.is_file())


def content_digest(path: Path) -> str:
    """What makes two files the same scan: the file's bytes, and for a detached header also its voxels."""
    import hashlib

    from medtl.files import sha256_file

    digest = sha256_file(Path(path))
    if Path(path).suffix.lower() in DETACHED:
        try:
            voxels, _ = load_itk(Path(path))
        except DataError:  # the case's own error says why; its header alone is what it has
            return digest
        digest = hashlib.sha256(digest.encode() + voxels.tobytes()).hexdigest()
    return digest
