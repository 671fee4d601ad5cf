"""How unlike its training scans a scan looks to the model: a probabilistic-PCA density (Tipping & Bishop 1999) of
what the network's early stages see in training cases, and a conformal p-value (Vovk et al. 2005) of each new case's
density against the validation cases'. "Unlike the training scans" then has a stated false-alarm rate: a scan drawn
like the validation scans gets a typicality at or below ``LEVEL`` at most ``LEVEL`` of the time, whatever the network.

What is measured is the mean and spread of each channel at the stages of strides 4, 8 and 16 (Lee et al. 2018 also
measure earlier layers, not the last alone): grey levels, texture and orientation, which an inverted, rotated or
noisy image or another scanner changes. The pooled features the head reads were tried first and flagged at most 4%
of such films, and no noise at all (``bench/typicality_shift.py``; the stages were chosen on held-out training films).

A classifier answers every input, a photograph or another body part as readily as the film it was trained for; the
typicality is how a person scoring a batch learns which answers to distrust before reading them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medtl.log import logger

LEVEL = 0.01
"""A case at or below this typicality is called unlike the training scans: one in a hundred scans like them would be."""
REFERENCE_CASES = 1000
"""Training cases whose features the density is fitted on, at most: 32 directions need no more, and each case costs
a pass."""
CALIBRATION_CASES = 2000
"""Validation cases scored under it, at most: they set how finely a case's rarity can be told."""
COMPONENTS = 32
"""Principal directions of the feature density; the rest of the feature space shares one variance."""
MIN_CALIBRATION = round(1 / LEVEL) - 1
"""Validation cases needed before any case can be as rare as ``LEVEL`` (a conformal p-value is at least 1/(n+1))."""
LAYERS = {"efficientnet": ("backbone._blocks.1", "backbone._blocks.2", "backbone._blocks.3"),
          "resnet": ("backbone.layer1", "backbone.layer2", "backbone.layer3"),
          "densenet": tuple(f"backbone.features.denseblock{i}" for i in (1, 2, 3))}
"""The stages at strides 4, 8 and 16 of each backbone family, whose channel statistics typicality measures."""


def layers_for(backbone: str) -> tuple[str, ...]:
    return next((v for k, v in LAYERS.items() if backbone.startswith(k)), ())


@contextmanager
def stage_statistics(model: nn.Module, layers: tuple[str, ...] | list[str]) -> Iterator[list[torch.Tensor]]:
    """While inside, each forward pass of ``model`` appends to the yielded list one (batch, features) tensor: the
    mean and standard deviation over space of every channel of each of ``layers``, in order."""
    seen: dict[str, torch.Tensor] = {}
    out: list[torch.Tensor] = []

    def keep(name: str):
        def hook(_module: nn.Module, _inp: object, act: torch.Tensor) -> None:
            flat = act.detach().float().flatten(2)
            seen[name] = torch.cat([flat.mean(2), flat.std(2, correction=0)], 1)  # a 1-pixel stage: spread 0
            if len(seen) == len(layers):
                out.append(torch.cat([seen.pop(n) for n in layers], 1))
        return hook

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in layers]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


ARRAYS = ("mean", "components", "variances", "calibration", "scale")
"""The density's arrays, as a model file stores them."""


