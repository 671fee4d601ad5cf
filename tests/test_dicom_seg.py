"""DICOM in, DICOM out: a series whose slice normal points the other way is segmented on its own voxels,
and the DICOM-SEG written back references each source instance with that slice's pixels."""

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from medtl.data.readers import load_scan
from medtl.data.synthetic import synthetic_volume, write_ct_series
from medtl.evaluate.run import evaluate_table
from medtl.data.manifest import read_manifest
from medtl.errors import MedtlError
from medtl.models.checkpoint import ModelBundle
from medtl.scoring import score
from tests.data.test_inverse import bundle_for

FLIPPED = (1, 0, 0, 0, -1, 0)  # columns run posterior to anterior: the slice normal points to the feet


@pytest.fixture()
def flipped_series(tmp_path):
    vol, mask = synthetic_volume(np.random.default_rng(5), (32, 28, 12), True, lesion_scale=0.3)
    uid = write_ct_series(tmp_path / "series", vol, orientation=FLIPPED, patient_tag="PACSPATIENT", seed=4)
    grid = load_scan(tmp_path / "series")
    nib.save(nib.Nifti1Image(mask, np.asarray(grid.affine)), str(tmp_path / "ref.nii.gz"))
    pd.DataFrame({"case_id": ["ct"], "image": ["series"], "mask": ["ref.nii.gz"]}).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path, mask, uid


def test_a_perfect_prediction_on_a_flipped_series_is_dice_one(flipped_series):
    root, _, _ = flipped_series
    ev = evaluate_table(bundle_for([32, 28, 12]), read_manifest(root / "m.csv").table, root / "ev")
    assert ev.metrics["dice_mean"] == pytest.approx(1.0)


def test_dicom_seg_references_the_source_series_frame_by_frame(flipped_series):
    import highdicom as hd

    root, mask, uid = flipped_series
    score(bundle_for([32, 28, 12]), [{"case_id": "ct", "image": str(root / "series")}], root / "p.csv",
          masks_out=root / "out", device="cpu")
    assert np.array_equal(np.asarray(nib.load(str(root / "out" / "ct.nii.gz")).dataobj), mask)
    seg = hd.seg.segread(root / "out" / "ct.seg.dcm")
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in (root / "series").iterdir())}
    first = next(iter(sources.values()))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == first.PatientID
    normal = np.cross(FLIPPED[:3], FLIPPED[3:])
    origin_k = {u: float(np.dot(normal, ds.ImagePositionPatient)) for u, ds in sources.items()}
    order = sorted(origin_k, key=origin_k.get)  # slice k of the source grid = k-th along the normal
    pixels = seg.pixel_array
    assert pixels.shape[0] == len(sources)
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = order.index(ref)
        assert np.array_equal(pixels[f] > 0, mask[:, :, k].T > 0), f


def test_dicom_seg_of_an_enhanced_multiframe_source_references_each_frame_at_its_position(flipped_series):
    import highdicom as hd

    root, mask, _ = flipped_series
    series = [pydicom.dcmread(p) for p in sorted((root / "series").iterdir())]
    hd.legacy.LegacyConvertedEnhancedCTImage(series, series_instance_uid=hd.UID(), series_number=2,
                                             sop_instance_uid=hd.UID(), instance_number=1).save_as(root / "enh.dcm")
    score(bundle_for([32, 28, 12]), [{"case_id": "ct", "image": str(root / "enh.dcm")}], root / "p.csv",
          masks_out=root / "out", device="cpu")
    source = pydicom.dcmread(root / "enh.dcm")
    normal = np.cross(FLIPPED[:3], FLIPPED[3:])
    along = [float(np.dot(normal, f.PlanePositionSequence[0].ImagePositionPatient))
             for f in source.PerFrameFunctionalGroupsSequence]
    seg = hd.seg.segread(root / "out" / "ct.seg.dcm")
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = seg.pixel_array
    assert pixels.shape[0] == len(along)
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
        k = sorted(along).index(along[number - 1])  # slice k of the source grid = k-th along the normal
        assert np.array_equal(pixels[f] > 0, mask[:, :, k].T > 0), f


