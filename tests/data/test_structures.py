"""RTSTRUCT contours in: a structure set's named structures become a mask on the voxels they enclose, checked
against voxel indices worked out by hand from the DICOM tags, never against medtl's own affine."""

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RTStructureSetStorage, generate_uid

from medtl.data.build import build_manifest
from medtl.data.check import check_manifest
from medtl.data.manifest import read_manifest
from medtl.data.synthetic import _base_dataset, write_ct_series
from medtl.errors import ManifestError

SHAPE = (20, 24, 8)  # columns (i), rows (j), slices (k)
SPACING = (0.8, 0.7, 2.5)  # along a row, along a column, between slices (mm)
ORIGIN = (-100.0, -120.0, 50.0)
AXIAL, SAGITTAL = (1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)


def lps(orientation, c: float, r: float, k: float) -> np.ndarray:
    """Where pixel (column c, row r) of slice k lies, straight from ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing (PS3.3 C.7.6.2.1.1)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.asarray(ORIGIN) + c * SPACING[0] * row + r * SPACING[1] * col + k * SPACING[2] * np.cross(row, col)


def square(orientation, c0: int, c1: int, r0: int, r1: int, k: float) -> list[float]:
    """A closed planar contour around pixels c0..c1, r0..r1 of slice k, half a pixel outside their centres."""
    corners = [(c0 - 0.5, r0 - 0.5), (c1 + 0.5, r0 - 0.5), (c1 + 0.5, r1 + 0.5), (c0 - 0.5, r1 + 0.5)]
    return [float(v) for c, r in corners for v in lps(orientation, c, r, k)]


def sources_by_position(folder) -> list:
    """The series' files ordered by hand along the slice normal of an axial series (z of ImagePositionPatient)."""
    files = [pydicom.dcmread(p) for p in folder.iterdir() if p.name != "RS.dcm"]
    return sorted(files, key=lambda ds: float(ds.ImagePositionPatient[2]))


def write_structure_set(path, series_uid: str, rois: dict[str, list[list[float]]], patient_tag: str = "ANON",
                        refer: str = "series", kind: str = "CLOSED_PLANAR") -> None:
    """``refer``: how the set names its series: in RTReferencedSeriesSequence (``series``), only through the slice each
    contour lies on (``slices``), or only by Frame of Reference (``frame``), as systems that leave optional tags out."""
    scan = sources_by_position(path.parent)
    ds = _base_dataset(path, RTStructureSetStorage, patient_tag, generate_uid(), generate_uid())
    ds.FrameOfReferenceUID = scan[0].FrameOfReferenceUID
    for pixel_tag in ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                      "PixelRepresentation"):
        delattr(ds, pixel_tag)
    ds.Modality = "RTSTRUCT"
    series, study, frame = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = series_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.FrameOfReferenceUID = ds.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    if refer == "series":
        ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, ds.FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = kind, len(points) // 3
            contour.ContourData = points
            if refer == "slices":
                image = Dataset()
                image.ReferencedSOPClassUID = scan[0].SOPClassUID
                image.ReferencedSOPInstanceUID = scan[round(on_slice(points))].SOPInstanceUID
                contour.ContourImageSequence = Sequence([image])
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)


def on_slice(points: list[float]) -> float:
    """The slice an axial contour lies on, from its z and the series' origin and spacing."""
    return (points[2] - ORIGIN[2]) / SPACING[2]


def patient(root, name: str, orientation=AXIAL, rois=None, seed: int = 0, refer: str = "series",
            kind: str = "CLOSED_PLANAR") -> str:
    """A CT series in ROOT/NAME (slices numbered against their position) with its structure set beside it."""
    volume = np.random.default_rng(seed).normal(-500.0, 50.0, SHAPE).astype(np.float32)
    uid = write_ct_series(root / name, volume, SPACING, ORIGIN, patient_tag=name.upper(), seed=seed,
                          orientation=orientation)
    if rois is not None:
        write_structure_set(root / name / "RS.dcm", uid, rois, patient_tag=name.upper(), refer=refer, kind=kind)
    return uid