@dataclass
class Typicality:
    """The training features' density and the validation cases' scores under it, sorted."""

    mean: np.ndarray
    components: np.ndarray
    """(k, d) principal directions of the standardised features."""
    variances: np.ndarray
    """(k,) variance along each."""
    noise_variance: float
    """The variance of every other direction."""
    calibration: np.ndarray
    """Sorted atypicality of the validation cases."""
    reference_cases: int
    scale: np.ndarray
    """Each feature's spread over the reference cases: features of many scales weigh alike."""
    layers: list[str] = field(default_factory=list)
    """The modules whose channel statistics are the features."""

    def atypicality(self, features: np.ndarray) -> np.ndarray:
        """The negative log density of each row, up to a constant shared by all (which ranks do not need)."""
        centred = np.asarray(features, dtype=np.float64) / self.scale - self.mean
        along = centred @ self.components.T
        rest = np.maximum((centred ** 2).sum(1) - (along ** 2).sum(1), 0.0)
        return 0.5 * ((along ** 2 / self.variances).sum(1) + rest / self.noise_variance)

    def p_values(self, features: np.ndarray) -> np.ndarray:
        """The fraction of validation cases (with the case itself, as conformal prediction counts) at least as
        atypical: near 1 for an ordinary scan, 1/(n+1) for one beyond every validation case."""
        n = len(self.calibration)
        at_least = n - np.searchsorted(self.calibration, self.atypicality(features), side="left")
        return (1.0 + at_least) / (n + 1.0)

    def to_payload(self) -> dict[str, Any]:
        arrays = {k: torch.as_tensor(getattr(self, k), dtype=torch.float64) for k in ARRAYS}
        return {**arrays, "noise_variance": float(self.noise_variance), "reference_cases": int(self.reference_cases),
                "layers": list(self.layers)}

    @classmethod
    def from_payload(cls, d: dict[str, Any] | None) -> "Typicality | None":
        if not usable(d):
            return None
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ARRAYS}
        return cls(noise_variance=float(d["noise_variance"]), reference_cases=int(d["reference_cases"]),
                   layers=list(d["layers"]), **arrays)


def usable(payload: dict[str, Any] | None) -> bool:
    """Whether a model file's typicality is one this medtl measures: stage statistics, not the pooled features an
    medtl stored before commit 4868328 (those score without typicality)."""
    return bool(payload) and "layers" in payload  # type: ignore[operator]


def measures_typicality(bundle: Any) -> bool:
    """Whether the model's predictions carry a typicality: the one test for its columns and metrics."""
    return bundle.task == "classification" and usable(bundle.extra.get("typicality"))