class TwoRegionNet(torch.nn.Module):
    """ThresholdNet's lesion, called class 2 on every other plane of the model grid's first axis and class 1 on
    the rest: two classes, each with voxels, wherever the lesion lies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, :1] - 0.56) * 200.0
        half = torch.zeros_like(z)
        half[:, :, ::2] = 100.0
        return torch.cat([-z, z - half, z + half], 1)


def test_a_segmentation_s_dicom_sr_gives_each_class_s_volume_on_its_segment(flipped_series, caplog):
    """``score --reports-out`` for a 3-D segmentation: one TID 1500 report per DICOM case, with one volumetric group
    per class that references that class's segment of the DICOM-SEG written beside it, and the volume counted by
    hand on the written mask; the row gives the same volumes."""
    import highdicom as hd

    from medtl.log import logger

    root, _, _ = flipped_series
    base = bundle_for([32, 28, 12])
    bundle = ModelBundle(TwoRegionNet(), base.config, ["background", "core", "rim"])
    cases = [{"case_id": "ct", "image": str(root / "series")}]
    with pytest.raises(MedtlError, match="references its DICOM-SEG; give --masks-out too"):
        score(bundle, cases, root / "p.csv", device="cpu", reports=root / "sr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger=logger.name):
            score(bundle, cases, root / "p.csv", masks_out=root / "out", device="cpu", reports=root / "sr")
            score(bundle, cases, root / "q.csv", device="cpu")  # scored once without masks, then asked for reports
            score(bundle, cases, root / "q.csv", masks_out=root / "out2", device="cpu", reports=root / "sr2")
    finally:
        logger.removeHandler(caplog.handler)
    written = nib.load(str(root / "out" / "ct.nii.gz"))
    labels, voxel_ml = np.asarray(written.dataobj), abs(np.linalg.det(written.affine[:3, :3])) / 1000
    by_hand = {"core": (labels == 1).sum() * voxel_ml, "rim": (labels == 2).sum() * voxel_ml}
    assert min(by_hand.values()) > 0
    row = pd.read_csv(root / "p.csv").iloc[0]
    assert {c: row[f"volume_ml_{c}"] for c in by_hand} == pytest.approx(by_hand)
    assert row["lesion_volume_ml"] == pytest.approx(sum(by_hand.values()))
    seg = pydicom.dcmread(root / "out" / "ct.seg.dcm")
    sr = hd.sr.srread(str(root / "sr" / "ct.sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    got = {}
    for group in groups:
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        number, = segment.referenced_segment_numbers
        label = seg.SegmentSequence[number - 1].SegmentLabel
        assert group.finding_type.meaning == label
        volume, = group.get_measurements()
        assert volume.name.meaning == "Volume" and volume.unit.value == "mL"
        got[label] = volume.value
    assert got == pytest.approx(by_hand)
    first = pydicom.dcmread(next((root / "series").iterdir()))
    assert sr.PatientID == first.PatientID and sr.StudyInstanceUID == first.StudyInstanceUID
    assert first.PatientID not in caplog.text and first.PatientID not in (root / "p.csv").read_text()
    assert "1 case(s) have no DICOM-SEG beside their mask" in caplog.text and not list((root / "sr2").glob("*.dcm"))
    assert "sr2: 0 DICOM SR written now, 0 already there" in caplog.text


def test_evaluation_of_several_classes_reports_each_and_sees_a_swap(flipped_series):
    """The model's own output as the reference: every class's Dice 1; the same reference with the two classes
    swapped: every class's Dice 0, where one foreground would still read 1."""
    root, _, _ = flipped_series
    bundle = ModelBundle(TwoRegionNet(), bundle_for([32, 28, 12]).config, ["background", "core", "rim"])
    score(bundle, [{"case_id": "ct", "image": str(root / "series")}], root / "p.csv", masks_out=root / "out",
          device="cpu")
    own = nib.load(str(root / "out" / "ct.nii.gz"))
    labels = np.asarray(own.dataobj)
    nib.save(nib.Nifti1Image(np.where(labels == 1, 2, np.where(labels == 2, 1, 0)).astype(np.uint8), own.affine),
             str(root / "swapped.nii.gz"))
    table = read_manifest(root / "m.csv").table
    same = evaluate_table(bundle, table.assign(mask_path=str(root / "out" / "ct.nii.gz")), root / "ev1")
    assert same.metrics["dice_mean"] == same.metrics["dice_core_mean"] == same.metrics["dice_rim_mean"] == 1.0
    swap = evaluate_table(bundle, table.assign(mask_path=str(root / "swapped.nii.gz")), root / "ev2")
    assert swap.metrics["dice_mean"] == swap.metrics["dice_core_mean"] == swap.metrics["dice_rim_mean"] == 0.0
    report = (root / "ev2" / "report.md").read_text()
    assert "| dice (mean of the classes) | 0.000" in report and "| dice core | 0.000" in report
    assert {"dice_core", "dice_rim", "hd95_mm_rim"} <= set(pd.read_csv(root / "ev2" / "per_case.csv").columns)


