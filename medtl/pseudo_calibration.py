"""A temperature for a new site's scans fitted on those scans alone, unlabelled (PseudoCal; Hu et al., ICML 2024,
"Pseudo-Calibration: Improving Predictive Uncertainty Estimation in Unsupervised Domain Adaptation").

A temperature fitted on the training hospital's validation cases makes a model as sure as it is right there; at a
site whose scans differ it stays too sure (the demo's fine-tune has calibration slope 0.58 on the separately collected
test films), and the site has no labels to refit it. PseudoCal makes labelled cases out of unlabelled ones: each scan
mixed with another that the model calls differently, ``LAMBDA`` of the first, is labelled with the first's call. How
sure the model is of such mixtures, against how often it keeps the first's call, stands in for how sure it is on the
site's own scans against how often it is right; the temperature minimising their NLL is the site's. No label is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medtl.drift_calibration import perturbed_logits

if TYPE_CHECKING:
    import pandas as pd

    from medtl.models.checkpoint import InferenceSpec

LAMBDA = 0.65
"""The share of the first scan in each mixture: the paper's fixed ratio."""
REPEATS = 5
"""Rounds of mixing, each pairing every scan with a partner drawn anew: more mixtures than one round gives a site of a
few hundred scans."""
MIN_PAIRS = 20
"""Fewer mixtures of scans called differently tell too little to fit a temperature."""


@dataclass(frozen=True)
class PseudoTemperature:
    temperature: float
    pairs: int
    """Mixtures of two scans the model calls differently: what the temperature was fitted on."""


class InBatchMixup:
    """Mixes each scan of a batch with a partner drawn from the same batch, ``lam`` of its own; keeps each batch's
    partners, so a mixture's pseudo-label can be read from its first scan's call."""

    def __init__(self, lam: float, seed: int) -> None:
        self.lam, self.generator = lam, torch.Generator().manual_seed(seed)
        self.partners: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(len(x), generator=self.generator)
        self.partners.append(perm.numpy() + sum(len(p) for p in self.partners))
        return self.lam * x + (1 - self.lam) * x[perm.to(x.device)]


def pseudo_temperature(predictor: Any, items: list[dict[str, Any]], seed: int = 0, lam: float = LAMBDA,
                       repeats: int = REPEATS) -> PseudoTemperature | None:
    """The temperature minimising the NLL of mixtures of the site's ``items`` (labels unused) under their first scan's
    call, through ``predictor`` (uncalibrated); None where the model calls too few scans differently to mix."""
    from medtl.evaluate.calibration import fit_temperature

    called = perturbed_logits(predictor, items, None).argmax(1)
    rng = np.random.default_rng(seed)
    logits, labels = [], []
    for r in range(repeats):
        order = rng.permutation(len(items))  # a new draw of batches, so partners differ round to round
        mix = InBatchMixup(lam, seed + r)
        mixed = perturbed_logits(predictor, [items[i] for i in order], mix)
        first, second = called[order], called[order[np.concatenate(mix.partners)]]
        keep = first != second
        logits.append(mixed[keep])
        labels.append(first[keep])
    pairs = sum(len(y) for y in labels)
    if pairs < MIN_PAIRS:
        return None
    return PseudoTemperature(fit_temperature(np.concatenate(logits), np.concatenate(labels)), pairs)


def site_temperature(model: torch.nn.Module, spec: InferenceSpec, table: pd.DataFrame, device: torch.device,
                     seed: int = 0) -> PseudoTemperature | None:
    """PseudoCal's temperature for the cases of ``table`` (manifest rows; labels unused), through the model as stored
    (uncalibrated), each scan preprocessed once for all rounds."""
    from medtl.data.datasets import case_items
    from medtl.models.predictor import Predictor

    predictor = Predictor(model, spec, device, batch_size=32, cache=True)
    return pseudo_temperature(predictor, case_items(table, None), seed)


def same_calls_threshold(threshold: float, old: float, new: float) -> float:
    """The binary threshold at temperature ``new`` that calls every case as ``threshold`` did at ``old``: the cut
    stays at the same logit difference."""
    from scipy.special import expit, logit

    return float(expit(logit(threshold) * old / new))
