"""DICOM series order and geometry, real pydicom files, NIfTI orientation."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Orientation
from pydicom.data import get_testdata_file

from medtl.data.readers import load_scan
from medtl.data.synthetic import write_ct_series, write_nifti
from medtl.errors import DataError


def ramp_volume(shape=(6, 5, 4)):
    vol = np.zeros(shape, np.float32)
    for k in range(shape[2]):
        vol[:, :, k] = 100.0 * k
    vol[1, 2, 3] = 777.0
    return vol


@pytest.mark.parametrize("order", ["reversed", "random"])
def test_series_in_shuffled_files_loads_in_slice_order_with_spacing(tmp_path, order):
    vol = ramp_volume()
    write_ct_series(tmp_path / "s", vol, spacing=(0.5, 0.7, 2.0), origin=(10.0, 20.0, 30.0), instance_order=order)
    img = load_scan(tmp_path / "s")
    assert tuple(img.shape) == (1, 6, 5, 4)
    np.testing.assert_allclose(img[0, 0, 0, :].numpy(), [0, 100, 200, 300])  # slope/intercept applied
    affine = img.affine.numpy()
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [0.5, 0.7, 2.0])
    # voxel (1, 2, 3) lies at LPS (10 + 0.5, 20 + 1.4, 30 + 6) = RAS (-10.5, -21.4, 36)
    ras = affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], [-10.5, -21.4, 36.0])
    assert float(img[0, 1, 2, 3]) == 777.0


def test_series_geometry_matches_nibabel_convention_after_orientation(tmp_path):
    vol = ramp_volume()
    write_ct_series(tmp_path / "s", vol, spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0))
    img = Orientation(axcodes="RAS")(load_scan(tmp_path / "s"))
    # RAS voxel -> world must map the 777 voxel to the same world point as before reorientation
    idx = np.argwhere(img[0].numpy() == 777.0)[0]
    world = img.affine.numpy() @ np.r_[idx, 1.0]
    np.testing.assert_allclose(world[:3], [-1.0, -2.0, 6.0])


def test_pydicom_shipped_real_files_load():
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        img = load_scan(path)
        assert img.ndim == 3 and img.shape[0] == 1
        assert torch.isfinite(img).all() and float(img.std()) > 0


def test_nifti_with_non_identity_affine_is_oriented(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[-2.0, 0, 0, 10], [0, 1.5, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])  # LAS
    write_nifti(tmp_path / "x.nii.gz", arr, affine)
    img = Orientation(axcodes="RAS")(load_scan(tmp_path / "x.nii.gz"))
    np.testing.assert_allclose(img.affine.numpy()[:3, :3], np.diag([2.0, 1.5, 3.0]))
    # the first voxel on disk (0,0,0) is at world (10,-5,2); after flipping i it sits at index 3
    np.testing.assert_allclose(float(img[0, 3, 0, 0]), arr[0, 0, 0])
    ref = nib.load(str(tmp_path / "x.nii.gz"))
    assert nib.aff2axcodes(ref.affine) == ("L", "A", "S")


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(DataError, match="junk.dcm"):
        load_scan(bad)
    with pytest.raises(DataError, match="not found"):
        load_scan(tmp_path / "nope.nii.gz")


def test_a_4d_nifti_is_a_case_error_naming_its_volumes_not_a_batch_crash(tmp_path):
    """Echoes or time points arrive as channels; one such case must not take the batch down with it."""
    from medtl.config import DataConfig
    from medtl.data.transforms import build_transforms

    vol = np.random.default_rng(0).normal(size=(12, 12, 6, 2)).astype(np.float32)
    write_nifti(tmp_path / "four.nii.gz", vol, np.eye(4))
    write_nifti(tmp_path / "one.nii.gz", vol[..., 0], np.eye(4))
    chain = build_transforms(DataConfig(spatial_dims=3, image_size=[8, 8, 4], modality="ct"), train=False)
    assert tuple(chain({"case_id": "one", "image": str(tmp_path / "one.nii.gz")})["image"].shape) == (1, 8, 8, 4)
    with pytest.raises(DataError, match=r"case four: image holds 2 volumes .*one case per volume"):
        chain({"case_id": "four", "image": str(tmp_path / "four.nii.gz")})


def test_a_gantry_tilted_series_maps_every_voxel_to_where_its_slice_lies(tmp_path):
    """Tilted CT slices step along the table (z), not along their normal: the affine must carry that shear, or
    every slice but the first is placed millimetres off (a mask's world coordinates with them)."""
    import pydicom

    tilt = np.deg2rad(20)
    orientation = (1, 0, 0, 0, np.cos(tilt), np.sin(tilt))
    vol = ramp_volume((6, 5, 4))
    write_ct_series(tmp_path / "s", vol, spacing=(0.5, 0.7, 2.0), orientation=orientation)
    origin = np.array([-100.0, -120.0, 50.0])
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        k = round(float(np.dot(np.cross(orientation[:3], orientation[3:]), ds.ImagePositionPatient) -
                        np.dot(np.cross(orientation[:3], orientation[3:]), origin)) / 2.0)
        ds.ImagePositionPatient = list(origin + [0, 0, k * 2.0 / np.cos(tilt)])  # the table moves along z
        ds.save_as(f)
    img = load_scan(tmp_path / "s")
    affine = img.affine.numpy()
    for i, j, k in [(0, 0, 0), (5, 4, 3), (1, 2, 3), (3, 0, 2)]:
        assert float(img[0, i, j, k]) == vol[i, j, k]
        lps = origin + [0, 0, k * 2.0 / np.cos(tilt)] + i * 0.5 * np.array(orientation[:3]) + j * 0.7 * np.array(orientation[3:])
        np.testing.assert_allclose(affine @ [i, j, k, 1.0], [-lps[0], -lps[1], lps[2], 1.0], atol=1e-6)


def test_a_series_of_several_volumes_at_the_same_positions_says_so(tmp_path):
    """Multi-echo MR or DWI often share one SeriesInstanceUID across echoes or b-values: that is no single volume."""
    import shutil

    uid = write_ct_series(tmp_path / "echo1", ramp_volume(), seed=1)
    write_ct_series(tmp_path / "echo2", ramp_volume() + 5, seed=2, series_uid=uid)
    (tmp_path / "s").mkdir()
    for echo in ("echo1", "echo2"):
        for f in (tmp_path / echo).iterdir():
            shutil.move(f, tmp_path / "s" / f"{echo}_{f.name}")
    with pytest.raises(DataError, match="2 volumes at the same 4 positions in one series .* export each volume"):
        load_scan(tmp_path / "s")
    twice = next((tmp_path / "s").glob("echo1_*"))
    for f in (tmp_path / "s").glob("echo2_*"):
        f.unlink()
    shutil.copy(twice, tmp_path / "s" / "copy")
    with pytest.raises(DataError, match=r"two slices at the same position \(duplicate slice\)"):
        load_scan(tmp_path / "s")
