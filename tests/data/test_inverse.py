"""World coordinates are the truth: a perfect prediction, put back through the inverse of the preprocessing,
lands on the reference voxels whatever the orientation, spacing, crop or resize of the scan."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from medtl.config import Config
from medtl.data.manifest import read_manifest
from medtl.data.synthetic import synthetic_volume
from medtl.evaluate.run import evaluate_table
from medtl.models.checkpoint import ModelBundle
from medtl.scoring import score


class ThresholdNet(torch.nn.Module):
    """A perfect lesion detector for synthetic CT: the lesion (~200 HU) is the only tissue above 120 HU, and
    the CT window maps 120 HU to 0.56. Logits are steep, so probabilities are 0 or 1 away from edges."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, :1] - 0.56) * 200.0
        return torch.cat([-z, z], 1)


def reorient(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored in another voxel order (nibabel's own orientation algebra)."""
    t = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes)))
    return apply_orientation(data, t), affine @ inv_ornt_aff(t, data.shape)


def rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


def write_case(root, codes: str, spacing=(1.0, 1.0, 2.0), oblique: float = 0.0, shape=(40, 36, 20)):
    vol, mask = synthetic_volume(np.random.default_rng(3), shape, True, lesion_scale=0.3)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    vol, affine_o = reorient(vol, affine, codes)
    mask, _ = reorient(mask, affine, codes)
    affine_o = rotation(oblique) @ affine_o
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, affine_o), str(root / "img.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine_o), str(root / "mask.nii.gz"))
    pd.DataFrame({"case_id": ["c"], "image": ["img.nii.gz"], "mask": ["mask.nii.gz"]}).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def bundle_for(image_size, spacing=None, crop=False) -> ModelBundle:
    cfg = Config.model_validate({"data": {"task": "segmentation", "spatial_dims": 3, "image_size": image_size,
                                          "modality": "ct", "spacing": spacing, "crop_foreground": crop},
                                 "tracking": {"enabled": False}})
    return ModelBundle(ThresholdNet(), cfg, ["background", "lesion"])


# Resizing to the model's grid and back is exact only when the sizes match; where the model grid is coarser
# (resize to 32 x 32 x 16, resampling to a 1.5x coarser data.spacing), boundary voxels of a lesion ~6 voxels
# in radius may flip on the way down and back: the floors are what that loss allows (measured 0.974 and
# 0.899, HD95 1-2 mm), while a mask put back on the wrong voxels scores ~0 (main's LPS and PIR results before this fix).
CASES = {
    "RAS identity": ("RAS", dict(image_size=[40, 36, 20]), 0.0, 1.0),
    "LPS identity": ("LPS", dict(image_size=[40, 36, 20]), 0.0, 1.0),
    "PIR identity": ("PIR", dict(image_size=[40, 36, 20]), 0.0, 1.0),
    "LPS resized": ("LPS", dict(image_size=[32, 32, 16]), 0.0, 0.93),
    "PIR native spacing+crop": ("PIR", dict(image_size=[32, 32, 16], spacing=[1.0, 1.0, 2.0], crop=True), 0.0, 0.93),
    "PIR coarser spacing+crop": ("PIR", dict(image_size=[32, 32, 16], spacing=[1.5, 1.5, 2.5], crop=True), 0.0, 0.88),
    "oblique LPS": ("LPS", dict(image_size=[40, 36, 20]), 20.0, 1.0),
}


@pytest.mark.parametrize("name", CASES)
def test_a_perfect_prediction_scores_dice_one_in_any_orientation(tmp_path, name):
    codes, model, oblique, floor = CASES[name]
    m = write_case(tmp_path, codes, oblique=oblique)
    table = read_manifest(m).table
    ev = evaluate_table(bundle_for(**model), table, tmp_path / "ev")
    assert ev.metrics["dice_mean"] >= floor - 1e-9, ev.metrics["dice_mean"]


def test_scored_masks_keep_the_source_grid_and_overlay_the_reference(tmp_path):
    m = write_case(tmp_path, "PIR")
    table = read_manifest(m).table
    cases = [{"case_id": "c", "image": table["image_path"][0]}]
    score(bundle_for([40, 36, 20]), cases, tmp_path / "p.csv", masks_out=tmp_path / "masks", device="cpu")
    written = nib.load(str(tmp_path / "masks" / "c.nii.gz"))
    ref = nib.load(str(tmp_path / "mask.nii.gz"))
    assert written.shape == ref.shape and np.allclose(written.affine, ref.affine, atol=1e-4)
    assert np.array_equal(np.asarray(written.dataobj) > 0, np.asarray(ref.dataobj) > 0)
    volume = pd.read_csv(tmp_path / "p.csv")["lesion_volume_ml"][0]
    assert volume == pytest.approx((np.asarray(ref.dataobj) > 0).sum() * 2.0 / 1000)  # voxels are 1 x 1 x 2 mm


def test_validation_dice_is_measured_on_the_source_grid_as_evaluation_measures_it(tmp_path):
    """Training's validation goes through the same predictor and inverse as evaluation: on a scan whose
    model grid is coarser than its own (resampled, cropped, resized), the two give the same Dice — one by
    hand on the source voxels, the other through MONAI."""
    from medtl.train.data import PreparedData
    from medtl.train.run import Validation
    from medtl.train.runtime import make_runtime
    from medtl.tasks import Segmentation

    m = write_case(tmp_path, "PIR")
    bundle = bundle_for([32, 32, 16], spacing=[1.5, 1.5, 2.5], crop=True)
    table = read_manifest(m).table.assign(split="val")
    prepared = PreparedData(None, table, bundle.classes, [])  # type: ignore[arg-type]
    validation = Validation(bundle.spec, prepared, Segmentation(), bundle.model, make_runtime(bundle.config.train, 3))
    first, again = validation()["val_dice"], validation()["val_dice"]  # the second from the cases kept in memory
    ev = evaluate_table(bundle, table, tmp_path / "ev")
    assert first == pytest.approx(ev.metrics["dice_mean"], abs=1e-6) and again == first  # MONAI sums in float32
    assert 0.88 <= first < 0.999  # not trivially exact: the model grid is coarser than the scan's