@pytest.mark.parametrize("orientation, kind", [(AXIAL, "CLOSED_PLANAR"), (SAGITTAL, "CLOSED_PLANAR"),
                                               (AXIAL, "CLOSEDPLANAR_XOR")], ids=["axial", "sagittal", "xor"])
def test_contours_become_masks_on_the_voxels_they_enclose(tmp_path, caplog, orientation, kind):
    """An outer square with an inner one cuts a ring (exclusive or); a second class drawn inside the first wins
    where they overlap; the mask lies on the image's grid, which the deep check confirms."""
    rois = {"PTV": [square(orientation, 3, 14, 4, 19, 3), square(orientation, 3, 14, 4, 19, 4)],
            "GTVp": [square(orientation, 5, 10, 8, 14, 3), square(orientation, 7, 8, 10, 11, 3)]}
    patient(tmp_path / "scans", "p1", orientation, rois, kind=kind)
    with caplog.at_level(logging.INFO):
        table = build_manifest(tmp_path / "scans", tmp_path / "m.csv", structures=["ptv", "GTV,gtvp"])
    assert list(table["case_id"]) == ["p1"]  # the structure set is no case of its own
    mask = nib.load(tmp_path / table["mask"][0])
    expected = np.zeros(SHAPE, np.uint8)
    expected[3:15, 4:20, 3:5] = 1
    expected[5:11, 8:15, 3] = 2
    expected[7:9, 10:12, 3] = 1  # the hole in the GTV shows the PTV around it
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
    for c, r, k in [(0, 0, 0), (19, 23, 7), (5, 8, 3)]:  # the mask's grid is the scan's, in RAS
        np.testing.assert_allclose(mask.affine @ [c, r, k, 1], [*(lps(orientation, c, r, k) * [-1, -1, 1]), 1], atol=1e-6)
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), ["background", "ptv", "gtv"], 3, deep=True)
    assert problems == []
    logged = caplog.text + (tmp_path / "m.csv").read_text()
    assert "P1" not in logged and "Hospital" not in logged  # the structure set's patient tags stay in it


def test_a_case_without_its_structure_is_said_and_left_without_a_mask(tmp_path, caplog):
    """One structure set names the structure otherwise, another lies between slices, a third series has none: each is
    said with what to do, the others get their masks, and the manifest check lists the cases left without."""
    root = tmp_path / "scans"
    patient(root, "good", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3)]})
    patient(root, "renamed", rois={"Tumour": [square(AXIAL, 5, 10, 8, 14, 3)], "BODY": [square(AXIAL, 0, 19, 0, 23, 3)]},
            seed=1)
    patient(root, "between", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3.5)]}, seed=2)
    patient(root, "bare", seed=3)
    with caplog.at_level(logging.INFO):
        table = build_manifest(root, tmp_path / "m.csv", structures=["GTV"])
    masks = dict(zip(table["case_id"], table["mask"]))
    assert masks["good"] == "m_masks/good.nii.gz" and (tmp_path / masks["good"]).is_file()
    assert all(pd.isna(masks[c]) for c in ("renamed", "between", "bare"))
    assert "case renamed: no mask from its structures: its structure set RS.dcm names no gtv (it names body, tumour)" in caplog.text
    assert "case between: no mask from its structures: a contour does not lie on the slices" in caplog.text
    assert "1 DICOM series have no structure set or segmentation referencing them, so no mask (e.g. case bare)" in caplog.text
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), ["background", "gtv"], 3)
    assert sorted(p.case_id for p in problems) == ["bare", "between", "renamed"]


