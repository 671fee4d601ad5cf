"""Transform chains and caching: epoch 2 never decodes a scan again; a bad case names itself."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medtl.config import DataConfig
from medtl.data import dicom
from medtl.data.datasets import GuardedDataset, case_items, make_dataset
from medtl.data.manifest import read_manifest
from medtl.data.synthetic import make_classification_set, make_segmentation_set
from medtl.data.transforms import build_transforms
from medtl.errors import DataError


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_dataset_decodes_each_scan_once(tmp_path, monkeypatch, cache):
    manifest = make_classification_set(tmp_path / "d", n=6, kind="dicom", size=(16, 16, 6))
    m = read_manifest(manifest)
    cfg = DataConfig(spatial_dims=3, image_size=[8, 8, 4], modality="ct", cache=cache, cache_dir=tmp_path / "cache")
    calls = {"n": 0}
    real = dicom.load_series

    def counting(headers):
        calls["n"] += 1
        return real(headers)

    monkeypatch.setattr(dicom, "load_series", counting)
    items = case_items(m.table, ["normal", "lesion"])
    ds = make_dataset(items, build_transforms(cfg, train=True), cfg)
    first = [ds[i]["image"] for i in range(len(ds))]
    second = [ds[i]["image"] for i in range(len(ds))]
    assert calls["n"] == 6
    assert first[0].shape == (1, 8, 8, 4)
    assert all(float(x.min()) >= -0.2 and float(x.max()) <= 1.3 for x in second)
    assert [ds[i]["label"] for i in range(6)] == [it["label"] for it in items]


def test_the_disk_cache_preprocesses_a_scan_again_once_its_file_changes(tmp_path):
    """A scan re-exported under its old name (a corrected film, a re-sliced series) must not train from the
    cache of the file it replaced, in this run or any later one."""
    manifest = make_classification_set(tmp_path / "d", n=2, kind="png", size=(16, 16))
    items = case_items(read_manifest(manifest).table, ["normal", "lesion"])
    cfg = DataConfig(spatial_dims=2, image_size=[16, 16], modality="xray", cache="disk", cache_dir=tmp_path / "cache")
    before = make_dataset(items, build_transforms(cfg, train=False), cfg)[0]["image"]
    path = Path(items[0]["image"])
    pixels = np.asarray(Image.open(path))
    Image.fromarray((255 - pixels).astype(pixels.dtype)).save(path)  # the same name, the negative image
    after = make_dataset(items, build_transforms(cfg, train=False), cfg)[0]["image"]
    assert not torch.allclose(after, before)
    np.testing.assert_allclose(after.numpy(), 1 - before.numpy(), atol=0.02)


def test_channel_repeat_and_segmentation_pair(tmp_path):
    manifest = make_segmentation_set(tmp_path / "s", n=2, size=(16, 16, 8))
    m = read_manifest(manifest)
    cfg = DataConfig(spatial_dims=3, image_size=[16, 16, 8], modality="ct", cache="none")
    t = build_transforms(cfg, train=True, in_channels=3, with_mask=True, patch_size=[8, 8, 8])
    item = t(case_items(m.table, None, with_mask=True)[0])
    if isinstance(item, list):
        item = item[0]
    assert item["image"].shape == (3, 8, 8, 8) and item["mask"].shape == (1, 8, 8, 8)
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


def test_bad_case_raises_data_error_with_case_id(tmp_path):
    manifest = make_classification_set(tmp_path / "d", n=3, kind="png", size=(16, 16))
    table = pd.read_csv(manifest)
    (tmp_path / "d" / table["image"][1]).write_bytes(b"broken")
    m = read_manifest(manifest)
    cfg = DataConfig(cache="none", image_size=[16, 16])
    ds = GuardedDataset(make_dataset(case_items(m.table, ["normal", "lesion"]), build_transforms(cfg, False), cfg))
    assert ds[0]["image"].shape == (1, 16, 16)
    with pytest.raises(DataError, match="case case001"):
        ds[1]
    cfg_mem = DataConfig(cache="memory", image_size=[16, 16])
    with pytest.raises(DataError, match="case case001"):
        make_dataset(case_items(m.table, ["normal", "lesion"]), build_transforms(cfg_mem, False), cfg_mem)


def test_nan_volume_is_refused(tmp_path):
    from medtl.data.synthetic import write_nifti

    arr = np.zeros((8, 8, 4), np.float32)
    arr[1, 1, 1] = np.nan
    write_nifti(tmp_path / "n.nii.gz", arr)
    cfg = DataConfig(spatial_dims=3, image_size=[8, 8, 4], cache="none", modality="ct")
    with pytest.raises(DataError, match="case x: image holds NaN"):
        build_transforms(cfg, False)({"case_id": "x", "image": str(tmp_path / "n.nii.gz")})


def test_films_are_windowed_onto_0_to_1_even_when_almost_all_one_value(tmp_path):
    """A film's 0.5th and 99.5th percentiles map to 0 and 1. Where they are equal (a film almost all one value),
    MONAI passed it on unscaled, 0 to 255 into a network that expects 0 to 1, with a "Divide by zero" warning
    on the scorer's console; its minimum and maximum window it now."""
    import warnings

    from PIL import Image

    rng = np.random.default_rng(0)
    sparse = np.zeros((64, 64), np.uint8)
    sparse[0, :5] = 255
    films = {"sparse.png": sparse, "film.png": rng.integers(0, 256, (64, 64), dtype=np.uint8)}
    chain = build_transforms(DataConfig(image_size=[64, 64], cache="none"), False)
    for name, film in films.items():
        Image.fromarray(film).save(tmp_path / name)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            out = chain({"case_id": "x", "image": str(tmp_path / name)})["image"].numpy()[0]
        assert not [w for w in said if "a_min == a_max" in str(w.message)], name
        lo, hi = np.percentile(film, [0.5, 99.5]) if name == "film.png" else (0.0, 255.0)
        want = np.clip((film.astype(np.float64) - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(out, want.T, atol=1e-5, err_msg=name)


def test_mask_values_that_are_no_class_index_are_the_cases_error_before_training(tmp_path):
    import nibabel as nib

    from medtl.data.check import check_manifest

    manifest = make_segmentation_set(tmp_path / "s", n=3, size=(16, 16, 8))
    table = pd.read_csv(manifest)
    for row, value in ((0, 5.0), (1, 0.5)):
        path = tmp_path / "s" / table["mask"][row]
        img = nib.load(path)
        data = np.asarray(img.dataobj).astype(np.float32)
        data[data > 0] = value
        nib.save(nib.Nifti1Image(data, img.affine), path)
    m = read_manifest(manifest)
    items = case_items(m.table, None, with_mask=True)
    t = build_transforms(DataConfig(spatial_dims=3, image_size=[16, 16, 8], modality="ct", cache="none"), False, with_mask=True)
    with pytest.raises(DataError, match="case seg000: mask holds label 5, but there are 2 classes"):
        t(items[0])  # was torch's "index 5 is out of bounds for dimension 1" inside the loss, mid-training
    with pytest.raises(DataError, match="case seg001: mask holds values that are not class indices .e.g. 0.5."):
        t(items[1])  # was rounded away without a word
    three = DataConfig(spatial_dims=3, image_size=[16, 16, 8], modality="ct", cache="none", classes=["bg", "a", "b", "c", "d", "e"])
    assert int(build_transforms(three, False, with_mask=True)(items[0])["mask"].max()) == 5  # six classes name label 5
    problems = {p.case_id: p.kind for p in check_manifest(m, deep=True)}
    assert problems == {"seg000": "mask labels not class indices", "seg001": "mask labels not class indices"}


def test_a_bad_case_while_caching_with_a_thread_pool_leaves_no_thread_running(tmp_path):
    """CacheDataset's pool left its threads mid-scan: exiting under them aborted Python (exit 134, not 2)."""
    import threading
    import time

    from monai.transforms import Lambda

    def slow_or_bad(item):
        if item["case_id"] == "c0":
            raise DataError("case c0: bad")
        time.sleep(0.05)
        return item

    items = [{"case_id": f"c{i}", "image": "x"} for i in range(80)]  # 64 or more: the cache fills on a pool
    cfg = DataConfig(cache="memory", num_workers=2)
    before = set(threading.enumerate())
    with pytest.raises(DataError, match="case c0"):
        make_dataset(items, Lambda(slow_or_bad), cfg)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def test_a_step_that_fails_on_a_case_is_that_cases_error_naming_the_step_and_its_cause():
    """It read "RuntimeError: applying transform <monai...Orientationd object at 0x7f...>" in the predictions file."""
    from monai.transforms import Lambdad

    from medtl.data.transforms import CaseCompose

    def fails(x):
        try:
            raise ValueError("the inner cause")
        except ValueError as exc:
            raise np.linalg.LinAlgError("SVD did not converge") from exc

    with pytest.raises(DataError, match=r"^case k1: Lambdad failed \(ValueError: the inner cause\)$"):
        CaseCompose([Lambdad("image", fails)])({"case_id": "k1", "image": np.zeros(3)})
    with pytest.raises(MemoryError):
        CaseCompose([Lambdad("image", lambda x: (_ for _ in ()).throw(MemoryError()))])({"case_id": "k1", "image": 0})