def test_a_dicom_seg_filed_beside_its_series_is_no_scan_and_masks_out_stays_outside_the_input(flipped_series):
    import shutil

    from medtl.scoring import input_cases
    from tests.conftest import run_cli

    root, mask, _ = flipped_series
    score(bundle_for([32, 28, 12]), [{"case_id": "ct", "image": str(root / "series")}], root / "p.csv",
          masks_out=root / "out", device="cpu")
    shutil.copy(root / "out" / "ct.seg.dcm", root / "series" / "SEG0001")  # as a PACS returns the study
    studies = root / "studies"
    studies.mkdir()
    shutil.move(root / "series", studies / "series")
    assert [c["case_id"] for c in input_cases(None, studies)] == ["series"]
    assert tuple(load_scan(studies / "series").shape) == (1, *mask.shape)
    res = run_cli("score", "--model", str(root / "none.pt"), "--input", str(studies), "--out", str(root / "q.csv"),
                  "--masks-out", str(studies / "masks"), "--no-track")
    assert res.returncode == 2 and "inside --input" in res.stderr, res.stderr


def test_a_dicom_film_gets_a_dicom_seg_of_its_own_pixels(tmp_path):
    """A radiograph has no position or orientation to place frames by: its one frame maps pixel for pixel."""
    import highdicom as hd

    from medtl.config import Config
    from medtl.data.synthetic import write_xray_dicom
    from medtl.models.checkpoint import ModelBundle
    from tests.data.test_inverse import ThresholdNet

    film = np.full((40, 36), 100.0)
    film[10:20, 5:15] = 3000.0  # (column, row): a bright block the threshold net segments
    write_xray_dicom(tmp_path / "film.dcm", film)
    cfg = Config.model_validate({"data": {"task": "segmentation", "spatial_dims": 2, "image_size": [40, 36],
                                          "modality": "xray"}, "tracking": {"enabled": False}})
    score(ModelBundle(ThresholdNet(), cfg, ["background", "lesion"]), [{"case_id": "f", "image": str(tmp_path / "film.dcm")}],
          tmp_path / "p.csv", masks_out=tmp_path / "out", device="cpu")
    seg = hd.seg.segread(tmp_path / "out" / "f.seg.dcm")
    assert np.array_equal(seg.pixel_array.reshape(36, 40) > 0, film.T > 1000)


def test_a_film_lesion_is_measured_in_square_millimetres_where_the_film_states_its_pixel_size(tmp_path):
    """A 10 x 10 pixel lesion on a film of 0.2 mm pixels is 4 mm²; a PNG, or a DICOM without a spacing tag,
    has pixels of unknown size, so its area is left empty rather than taken as 1 mm per pixel."""
    from PIL import Image

    from medtl.config import Config
    from medtl.data.synthetic import write_xray_dicom
    from medtl.models.checkpoint import ModelBundle
    from medtl.scoring import read_predictions
    from tests.data.test_inverse import ThresholdNet

    film = np.full((40, 36), 100.0)
    film[10:20, 5:15] = 3000.0
    write_xray_dicom(tmp_path / "stated.dcm", film, spacing=0.2)
    ds = pydicom.dcmread(tmp_path / "stated.dcm")
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "unstated.dcm")
    Image.fromarray(np.where(film.T > 1000, 255, 10).astype(np.uint8)).save(tmp_path / "film.png")
    cfg = Config.model_validate({"data": {"task": "segmentation", "spatial_dims": 2, "image_size": [40, 36],
                                          "modality": "xray"}, "tracking": {"enabled": False}})
    cases = [{"case_id": name, "image": str(tmp_path / name)} for name in ("stated.dcm", "unstated.dcm", "film.png")]
    score(ModelBundle(ThresholdNet(), cfg, ["background", "lesion"]), cases, tmp_path / "p.csv", device="cpu")
    sizes = read_predictions(tmp_path / "p.csv").set_index("case_id")
    assert sizes["lesion_pixels"].tolist() == [100, 100, 100]
    assert sizes.loc["stated.dcm", "lesion_area_mm2"] == pytest.approx(100 * 0.2 * 0.2)
    assert sizes[["lesion_area_mm2"]].drop("stated.dcm").isna().all().all()