def test_contours_that_give_no_mask_at_all_or_clash_with_masks_are_refused(tmp_path):
    root = tmp_path / "scans"
    patient(root, "p1")
    with pytest.raises(ManifestError, match="no RTSTRUCT structure set or DICOM-SEG segmentation found"):
        build_manifest(root, tmp_path / "m.csv", structures=["GTV"])
    patient(root, "p2", rois={"Tumour": [square(AXIAL, 5, 10, 8, 14, 3)]}, seed=1)
    with pytest.raises(ManifestError, match="no case got a mask"):
        build_manifest(root, tmp_path / "m.csv", structures=["GTV"])
    with pytest.raises(ManifestError, match="--masks and --structures: give one source of masks"):
        build_manifest(root, tmp_path / "m.csv", masks=tmp_path, structures=["GTV"])
    with pytest.raises(ManifestError, match="structure 'gtv' is named for two classes"):
        build_manifest(root, tmp_path / "m.csv", structures=["GTV", "gtv,GTVp"])
    with pytest.raises(ManifestError, match="inside .*scans, where the next build would read its masks as scans"):
        build_manifest(root, root / "m.csv", structures=["GTV"])
    assert not (tmp_path / "m.csv").exists()


def test_contours_are_not_written_over_files_medtl_did_not_write(tmp_path):
    root = tmp_path / "scans"
    patient(root, "p1", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3)]})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "p1.nii.gz").write_bytes(b"a radiologist's own mask")
    with pytest.raises(Exception, match="holds files medtl did not write"):
        build_manifest(root, tmp_path / "m.csv", structures=["GTV"], structures_out=tmp_path / "theirs")
    assert (tmp_path / "theirs" / "p1.nii.gz").read_bytes() == b"a radiologist's own mask"
    build_manifest(root, tmp_path / "m.csv", structures=["GTV"])
    build_manifest(root, tmp_path / "m.csv", structures=["GTV"])  # its own folder it may fill again


def test_manifest_build_takes_contours_and_says_how_many_cases_got_a_mask(tmp_path):
    from tests.conftest import run_cli

    root = tmp_path / "scans"
    patient(root, "p1", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3)], "PTV": [square(AXIAL, 3, 14, 4, 19, 3)]})
    done = run_cli("manifest", "build", root, "--out", tmp_path / "m.csv", "--structures", "PTV", "--structures", "GTV",
                   "--structures-out", tmp_path / "rt")
    assert done.returncode == 0, done.stderr
    assert "masks from structures 1 (data.classes: [background, ptv, gtv])" in done.stdout
    assert np.bincount(np.asarray(nib.load(tmp_path / "rt" / "p1.nii.gz").dataobj).ravel()).tolist()[1:] == [12 * 16 - 42, 42]
    refused = run_cli("manifest", "build", root, "--out", tmp_path / "m2.csv", "--structures", " , ")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1 and "empty structure name" in refused.stderr


