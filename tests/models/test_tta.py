"""Test-time mirroring (``evaluate.tta``): each prediction is the mean of the model's answer for the scan and, taken
back, for its left-right mirror, worked out here by hand around models that are not mirror-symmetric."""

import nibabel as nib
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from medtl.config import Config
from medtl.data.synthetic import synthetic_volume
from medtl.models.checkpoint import InferenceSpec, ModelBundle
from medtl.models.predictor import Predictor

SHAPE = (24, 20, 12)


class LeaningSegmenter(torch.nn.Module):
    """ThresholdNet's lesion detector with a lean towards the first voxels along the first axis: its answer for a
    mirrored scan, mirrored back, differs from its answer for the scan."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(3.0, -3.0, x.shape[2]).view(1, 1, -1, 1, 1)
        z = (x[:, :1] - 0.56) * 20.0 + ramp
        return torch.cat([-z, z], 1)


class LeaningClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(int(np.prod(SHAPE)), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def config(task: str, tta: bool = True) -> Config:
    return Config.model_validate({"data": {"task": task, "spatial_dims": 3, "image_size": list(SHAPE),
                                           "modality": "ct"}, "evaluate": {"tta": tta}, "tracking": {"enabled": False}})


@pytest.fixture()
def scans(tmp_path):
    items = []
    for n in range(3):
        vol, _ = synthetic_volume(np.random.default_rng(n), SHAPE, True, lesion_scale=0.3)
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / f"c{n}.nii.gz"))
        items.append({"case_id": f"c{n}", "image": str(tmp_path / f"c{n}.nii.gz")})
    return items


def test_a_segmentation_averages_the_scan_and_its_mirror_taken_back(scans):
    model = LeaningSegmenter()
    predictor = Predictor.of(ModelBundle(model, config("segmentation"), ["background", "lesion"]), torch.device("cpu"))
    plain = Predictor.of(ModelBundle(model, config("segmentation", tta=False), ["background", "lesion"]),
                         torch.device("cpu"))
    for rec, again, item in zip(predictor.predict(scans), plain.predict(scans), scans):
        x = predictor.transform(dict(item))["image"].as_tensor()[None]  # RAS, model grid = the scan's own
        probs = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(2)), 1).flip(2)) / 2
        by_hand = probs.argmax(1)[0].numpy()
        assert np.array_equal(rec["mask"].labels, by_hand)
        assert not np.array_equal(again["mask"].labels, by_hand)  # the mirror changed the answer: the test can fail


def test_a_classifier_averages_the_logits_of_the_scan_and_its_mirror(scans):
    model = LeaningClassifier().eval()
    predictor = Predictor.of(ModelBundle(model, config("classification"), ["no", "yes"]), torch.device("cpu"))
    for rec, item in zip(predictor.predict(scans), scans):
        x = torch.as_tensor(predictor.transform(dict(item))["image"])[None]
        with torch.no_grad():
            by_hand = ((model(x) + model(x.flip(2))) / 2)[0].numpy()
            plain = model(x)[0].numpy()
        assert np.allclose(rec["logits"], by_hand, atol=1e-5) and not np.allclose(rec["logits"], plain, atol=1e-3)


def test_mirroring_is_kept_with_the_model_and_refused_where_training_never_mirrors():
    spec = InferenceSpec.from_config(config("segmentation"))
    assert InferenceSpec.from_dict(spec.to_dict()).tta
    older = {k: v for k, v in spec.to_dict().items() if k != "tta"}  # a model saved before the setting existed
    assert not InferenceSpec.from_dict(older).tta
    for data, why in (({"modality": "xray"}, "training flips no chest film"),
                      ({"modality": "ct", "augment": False}, "data.augment is false, so training flips nothing")):
        with pytest.raises(ValidationError, match=f"evaluate.tta averages each scan with its left-right mirror.*{why}"):
            Config.model_validate({"data": data, "evaluate": {"tta": True}})