def test_a_film_segmentation_s_dicom_sr_gives_each_class_s_area_on_its_segment(tmp_path, caplog):
    """On a film the report measures each class's area in mm² (TID 1410), on that class's segment of the DICOM-SEG;
    a film that states no pixel spacing has areas of unknown size and gets no report, in one line."""
    import highdicom as hd

    from medtl.config import Config
    from medtl.data.synthetic import write_xray_dicom
    from medtl.log import logger

    film = np.full((40, 36), 100.0)
    film[10:20, 5:15] = 3000.0
    write_xray_dicom(tmp_path / "stated.dcm", film, spacing=0.2)
    ds = pydicom.dcmread(tmp_path / "stated.dcm")
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "unstated.dcm")
    cfg = Config.model_validate({"data": {"task": "segmentation", "spatial_dims": 2, "image_size": [40, 36],
                                          "modality": "xray"}, "tracking": {"enabled": False}})
    bundle = ModelBundle(TwoRegionNet(), cfg, ["background", "core", "rim"])
    cases = [{"case_id": name, "image": str(tmp_path / f"{name}.dcm")} for name in ("stated", "unstated")]
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger=logger.name):
            score(bundle, cases, tmp_path / "p.csv", masks_out=tmp_path / "out", device="cpu", reports=tmp_path / "sr")
    finally:
        logger.removeHandler(caplog.handler)
    labels = np.asarray(nib.load(str(tmp_path / "out" / "stated.nii.gz")).dataobj)
    by_hand = {"core": (labels == 1).sum() * 0.2 * 0.2, "rim": (labels == 2).sum() * 0.2 * 0.2}
    assert min(by_hand.values()) > 0 and (labels > 0).sum() == 100
    rows = pd.read_csv(tmp_path / "p.csv").set_index("case_id")
    assert {c: rows.loc["stated", f"area_mm2_{c}"] for c in by_hand} == pytest.approx(by_hand)
    assert rows.loc["unstated", ["area_mm2_core", "area_mm2_rim"]].isna().all()
    seg = pydicom.dcmread(tmp_path / "out" / "stated.seg.dcm")
    sr = hd.sr.srread(str(tmp_path / "sr" / "stated.sr.dcm"))
    assert not sr.content.get_volumetric_roi_measurement_groups()
    got = {}
    for group in sr.content.get_planar_roi_measurement_groups():
        segment = group.referenced_segmentation_frame
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        label = seg.SegmentSequence[segment.referenced_segment_numbers[0] - 1].SegmentLabel
        assert group.finding_type.meaning == label
        area, = group.get_measurements()
        assert area.name.meaning == "Area" and area.unit.value == "mm2"
        got[label] = area.value
    assert got == pytest.approx(by_hand)
    assert not (tmp_path / "sr" / "unstated.sr.dcm").exists()
    assert "1 film(s) state no pixel spacing, so their areas are unknown (unstated); no DICOM SR for them" in caplog.text


@pytest.mark.parametrize("ids", [["ok", "../outside"], ["sub/case"], ["Case1", "case1"]])
def test_a_case_id_that_cannot_name_its_mask_file_is_refused_before_anything_is_written(tmp_path, ids):
    """``../outside`` used to write its mask beside the masks folder, ``sub/case`` to fail mid-batch, and
    ``Case1`` next to ``case1`` to be one file once the folder is copied to Windows or macOS."""
    from PIL import Image

    from medtl.config import Config
    from medtl.errors import MedtlError
    from medtl.models.checkpoint import ModelBundle
    from tests.data.test_inverse import ThresholdNet

    Image.fromarray(np.full((36, 40), 200, np.uint8)).save(tmp_path / "film.png")
    cfg = Config.model_validate({"data": {"task": "segmentation", "spatial_dims": 2, "image_size": [40, 36]},
                                 "tracking": {"enabled": False}})
    masks = tmp_path / "run" / "masks"
    with pytest.raises(MedtlError, match="rename"):
        score(ModelBundle(ThresholdNet(), cfg, ["background", "lesion"]),
              [{"case_id": c, "image": str(tmp_path / "film.png")} for c in ids], tmp_path / "run" / "p.csv",
              masks_out=masks, device="cpu")
    assert not masks.exists() and not (tmp_path / "run" / "outside.png").exists()
