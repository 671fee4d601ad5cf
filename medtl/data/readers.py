"""One MONAI ImageReader for every scan medtl accepts: DICOM series or file, NIfTI, MetaImage, NRRD, PNG/JPEG.

NIfTI and PNG go to MONAI's NibabelReader and PILReader; DICOM goes through medtl's series loader, which
orders slices by position (see ``medtl.data.dicom``); MetaImage and NRRD through SimpleITK
(``medtl.data.itk_formats``). Every failure becomes a DataError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader, PILReader
from monai.utils import MetaKeys, SpaceKeys

from medtl.config_sections import max_voxels
from medtl.data import dicom
from medtl.data.itk_formats import ITK_FORMATS, load_itk
from medtl.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
"""Read by nibabel, with their affine: NIfTI, and FreeSurfer's MGH (``aseg.mgz``, ``brainmask.mgz``)."""
ITK_SUFFIXES = tuple(ITK_FORMATS)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")
"""How PACS and data-sharing exports often arrive: scans packed in an archive, which medtl does not open."""
OTHER_FORMATS = {".hdr": "Analyze", ".img": "Analyze", ".npy": "NumPy", ".npz": "NumPy"}
"""Research formats medtl does not read, by suffix: each is converted to NIfTI with its geometry in one call."""

DEFLATE_MAX_RATIO = 1032  # no deflate stream expands more than this: a larger claim is a forged header


def nibabel_format(path: Path) -> str:
    return "FreeSurfer" if path.name.lower().endswith((".mgz", ".mgh")) else "NIfTI"


def check_nifti_size(path: Path) -> tuple[int, ...]:
    """The shape a NIfTI header declares, once it is shown to fit the voxel limit and the file's length.

    A header is a claim: a 147-byte file may declare 30000 x 30000 voxels. Nothing is allocated before the
    claim is checked against the bytes that are really there."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(getattr(img, "dataobj").offset)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken headers
        raise DataError(f"{path.name}: unreadable {nibabel_format(path)} header ({type(exc).__name__})") from None
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels():
        raise DataError(f"{path.name}: header declares {voxels:,} voxels, above the limit of {max_voxels():,} "
                        "(set MEDTL_MAX_VOXELS to allow larger scans)")
    needed, size = offset + voxels * itemsize, path.stat().st_size
    available = size * DEFLATE_MAX_RATIO if path.name.lower().endswith((".gz", ".mgz")) else size
    if needed > available:
        raise DataError(f"{path.name}: header declares {voxels:,} voxels ({needed:,} bytes) but the file cannot hold "
                        "them; it is truncated or its header is wrong")
    return shape


def scan_kind(path: Path | str) -> str:
    """'dicom', 'nifti', 'itk' (MetaImage, NRRD) or 'image' from what the path is; DataError when it is none."""
    path, uid = dicom.parse_series_ref(str(path))
    if uid:
        return "dicom"
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if dicom.is_dicom_file(path):
        return "dicom"
    if name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"{path.name}: an archive, not a scan; unpack it and give the scans inside")
    if path.suffix.lower() in OTHER_FORMATS:
        raise DataError(f"{path.name}: in {OTHER_FORMATS[path.suffix.lower()]} format, which medtl does not read; "
                        "convert it to NIfTI with its spacing and orientation (SimpleITK's or nibabel's save does)")
    raise DataError(f"{path.name}: not a DICOM, NIfTI, MetaImage, NRRD or PNG file")



def archive_hint(folder: Path) -> str:
    """What to do when a folder holds no scan medtl reads but archives of them (a zipped PACS export) or scans in a
    research format medtl does not read (Analyze, NumPy); empty when it holds neither."""
    files = [p.name for p in sorted(folder.rglob("*"))]
    packed = [f for f in files if f.lower().endswith(ARCHIVE_SUFFIXES)]
    if packed:
        return (f"; it holds {len(packed)} archive(s) ({', '.join(packed[:3])}{', ...' if len(packed) > 3 else ''}): "
                "unpack them and point at the folder they make")
    other = [f for f in files if Path(f).suffix.lower() in OTHER_FORMATS]
    if other:
        kinds = sorted({OTHER_FORMATS[Path(f).suffix.lower()] for f in other})
        return (f"; it holds {len(other)} {' and '.join(kinds)} file(s) ({other[0]}{', ...' if len(other) > 1 else ''}), "
                "which medtl does not read: convert them to NIfTI with their spacing and orientation (SimpleITK's or "
                "nibabel's save does)")
    return ""


def _grey(img: Any) -> Any:
    return img.convert("F") if img.mode not in ("L", "I", "F", "I;16") else img


class ScanReader(ImageReader):
    """Reads one scan path (a file, or a folder holding one DICOM series) into (array, meta)."""

    def __init__(self) -> None:
        super().__init__()
        self._nifti = NibabelReader()
        self._image = PILReader(converter=_grey, reverse_indexing=True)

    def verify_suffix(self, filename: Any) -> bool:
        return True

    def read(self, data: Any, **kwargs: Any) -> tuple[str, Any, Path]:
        ref = str(data if not isinstance(data, (list, tuple)) else data[0])
        kind = scan_kind(ref)
        path, uid = dicom.parse_series_ref(ref)
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if kind == "nifti":
            check_nifti_size(path)
        if kind == "itk":
            return kind, path, path  # get_data reads the header before the voxels
        try:
            if kind == "nifti":
                image = self._nifti.read(str(path))
                problem = nifti_problem(image.get_data_dtype(), image.shape, image.affine)
                if problem:
                    raise DataError(f"{path.name}: {problem}")
                return kind, image, path
            if kind == "image":
                return kind, self._image.read(str(path)), path
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library's own errors name no case
            raise DataError(f"{path.name}: unreadable {kind} file ({type(exc).__name__}: {exc})") from None
        headers = dicom_headers(path, uid)
        return kind, headers, path

    def get_data(self, img: tuple[str, Any, Path]) -> tuple[np.ndarray, dict]:
        kind, payload, path = img
        try:
            if kind == "nifti":
                return self._nifti.get_data(payload)
            if kind == "image":
                return self._image.get_data(payload)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path.name}: cannot decode {kind} voxels ({type(exc).__name__}: {exc})") from None
        if kind == "itk":
            try:
                array, affine = load_itk(payload)
            except DataError as exc:
                raise DataError(f"{path.name}: {exc}") from None
            return array, _meta(array, affine)
        array, affine = dicom.load_series(payload)
        rank = array.ndim
        if rank == 2:
            affine = np.array([[affine[0, 0], 0, 0], [0, affine[1, 1], 0], [0, 0, 1.0]])
        # for CheckAcquisitiond; the other formats carry neither
        meta = _meta(array, affine, dicom_modality=dicom.modality_tag(payload[0]),
                     dicom_view=dicom.view_tag(payload[0]))
        return array.astype(np.float32), meta


def _meta(array: np.ndarray, affine: np.ndarray, **tags: Any) -> dict[str, Any]:
    """MONAI's metadata for voxels medtl decoded itself, in RAS."""
    return {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        MetaKeys.SPACE: SpaceKeys.RAS,
        **tags,
    }