def test_a_segmentation_beside_its_series_becomes_its_mask(tmp_path, caplog):
    """A DICOM-SEG of two overlapping segments, its frames made from the slices sorted by hand (only those holding a
    segment kept), comes back on the voxels it was drawn on, the later class winning."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    patient(tmp_path / "scans", "p1")
    sources = sources_by_position(tmp_path / "scans" / "p1")
    frames = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0], 2), bool)  # slice, row, column, segment
    frames[2:6, 4:20, 3:15, 0] = True  # Liver
    frames[3, 8:15, 5:11, 1] = True  # Tumour, inside it
    described = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=label, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, label in ((1, "Liver"), (2, "Tumour"))]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=frames,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=described,
                              series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="a viewer", manufacturer_model_name="test",
                              software_versions="1", device_serial_number="1")
    assert seg.NumberOfFrames < 2 * SHAPE[2]  # empty frames left out, as viewers write them
    seg.save_as(tmp_path / "scans" / "p1" / "SEG.dcm")
    with caplog.at_level(logging.INFO):
        table = build_manifest(tmp_path / "scans", tmp_path / "m.csv", structures=["liver", "tumor,tumour"])
    expected = np.zeros(SHAPE, np.uint8)
    expected[3:15, 4:20, 2:6] = 1
    expected[5:11, 8:15, 3] = 2
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / table["mask"][0]).dataobj), expected)
    assert check_manifest(read_manifest(tmp_path / "m.csv"), ["background", "liver", "tumour"], 3, deep=True) == []
    assert "P1" not in caplog.text + (tmp_path / "m.csv").read_text()


def test_a_reader_corrected_medtl_segmentation_comes_back_as_a_training_mask(tmp_path):
    """DICOM in, DICOM out, and back: the DICOM-SEG ``score --masks-out`` writes is no training label as it stands,
    and once a reader's viewer saves it anew (corrected) beside its series, it is read onto the voxels it lies on,
    the model's own left out beside it."""
    from medtl.data.dicom import load_series
    from medtl.data.readers import dicom_headers
    from medtl.dicom_seg import write_dicom_seg

    patient(tmp_path / "scans", "p1")
    _, affine = load_series(dicom_headers(tmp_path / "scans" / "p1"))
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:9, 6:12, 2:5] = 1
    ours = tmp_path / "scans" / "p1" / "predicted.dcm"
    write_dicom_seg(str(tmp_path / "scans" / "p1"), labels, affine, ["background", "lesion"], ours, "medtl-model", "3")
    with pytest.raises(ManifestError, match="the only segmentations here are DICOM-SEG that medtl's scoring wrote"):
        build_manifest(tmp_path / "scans", tmp_path / "m.csv", structures=["lesion"])  # its own output is no label
    corrected = pydicom.dcmread(ours)
    corrected.Manufacturer, corrected.SOPInstanceUID = "a viewer", generate_uid()  # saved anew by the reader's viewer
    corrected.file_meta.MediaStorageSOPInstanceUID = corrected.SOPInstanceUID
    corrected.save_as(tmp_path / "scans" / "p1" / "corrected.dcm")
    table = build_manifest(tmp_path / "scans", tmp_path / "m.csv", structures=["lesion"])
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / table["mask"][0]).dataobj), labels)


@pytest.mark.parametrize("refer", ["slices", "frame"])
def test_a_structure_set_that_names_no_series_is_placed_by_its_slices_or_frame_of_reference(tmp_path, caplog, refer):
    """RTReferencedSeriesSequence is optional: a structure set without it goes to the series whose slices its contours
    name, or else to the one series sharing its Frame of Reference; where two share it, it is said and left out."""
    root = tmp_path / "scans"
    patient(root, "p1", rois={"GTV": [square(AXIAL, 5, 10, 8, 14, 3)]}, refer=refer)
    patient(root, "p2", seed=1)
    table = build_manifest(root, tmp_path / "m.csv", structures=["GTV"])
    expected = np.zeros(SHAPE, np.uint8)
    expected[5:11, 8:15, 3] = 1
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / table["mask"][0]).dataobj), expected)
    if refer == "frame":  # a second series in the same frame of reference: which one is meant cannot be told
        p2 = [pydicom.dcmread(p) for p in (root / "p2").iterdir()]
        frame = pydicom.dcmread(root / "p1" / "RS.dcm").FrameOfReferenceUID
        for ds in p2:
            ds.FrameOfReferenceUID = frame
            ds.save_as(ds.filename, enforce_file_format=True)
        with pytest.raises(ManifestError, match="no case got a mask"):
            build_manifest(root, tmp_path / "m2.csv", structures=["GTV"])
        assert "RS.dcm: a structure set that names no series found here, by series, slice or frame of reference" in caplog.text


def test_the_scanline_fill_agrees_with_matplotlibs_point_in_polygon_test():
    """Random polygons, self-crossing ones among them, away from exact ties with pixel centres: the even-odd
    scanline fill medtl uses for speed marks the same pixels as matplotlib's test of each point."""
    from matplotlib.path import Path as Polygon

    from medtl.data.structures import inside_polygon

    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    for _ in range(100):
        polygon = rng.uniform(0, 60, (rng.integers(3, 30), 2)) + 0.37
        expected = Polygon(polygon).contains_points(np.c_[ii.ravel(), jj.ravel()]).reshape(64, 64)
        np.testing.assert_array_equal(inside_polygon(polygon, np.array([0, 0]), np.array([64, 64])), expected)
