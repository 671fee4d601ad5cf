"""DICOM in, DICOM out: a segmentation scored from a DICOM series goes back to PACS as a DICOM
Segmentation object (highdicom) that references the source series and its Frame of Reference.

This is the one output that carries the patient and study modules, because the standard requires them
for the object to file with its study; it is written only to the folder the user names
(``score --masks-out``) and never reaches MLflow or a log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from medtl import __version__
from medtl.data import dicom
from medtl.data.readers import dicom_headers
from medtl.data.structures import OWN


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Type 2 patient/study attributes must be present in the SEG, if empty; some exports omit them."""
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def value_text(value: str) -> str:
    """A name as a DICOM text value (LO): 64 characters at most, and no backslash, which separates values."""
    return value.replace("\\", "/")[:64]


def source_datasets(image_ref: str, pixels: bool = True) -> list[pydicom.Dataset]:
    """The datasets of the scan at ``image_ref``, in the slice order medtl loads it in, each with the Type 2 patient
    and study attributes a derived object copies (empty where the export left them out)."""
    path, uid = dicom.parse_series_ref(image_ref)
    ordered, _ = dicom.order_slices(dicom_headers(path, uid))
    return [_with_type2(pydicom.dcmread(h.path, stop_before_pixels=not pixels)) for h in ordered]


def write_dicom_seg(image_ref: str, labels: np.ndarray, affine: np.ndarray, classes: list[str], out: Path,
                    algorithm: str, version: str) -> Path:
    """Writes ``labels`` (the source grid of ``image_ref``: i column, j row, k slice along the normal, with its
    RAS ``affine``) as a binary DICOM-SEG with one segment per foreground class; returns its path."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = source_datasets(image_ref)
    volume = labels if labels.ndim == 3 else labels[:, :, None]
    frames: np.ndarray | hd.Volume = np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.uint8)  # slice, row, col
    if len(sources) == 1 and "PerFrameFunctionalGroupsSequence" in sources[0]:
        # an enhanced multi-frame source: highdicom places each frame on its source frame by position
        lps = dicom.LPS_TO_RAS @ affine
        frames = hd.Volume(frames, lps[:, [2, 1, 0, 3]], coordinate_system="PATIENT",
                           frame_of_reference_uid=sources[0].FrameOfReferenceUID)
    algorithm_id = hd.AlgorithmIdentificationSequence(name=value_text(algorithm), version=value_text(version),
                                                      family=codes.cid7162.ArtificialIntelligence)
    segments = []
    for number, name in enumerate(classes[1:], start=1):
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=value_text(name),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=OWN, manufacturer_model_name=value_text(algorithm), software_versions=__version__,
        device_serial_number="medtl", omit_empty_frames=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