def nifti_problem(dtype: Any, shape: tuple[int, ...], affine: np.ndarray) -> str | None:
    """What makes a NIfTI no scan to train on or score, from its header: complex voxels (MR phase or k-space data,
    which the cast to float would cut to their real part), or an affine that flattens a volume (a voxel size of 0,
    or two axes along one line), which the reorientation to RAS cannot invert. The condition number, not the
    determinant, judges it: micrometre voxels are small, not flat."""
    if np.dtype(dtype).kind == "c":
        return "complex-valued voxels (MR phase or k-space data); give a magnitude image"
    affine = np.asarray(affine, dtype=float)
    if len(shape) >= 3 and shape[2] > 1 and (not np.isfinite(affine).all() or np.linalg.cond(affine[:3, :3]) > 1e9):
        return ("its affine gives a voxel size of 0 or NaN (header sform/qform, pixdim); fix the header or re-export "
                "the scan with its geometry")
    return None


def dicom_headers(path: Path, uid: str | None = None) -> list[dicom.SliceHeader]:
    """The slices of the one series at ``path`` (a file, a folder, or a folder plus a series UID)."""
    if path.is_file():
        return [dicom.read_header(path)]
    if not path.exists():
        raise DataError(f"{path}: folder not found")
    series, not_scans = dicom.scan_series(path)
    if uid is not None:
        if uid not in series:
            raise DataError(f"{path.name}: no series {uid} in this folder")
        return series[uid]
    if not series:
        others = [p for p in path.iterdir() if p.name.lower().endswith((*NIFTI_SUFFIXES, *IMAGE_SUFFIXES))]
        if not_scans:
            raise DataError(f"{path.name}: folder holds no scan, only {len(not_scans)} DICOM object(s) that are not one "
                            "(localizers, segmentations, reports)")
        if others:
            raise DataError(f"{path.name}: a folder is read as one DICOM series, and this one holds {others[0].name}; "
                            "give that file's path in the manifest instead")
        raise DataError(f"{path.name}: folder holds no readable DICOM file")
    if len(series) > 1:
        raise DataError(f"{path.name}: several series in one folder ({len(series)}); give each series its own row")
    return next(iter(series.values()))


def load_scan(path: str | Path) -> Any:
    """Loads one scan as a channel-first MONAI MetaTensor (C, spatial...) with its affine."""
    from monai.transforms import EnsureChannelFirst, LoadImage

    # a runtime reader is used alone: MONAI would otherwise retry every default reader on failure
    img = LoadImage(reader=ScanReader(), image_only=True)(str(path), reader=ScanReader())
    return EnsureChannelFirst()(img)
