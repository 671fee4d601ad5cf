"""DICOM in, DICOM out: a scored DICOM study goes back to PACS as a DICOM Structured Report, the imaging
measurement report of TID 1500 (highdicom), which viewers such as OHIF list beside the images, with the model named
as the observing device. A classifier's holds, for the scans it references, the probability of each class, the
model's call and, where the model measures it, whether the scan looks unlike the training scans. A segmentation
model's holds each class's volume, measured on the segment of the DICOM-SEG it references, so a tumour board or a
registry reads the number and a viewer shows the region it was measured on.

Like the DICOM-SEG of ``medtl.dicom_seg``, the report carries the patient and study modules, because the standard
requires them for the object to file with its study. It is written only to the folder the user names
(``score --reports-out``) and never reaches MLflow or a log. medtl's classes are the user's own words, so they are
coded in a private scheme (99MEDTL), as the standard provides for concepts no public terminology names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtl import __version__
from medtl.data.structures import OWN
from medtl.dicom_seg import source_datasets, value_text
from medtl.files import write_atomically

SCHEME = "99MEDTL"


def _concept(value: str, meaning: str) -> Any:
    """A concept of the private scheme; a backslash, DICOM's separator of values, is written as a slash."""
    import highdicom as hd

    return hd.sr.CodedConcept(value=value_text(value), scheme_designator=SCHEME, meaning=value_text(meaning))


def write_dicom_sr(image_ref: str, row: dict[str, Any], classes: list[str], out: Path, algorithm: str,
                   version: str) -> Path:
    """Writes the report of one scored case (``row``: a predictions row, with ``prob_CLASS`` for each class and
    ``predicted``) on the scan at ``image_ref``; returns its path."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = source_datasets(image_ref, pixels=False)
    algorithm, version = value_text(algorithm), value_text(version)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm, version=version)
    measurements = [hd.sr.Measurement(name=_concept(f"p-{c}", f"Probability of {c}"), value=float(row[f"prob_{c}"]),
                                      unit=codes.UCUM.NoUnits, algorithm_id=algorithm_id) for c in classes]
    evaluations = [hd.sr.QualitativeEvaluation(_concept("call", "Model call"),
                                               _concept(f"class-{row['predicted']}", str(row["predicted"])))]
    if row.get("unlike_training") in ("yes", "no"):
        evaluations.append(hd.sr.QualitativeEvaluation(_concept("unlike-training", "Unlike the training scans"),
                                                       codes.SCT.Yes if row["unlike_training"] == "yes" else codes.SCT.No))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="medtl classification"),
        algorithm_id=algorithm_id, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources])
    return _write_report(sources, [group], algorithm, out)


def write_segmentation_sr(image_ref: str, seg_path: Path, sizes: dict[str, float], out: Path, algorithm: str,
                          version: str, planar: bool = False) -> Path:
    """Writes the report of one segmented case: for each class of ``sizes`` (by class name), in the order of the
    DICOM-SEG's segments at ``seg_path``, a measurement group that references its segment: volumetric (TID 1411) with
    the volume in mL for a scan, planar (TID 1410) with the area in mm² for a film."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = source_datasets(image_ref, pixels=False)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    algorithm, version = value_text(algorithm), value_text(version)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm, version=version)
    quantity, unit = ((codes.SCT.Area, hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")) if planar
                      else (codes.SCT.Volume, hd.sr.CodedConcept("mL", "UCUM", "milliliter")))
    groups = []
    for number, (name, size) in enumerate(sizes.items(), start=1):
        common = {"tracking_identifier": hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=value_text(f"medtl {name}")),
                  "finding_type": _concept(f"class-{name}", name), "algorithm_id": algorithm_id,
                  "measurements": [hd.sr.Measurement(name=quantity, value=size, unit=unit, algorithm_id=algorithm_id)]}
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=number), **common)
            if planar else hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number), **common))
    return _write_report(sources, groups, algorithm, out, evidence=[seg])


def _write_report(sources: list[Any], groups: list[Any], algorithm: str, out: Path, evidence: list[Any] = ()) -> Path:
    """The TID 1500 report of ``groups`` on ``sources``, observed by the model as a device, written whole or not."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=algorithm))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
                                     imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=[*sources, *evidence], content=report, series_instance_uid=hd.UID(),
                                 series_number=901, sop_instance_uid=hd.UID(), instance_number=1, manufacturer=OWN,
                                 is_complete=True, software_versions=__version__)
    write_atomically(out, lambda fh: sr.save_as(fh, enforce_file_format=True), binary=True)  # a crash leaves none
    return out
