"""The temperature fitted under simulated drift (Tomani et al. 2021): its noise ladder, its fit, and the run that
stores it."""

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score

from medtl.config import Config
from medtl.drift_calibration import CHANCE_AUROC, LEVELS, SIGMA_GRID, GaussianNoise, drift_temperature
from medtl.models.checkpoint import ModelBundle
from medtl.models.predictor import Predictor


class CentreContrast(torch.nn.Module):
    """Logit of 'lesion': how much brighter the centre of a film is than the whole, times a gain, saturating at 4 as a
    network's do."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        centre = x[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean((1, 2, 3))
        z = 4 * torch.tanh(self.gain * (centre - x.mean((1, 2, 3))))
        return torch.stack([-z / 2, z / 2], 1)


def films(folder, n: int = 60):
    """Textured films, the lesions' with a faintly brighter centre: told apart well, but not perfectly."""
    rng, items = np.random.default_rng(0), []
    folder.mkdir()
    for i in range(n):
        label = i % 2
        film = rng.normal(120, 30, (16, 16))
        film[4:12, 4:12] += label * 30 + rng.normal(0, 12)
        Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        items.append({"case_id": str(i), "image": str(folder / f"{i}.png"), "label": label})
    return items


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(-log_softmax(logits / t, axis=1)[np.arange(len(y)), y].mean())


def test_the_temperature_is_fitted_on_every_noise_level_up_to_where_the_model_is_at_chance(tmp_path):
    items = films(tmp_path / "films")
    cfg = Config.model_validate({"data": {"image_size": [16, 16], "classes": ["normal", "lesion"]},
                                 "tracking": {"enabled": False}})
    predictor = Predictor.of(ModelBundle(CentreContrast(40.0), cfg, ["normal", "lesion"]), torch.device("cpu"))
    predictor.memo = {}  # each film read once, as the run's predictor does; the noise comes after
    drift = drift_temperature(predictor, items, seed=3)
    assert drift is not None and drift.cases == len(items) * (LEVELS + 1)
    y = np.array([it["label"] for it in items])

    def logits(perturb):
        predictor.perturb = perturb
        out = np.stack([r["logits"] for r in predictor.predict(items)])
        predictor.perturb = None
        return out

    top = SIGMA_GRID.index(drift.strongest_noise)
    auroc = [roc_auc_score(y, np.diff(logits(GaussianNoise(s, 3)), axis=1)[:, 0]) for s in SIGMA_GRID[:top + 1]]
    assert auroc[top] <= CHANCE_AUROC and all(a > CHANCE_AUROC for a in auroc[:top])  # the weakest noise at chance
    pooled = np.concatenate([logits(None)] + [logits(GaussianNoise(drift.strongest_noise * k / LEVELS, 3 + k))
                                              for k in range(1, LEVELS + 1)])
    labels = np.tile(y, LEVELS + 1)
    t = drift.temperature
    assert nll(pooled, labels, t) <= min(nll(pooled, labels, t * 1.02), nll(pooled, labels, t / 1.02))  # its minimum
    clean = logits(None)
    from scipy.optimize import minimize_scalar

    clean_t = float(np.exp(minimize_scalar(lambda s: nll(clean, y, np.exp(s)), bounds=(-3, 3), method="bounded").x))
    assert t > 1.5 * clean_t  # noisy copies are told apart less well: the temperature is softer than the clean one's
    assert drift_temperature(predictor, items, seed=3) == drift  # the same noise for the same seed


def test_a_model_at_chance_on_clean_validation_gets_no_drift_temperature(tmp_path):
    items = films(tmp_path / "films")
    cfg = Config.model_validate({"data": {"image_size": [16, 16]}, "tracking": {"enabled": False}})
    predictor = Predictor.of(ModelBundle(CentreContrast(0.0), cfg, ["normal", "lesion"]), torch.device("cpu"))
    assert drift_temperature(predictor, items) is None


def test_a_run_with_drift_calibration_applies_and_stores_the_drift_temperature(tmp_path):
    from medtl.config import load_config
    from medtl.data.synthetic import make_classification_set
    from medtl.models.checkpoint import load_bundle
    from medtl.steps import fit_model

    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32), split=True)
    cfg = load_config(None, [f"data.manifest={m}", "data.image_size=32", "data.classes=[normal,lesion]",
                             "transfer.strategy=feature_extraction", "transfer.head=logistic", "train.epochs=1",
                             f"train.out_dir={tmp_path / 'runs'}", "tracking.enabled=false",
                             "evaluate.drift_calibration=true", "evaluate.typicality=false"])
    result = fit_model(cfg)
    bundle = load_bundle(result.model_path)
    stored = bundle.extra["drift_calibration"]
    assert bundle.temperature == stored["temperature"] and stored["strongest_noise"] in SIGMA_GRID
    assert pd.read_csv(m)["split"].eq("val").sum() > 0
    from medtl.drift_calibration import card_note

    assert f"Its temperature ({bundle.temperature:.3f}) was fitted on the validation cases clean and under Gaussian" in (
        card_note(stored)[0])