def fit_density(reference: np.ndarray, calibration: np.ndarray, components: int = COMPONENTS,
                layers: list[str] | None = None) -> Typicality | None:
    """Probabilistic PCA of the standardised ``reference`` (scikit-learn's), scored on ``calibration``; None where the
    features do not vary (nothing to measure a scan against)."""
    from sklearn.decomposition import PCA

    reference = np.asarray(reference, dtype=np.float64)
    n, d = reference.shape
    k = min(components, d - 1, max(1, n // 4))
    if k < 1 or not np.isfinite(reference).all() or reference.var(0).sum() <= 0:
        return None
    spread = reference.std(0)
    scale = np.where(varies(reference, spread), spread, spread.max())  # a constant feature weighs nothing
    pca = PCA(n_components=k, svd_solver="full").fit(reference / scale)
    floor = 1e-6 * float(pca.explained_variance_[0])
    if floor <= 0:
        return None
    density = Typicality(pca.mean_, pca.components_, np.maximum(pca.explained_variance_, floor),
                         max(float(pca.noise_variance_), floor), np.empty(0), n, scale, list(layers or []))
    scores = density.atypicality(calibration)
    density.calibration = np.sort(scores[np.isfinite(scores)])
    return density if len(density.calibration) else None


FLOAT_NOISE = 1e-5
"""A feature whose spread over the reference cases is below this fraction of the features' size varies by rounding
alone: float32 kernels, whose choice moves with the thread count (a Spark executor's one core against a scorer's
two), differ by about 1e-7 to 1e-6 of the activations they sum, and a channel's mean near 0 is such a sum."""


def varies(reference: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Which features vary over the reference cases by more than rounding does. Divided by its rounding-level spread,
    a constant channel (1.040781 in every case) would weigh float noise as a feature, and the thread count would
    move a case's typicality."""
    size = float(np.sqrt((reference ** 2).mean()))
    return (spread > FLOAT_NOISE * size) & (spread > 1e-6 * spread.max())


def measurable(bundle: Any) -> bool:
    """Whether typicality can be measured for the model: a classifier on a backbone whose stages medtl knows."""
    from medtl.models.checkpoint import unwrap

    layers = layers_for(bundle.spec.model.backbone)
    names = {name for name, _ in unwrap(bundle.model).named_modules()}
    return bundle.task == "classification" and bool(layers) and all(name in names for name in layers)


def fit_typicality(bundle: Any, table: pd.DataFrame, device: torch.device, seed: int = 0) -> Typicality | None:
    """The typicality of a ``measurable`` classifier from ``table``'s training rows (the density) and validation
    rows (the calibration), up to ``REFERENCE_CASES`` and ``CALIBRATION_CASES`` of them drawn with ``seed``; None,
    with the reason logged, where there are too few cases for the level to mean anything."""
    from medtl.data.datasets import case_items
    from medtl.data.manifest import rows_of_split

    train, val = (rows_of_split(table, s) for s in ("train", "val"))
    if len(val) < MIN_CALIBRATION or len(train) < MIN_CALIBRATION:
        logger.info("typicality not measured: %d training and %d validation cases, and it needs %d of each to call a "
                    "scan unlike the training scans at level %g", len(train), len(val), MIN_CALIBRATION, LEVEL)
        return None
    drawn = [part.sample(min(len(part), most), random_state=seed)
             for part, most in ((train, REFERENCE_CASES), (val, CALIBRATION_CASES))]
    reference, calibration = (features_of(bundle, case_items(part, None), device) for part in drawn)
    density = fit_density(reference, calibration, layers=list(layers_for(bundle.spec.model.backbone)))
    if density is None:
        logger.warning("typicality not measured: the model's features do not vary over its training cases")
    return density


def features_of(bundle: Any, items: list[dict[str, Any]], device: torch.device) -> np.ndarray:
    """The stage statistics typicality measures, of each readable case, through the one predictor (unreadable ones
    are left out)."""
    from medtl.models.predictor import Predictor

    predictor = Predictor.of(bundle, device, keep_features=True)
    rows = [rec["features"] for rec in predictor.predict(items) if rec["error"] is None]
    return np.stack(rows) if rows else np.empty((0, 0))


def card_note(payload: dict[str, Any] | None) -> list[str]:
    """The model card's line on typicality: what scoring marks, and against what."""
    if not payload:
        return []
    return [f"Scoring marks a scan unlike_training when what the network's early stages see in it is rarer, under "
            f"its density over {int(payload['reference_cases'])} training cases, than all but {LEVEL:.0%} of "
            f"{len(payload['calibration'])} validation cases (column typicality): the model's call on it is not "
            "backed by cases like it."]


def unlike_training(p: float) -> str:
    """The yes/no a predictions file holds for a typicality (empty where the case could not be scored)."""
    return "" if p is None or np.isnan(p) else ("yes" if p <= LEVEL else "no")


@dataclass(frozen=True)
class UnlikeTraining:
    """The cases of a scored batch the model found unlike its training scans."""

    cases: int
    """Cases scored with a typicality."""
    flagged: list[str]

    @property
    def more_than_chance(self) -> bool:
        """More flagged cases than ``LEVEL`` of them by chance (one-sided binomial test, p < 0.001): the batch as a
        whole, not a few of its scans, differs from the training data."""
        from scipy.stats import binomtest

        if not self.flagged:
            return False
        return binomtest(len(self.flagged), self.cases, LEVEL, alternative="greater").pvalue < 1e-3

    def message(self) -> str:
        if not self.flagged:
            return f"none of the {self.cases} cases scored looks unlike the training scans (typicality at most {LEVEL})"
        named = ", ".join(self.flagged[:5]) + (f" and {len(self.flagged) - 5} more" if len(self.flagged) > 5 else "")
        share = len(self.flagged) / self.cases
        said = (f"{len(self.flagged)} of the {self.cases} cases scored ({share:.1%}) look unlike the training scans "
                f"(typicality at most {LEVEL}, which {LEVEL:.0%} of scans like them get): {named}; "
                "check them before trusting their calls (column unlike_training)")
        if self.more_than_chance:
            said += ("; far more than chance gives, so this batch differs from the training data as a whole (another "
                     "scanner, protocol or population?): compare some of its scans with the training scans, and adapt "
                     "(adaptation.method) or recalibrate (medtl recalibrate) before relying on it")
        return said


def unlike_training_cases(table: pd.DataFrame) -> UnlikeTraining | None:
    """From a predictions table; None where the model measures no typicality."""
    if "unlike_training" not in table or table.empty:
        return None
    scored = table[table["unlike_training"].isin(["yes", "no"])]
    if scored.empty:
        return None
    return UnlikeTraining(len(scored), sorted(scored.loc[scored["unlike_training"] == "yes", "case_id"].astype(str)))
