"""A temperature for scans that drift from the training data (Tomani et al. 2021, "Post-hoc uncertainty calibration
for domain drift scenarios"): fitted on the validation cases and on copies of them under Gaussian noise of growing
strength, up to the strength at which the model no longer tells the classes apart.

A temperature fitted on clean validation cases makes a model as confident as it is right there; at a site whose
scans differ it is then overconfident (the demo's fine-tuned model, calibrated on validation films, has calibration
slope 0.58 on the separately collected test films). Noise is the perturbation of the paper: it needs no knowledge of
the new site, and its ladder of strengths is set on validation alone. No test case is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medtl.log import logger

LEVELS = 10
"""Noise strengths between none and the strongest, evenly spaced (the clean cases are a level of their own)."""
CHANCE_AUROC = 0.55
"""The strongest noise is the weakest at which the model's validation AUROC falls to this: the classes no longer told
apart."""
SIGMA_GRID = tuple(0.01 * 2 ** (j / 2) for j in range(21))
"""Noise standard deviations tried for the strongest, on intensities windowed to 0..1 (0.01 to 10.24)."""


@dataclass(frozen=True)
class DriftTemperature:
    temperature: float
    strongest_noise: float
    """The noise standard deviation at which validation AUROC fell to ``CHANCE_AUROC``; the ladder's top."""
    cases: int
    """Validation logits the temperature was fitted on: every case at every level."""


class GaussianNoise:
    """Adds N(0, sigma²) to a batch, the same noise for the same batch order (seeded once per level)."""

    def __init__(self, sigma: float, seed: int) -> None:
        self.sigma, self.generator = sigma, torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32) * self.sigma
        return x + noise.to(x.device, x.dtype)


def drift_temperature(predictor: Any, items: list[dict[str, Any]], seed: int = 0) -> DriftTemperature | None:
    """The temperature minimising the NLL of the validation ``items`` (each with its ``label``) at every noise level,
    through ``predictor`` (uncalibrated, caching the preprocessed cases); None where the classes cannot be told
    apart even without noise, or no noise on the grid brings the model to chance."""
    from medtl.evaluate.calibration import fit_temperature

    labels = np.array([it["label"] for it in items])
    clean = perturbed_logits(predictor, items, None)
    if _auroc(labels, clean) <= CHANCE_AUROC:
        return None
    at_chance = (s for s in SIGMA_GRID
                 if _auroc(labels, perturbed_logits(predictor, items, GaussianNoise(s, seed))) <= CHANCE_AUROC)
    strongest = next(at_chance, None)
    if strongest is None:
        logger.warning("drift calibration skipped: no noise up to sigma %.2f brings the model to chance on validation",
                       SIGMA_GRID[-1])
        return None
    ladder = [clean] + [perturbed_logits(predictor, items, GaussianNoise(strongest * k / LEVELS, seed + k))
                        for k in range(1, LEVELS + 1)]
    temperature = fit_temperature(np.concatenate(ladder), np.tile(labels, len(ladder)))
    return DriftTemperature(temperature, strongest, len(labels) * len(ladder))


def perturbed_logits(predictor: Any, items: list[dict[str, Any]],
                     perturb: Callable[[torch.Tensor], torch.Tensor] | None) -> np.ndarray:
    """The uncalibrated logits of every case, each preprocessed batch passed through ``perturb`` first; a case that
    cannot be read is an error naming it (a perturbed copy of a set needs all of it)."""
    predictor.perturb = perturb
    try:
        records = list(predictor.predict(items))
    finally:
        predictor.perturb = None
    bad = next((r for r in records if r["error"] is not None), None)
    if bad is not None:
        from medtl.errors import DataError

        raise DataError(f"case {bad['case_id']}: {bad['error']}")
    return np.stack([r["logits"] for r in records])


def _auroc(labels: np.ndarray, logits: np.ndarray) -> float:
    """Binary AUROC of the positive class, or macro one-vs-rest for several: how well the classes are told apart."""
    from sklearn.metrics import roc_auc_score

    from medtl.probability import probabilities

    probs = probabilities(logits)
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))


def card_note(payload: dict[str, Any] | None) -> list[str]:
    """The model card's line on a drift temperature: how its probabilities were made less sure than validation alone
    would make them."""
    if not payload:
        return []
    return [f"Its temperature ({payload['temperature']:.3f}) was fitted on the validation cases clean and under Gaussian "
            f"noise up to sigma {payload['strongest_noise']:.3f} (Tomani et al. 2021), so its probabilities are less sure "
            "than validation alone would make them, for scans that drift from the training data."]
