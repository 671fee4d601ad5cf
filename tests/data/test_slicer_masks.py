"""3D Slicer segmentations: cropped to their segments' box and numbered per file, placed on their scan's grid and
numbered by segment name by ``manifest build``."""

import logging

import nibabel as nib
import numpy as np
import pandas as pd

from medtl.data.build import build_manifest
from medtl.data.check import check_manifest
from medtl.data.manifest import read_manifest
from tests.data.test_itk_formats import anatomy, write_nrrd


def two_segments(mask: np.ndarray) -> np.ndarray:
    """The lesion as two classes: 1 (tumour) on its half nearer the first voxel along the first axis, 2 (oedema)."""
    labels = np.zeros(mask.shape, dtype=np.int16)
    xs = np.nonzero(mask)[0]
    middle = int(np.median(xs))
    labels[(mask > 0) & (np.arange(mask.shape[0])[:, None, None] < middle)] = 1
    labels[(mask > 0) & (np.arange(mask.shape[0])[:, None, None] >= middle)] = 2
    return labels


def segments(*names_and_values: tuple[str, int]) -> dict[str, str]:
    fields = {}
    for n, (name, value) in enumerate(names_and_values):
        fields |= {f"Segment{n}_Name": name, f"Segment{n}_LabelValue": str(value), f"Segment{n}_Layer": "0"}
    return fields


def cropped(labels: np.ndarray, affine: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``labels``' voxels (and a margin), with the affine of its first voxel, as Slicer saves it."""
    nz = np.nonzero(labels)
    lo = [max(int(i.min()) - margin, 0) for i in nz]
    hi = [min(int(i.max()) + margin + 1, n) for i, n in zip(nz, labels.shape)]
    box = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    moved = affine.copy()
    moved[:3, 3] = (affine @ np.array([*lo, 1.0]))[:3]
    return box, moved


def test_slicer_segmentations_are_placed_on_their_scan_and_numbered_by_name(tmp_path, caplog):
    vol, mask, affine = anatomy("LPS", oblique=20.0)
    labels = two_segments(mask)
    scans = tmp_path / "scans"
    scans.mkdir()
    for n, case in enumerate("abcd"):
        write_nrrd(scans / f"{case}.nrrd", vol + n, affine)  # four scans, not one scan four times
    box, box_affine = cropped(labels, affine)
    write_nrrd(scans / "a.seg.nrrd", box, box_affine, fields=segments(("tumour", 1), ("oedema", 2)))
    swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, 0))  # segments made in the other order
    write_nrrd(scans / "b.seg.nrrd", swapped, affine, fields=segments(("oedema", 1), ("tumour", 2)))
    write_nrrd(scans / "c.seg.nrrd", labels, affine, fields=segments(("tumour", 1), ("oedema", 2)))
    coarser = affine @ np.diag([2.0, 2.0, 1.0, 1.0])  # drawn on a resampled copy of the scan
    write_nrrd(scans / "d.seg.nrrd", labels[::2, ::2], coarser, fields=segments(("tumour", 1), ("oedema", 2)))
    with caplog.at_level(logging.INFO, logger="medtl"):
        table = build_manifest(scans, tmp_path / "m.csv")
    masks = dict(zip(table["case_id"], table["mask"]))
    assert masks["a"] == "m_masks/a.nii.gz" and masks["b"] == "m_masks/b.nii.gz"
    assert masks["c"] == "scans/c.seg.nrrd" and masks["d"] == "scans/d.seg.nrrd"  # as saved; d cannot be placed
    for case in "ab":
        placed = nib.load(str(tmp_path / "m_masks" / f"{case}.nii.gz"))
        assert np.array_equal(np.asarray(placed.dataobj), labels) and np.allclose(placed.affine, affine, atol=1e-6)
    assert "labels 1 tumour, 2 oedema; set data.classes: [background, tumour, oedema]" in caplog.text
    assert "1 3D Slicer segmentation(s) lie on another grid than their scan (d)" in caplog.text
    problems = check_manifest(read_manifest(tmp_path / "m.csv"), classes=["background", "tumour", "oedema"], deep=True)
    assert [(p.case_id, p.kind) for p in problems] == [("d", "mask shape mismatch")]
    by_hand = pd.read_csv(tmp_path / "m.csv", dtype=str)  # a manifest written without the build
    by_hand.loc[by_hand["case_id"] == "a", "mask"] = "scans/a.seg.nrrd"
    by_hand.to_csv(tmp_path / "hand.csv", index=False)
    problems = check_manifest(read_manifest(tmp_path / "hand.csv"), classes=["background", "tumour", "oedema"])
    assert "a 3D Slicer segmentation is saved cropped to its segments, and `manifest build` places it" in next(
        p.detail for p in problems if p.case_id == "a")


def test_a_slicer_segmentation_with_no_voxels_is_an_empty_mask_on_its_scan(tmp_path):
    """Slicer saves a segmentation whose segments are all empty as a single voxel, whose geometry means nothing."""
    vol, _, affine = anatomy()
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nrrd(scans / "a.nrrd", vol, affine)
    write_nrrd(scans / "a.seg.nrrd", np.zeros((1, 1, 1)), np.eye(4) * 7, fields=segments(("tumour", 1)))
    table = build_manifest(scans, tmp_path / "m.csv")
    placed = nib.load(str(tmp_path / table["mask"][0]))
    assert placed.shape == vol.shape and not np.asarray(placed.dataobj).any()


def test_a_broken_slicer_segmentation_is_said_and_the_build_goes_on(tmp_path, caplog):
    vol, mask, affine = anatomy()
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nrrd(scans / "a.nrrd", vol, affine)
    write_nrrd(scans / "b.nrrd", vol + 1, affine)
    (scans / "a.seg.nrrd").write_bytes(b"NRRD0004\nnot a header at all\n")
    write_nrrd(scans / "b.seg.nrrd", mask, affine, fields={"Segment0_Name": "x", "Segment0_LabelValue": "one"})
    with caplog.at_level(logging.WARNING, logger="medtl"):
        table = build_manifest(scans, tmp_path / "m.csv")
    assert list(table["mask"]) == ["scans/a.seg.nrrd", "scans/b.seg.nrrd"]  # left for manifest check to name
    assert "case a: a.seg.nrrd: unreadable NRRD header" in caplog.text
    assert "case b: b.seg.nrrd: segment 0's label value 'one' is not a number" in caplog.text


def test_a_slicer_segmentation_named_like_no_scan_is_no_case(tmp_path, caplog):
    """Slicer saves a scene as CT.nrrd beside Segmentation.seg.nrrd: the segmentation is no scan to train on or score,
    and the line says how to pair it."""
    from medtl.scoring import input_cases

    vol, mask, affine = anatomy()
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nrrd(scans / "CT.nrrd", vol, affine)
    write_nrrd(scans / "Segmentation.seg.nrrd", mask, affine, fields=segments(("tumour", 1)))
    with caplog.at_level(logging.WARNING, logger="medtl"):
        table = build_manifest(scans, tmp_path / "m.csv")
    assert list(table["case_id"]) == ["CT"] and "mask" not in table
    assert "1 3D Slicer segmentation(s) named like no scan, left out (Segmentation.seg.nrrd)" in caplog.text
    assert [c["case_id"] for c in input_cases(None, scans)] == ["CT"]
