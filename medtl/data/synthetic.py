"""Small, realistic synthetic scans for tests and for trying medtl: CT DICOM series, NIfTI volumes with
lesion masks, 2D DICOM radiographs and PNGs, plus the manifest describing them. Deterministic from a seed.

The DICOM files carry real-looking patient tags (name, id, birth date) on purpose, so tests can prove
that nothing from them reaches a manifest, a log or MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def _blob(shape: Sequence[int], centre: Sequence[float], radius: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return dist2 <= radius**2


def synthetic_volume(rng: np.random.Generator, shape: Sequence[int], positive: bool,
                     lesion_scale: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """A body-like ellipse of soft tissue (HU ~ 40) in air, with a bright lesion when positive; the lesion's
    radius is ``lesion_scale`` of the smallest side (at least 2 voxels)."""
    shape = tuple(shape)
    body = _blob(shape, [n / 2 for n in shape], min(shape) * 0.4)
    vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
    mask = np.zeros(shape, np.uint8)
    if positive:
        r = max(2.0, min(shape) * lesion_scale)
        centre = [rng.uniform(n * 0.35, n * 0.65) for n in shape]
        lesion = _blob(shape, centre, r) & body
        vol[lesion] += 160.0
        mask[lesion] = 1
    return vol.astype(np.float32), mask


def _base_dataset(path: Path, sop_class: str, patient_tag: str, series_uid: str, study_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"{patient_tag}^Name"
    ds.PatientID = f"{patient_tag}-ID"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = f"{patient_tag}-ACC"[-16:]
    ds.InstitutionName = f"{patient_tag} Hospital"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498." + str(int(series_uid.replace(".", "")[-20:]) % 10**18)
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.PatientSex = "20260101", "120000", "1", "O"
    ds.ReferringPhysicianName = f"{patient_tag}^Referrer"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_ct_series(
    folder: Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    origin: tuple[float, float, float] = (-100.0, -120.0, 50.0),
    patient_tag: str = "ANON",
    seed: int = 0,
    instance_order: str = "reversed",
    skip_slices: Sequence[int] = (),
    series_uid: str | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
) -> str:
    """Writes ``volume`` (i=column, j=row, k=slice, in HU) as an axial CT series in shuffled file names.

    ``instance_order='reversed'`` numbers slices against their position, the trap in MONAI's reader.
    ``orientation`` is ImageOrientationPatient; slice k lies at ``origin + k * spacing[2]`` along its normal.
    Returns the SeriesInstanceUID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = volume.shape[2]
    names = rng.permutation(n)
    slope, intercept = 1.0, -1024.0
    for k in range(n):
        if k in skip_slices:
            continue
        path = folder / f"IM{series_uid[-5:]}{names[k]:04d}"
        ds = _base_dataset(path, CTImageStorage, patient_tag, series_uid, study_uid)
        ds.Modality = "CT"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.ImageOrientationPatient = list(orientation)
        normal = np.cross(orientation[:3], orientation[3:])
        ds.ImagePositionPatient = [float(o + k * spacing[2] * n) for o, n in zip(origin, normal)]
        ds.InstanceNumber = (n - k) if instance_order == "reversed" else int(rng.integers(1, 10 * n))
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((volume[:, :, k].T - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(path, enforce_file_format=True)
    return series_uid


def write_xray_dicom(path: Path, image: np.ndarray, patient_tag: str = "ANON", spacing: float = 0.2,
                     view: str = "PA") -> None:
    """Writes a 2D radiograph (i=column, j=row) as a single-frame DICOM file, a frontal (PA) film unless ``view``
    says otherwise ("" states none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(path, SecondaryCaptureImageStorage, patient_tag, generate_uid(), generate_uid())
    ds.Modality = "DX"
    ds.Rows, ds.Columns = image.shape[1], image.shape[0]
    ds.ImagerPixelSpacing = [spacing, spacing]
    if view:
        ds.ViewPosition = view
    ds.PixelRepresentation = 0
    ds.PixelData = np.clip(image.T, 0, 65535).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def make_classification_set(
    root: Path,
    n: int = 24,
    kind: str = "png",
    size: Sequence[int] = (32, 32),
    seed: int = 0,
    positive_fraction: float = 0.4,
    subgroup: bool = True,
    split: bool = False,
    lesion_scale: float = 0.12,
) -> Path:
    """Writes n labelled scans ('png', 'nifti' or 'dicom') and ``manifest.csv``; returns the manifest path.

    Positive cases hold a bright lesion, so a small network can learn the task in a few steps; a larger
    ``lesion_scale`` makes the label visible at a glance (tests that must see learning use it).
    ``split=True`` writes a split column (one patient per case) in which every (label, site) group with
    at least five cases reaches train, validation and test, so every split holds both classes.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    labels = (rng.random(n) < positive_fraction).astype(int)
    labels[:2] = [0, 1]
    for i, label in enumerate(labels):
        vol, _ = synthetic_volume(rng, size, bool(label), lesion_scale)
        case = f"case{i:03d}"
        if kind == "png":
            img = np.clip((vol + 1000.0) / 1300.0 * 255.0, 0, 255).astype(np.uint8)
            rel = f"images/{case}.png"
            (root / "images").mkdir(exist_ok=True)
            Image.fromarray(img.T).save(root / rel)
        elif kind == "nifti":
            rel = f"images/{case}.nii.gz"
            write_nifti(root / rel, vol, np.diag([1.5, 1.5, 2.0, 1.0]))
        elif kind == "dicom":
            rel = f"images/{case}"
            if len(size) == 2:
                rel += ".dcm"
                write_xray_dicom(root / rel, vol + 1024.0, patient_tag=f"PHISENTINEL{i}")
            else:
                write_ct_series(root / rel, vol, patient_tag=f"PHISENTINEL{i}", seed=i)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        row = {"case_id": case, "patient_id": f"p{i // 2:03d}", "image": rel, "label": ["normal", "lesion"][label]}
        if subgroup:
            row["site"] = "A" if i % 3 else "B"
        rows.append(row)
    table = pd.DataFrame(rows)
    if split:
        table = table.assign(patient_id=[f"p{i:03d}" for i in range(n)], split=_stratified_splits(table))
    manifest = root / "manifest.csv"
    table.to_csv(manifest, index=False)
    return manifest


def _stratified_splits(table: pd.DataFrame) -> list[str]:
    """Within each (label, site) group in case order: every fifth case test, the next validation, the rest train."""
    keys = ["label", "site"] if "site" in table else ["label"]
    position = table.groupby(keys).cumcount().to_numpy()
    return ["test" if k % 5 == 0 else "val" if k % 5 == 1 else "train" for k in position]


def make_segmentation_set(root: Path, n: int = 8, size: Sequence[int] = (32, 32, 16), seed: int = 0,
                          lesion_scale: float = 0.12, kind: str = "nifti") -> Path:
    """Writes images with lesion masks (every case has a lesion) and ``manifest.csv``: NIfTI, or for 2D
    ``kind="png"`` 8-bit PNG films with PNG masks named ``<case>_mask.png`` beside them."""
    rng = np.random.default_rng(seed)
    rows = []
    affine = np.diag([1.2, 1.2, 2.0, 1.0])
    if len(size) == 2:
        affine = np.diag([1.2, 1.2, 1.0, 1.0])
    for i in range(n):
        vol, mask = synthetic_volume(rng, size, True, lesion_scale)
        case = f"seg{i:03d}"
        if kind == "png":
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip((vol + 1000.0) / 1300.0 * 255.0, 0, 255).astype(np.uint8).T).save(root / f"images/{case}.png")
            Image.fromarray((mask * 255).astype(np.uint8).T).save(root / f"images/{case}_mask.png")
            rows.append({"case_id": case, "image": f"images/{case}.png", "mask": f"images/{case}_mask.png"})
            continue
        write_nifti(root / f"images/{case}.nii.gz", vol, affine)
        write_nifti(root / f"masks/{case}.nii.gz", mask, affine)
        rows.append({"case_id": case, "image": f"images/{case}.nii.gz", "mask": f"masks/{case}.nii.gz"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest

