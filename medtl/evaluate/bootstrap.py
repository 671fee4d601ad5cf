"""Confidence intervals by bootstrap resampling of patients, stratified by label.

A patient with several scans is drawn as a unit, so correlated scans do not narrow the interval. A share of cases
(sensitivity, specificity, PPV, NPV, accuracy) gets at least its Wilson score interval too: resamples of 4 positive
cases all found give sensitivity 1 every time, an interval of no width, where 4 of 4 is as plausible at a
sensitivity of 0.6.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm


def patient_strata(y: np.ndarray, groups: np.ndarray) -> list[list[np.ndarray]]:
    """Case indices per patient, grouped by the patient's label (max over their cases)."""
    by_patient: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        by_patient.setdefault(g, []).append(i)
    strata: dict[int, list[np.ndarray]] = {}
    for idx in by_patient.values():
        strata.setdefault(int(np.max(y[idx])), []).append(np.asarray(idx))
    return list(strata.values())


def resample_indices(strata: list[list[np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    picks = []
    for patients in strata:
        chosen = rng.integers(0, len(patients), len(patients))
        picks.extend(patients[i] for i in chosen)
    return np.concatenate(picks) if picks else np.array([], dtype=int)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of every metric ``metric_fn`` returns; resamples that make a metric undefined
    are left out of that metric's interval."""
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    strata = patient_strata(y, groups)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = resample_indices(strata, rng)
        for name, value in metric_fn(y[idx], probs[idx]).items():
            draws.setdefault(name, []).append(value)
    alpha = (1 - ci) / 2
    out = {}
    for name, values in draws.items():
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        out[name] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if v.size else (float("nan"), float("nan"))
    return out


def widen_to_wilson(intervals: dict[str, float], counts: dict[str, tuple[int, int]], ci: float = 0.95) -> None:
    """Widens each ``NAME_ci_low``/``NAME_ci_high`` in ``intervals`` whose metric is a share of cases to cover its
    Wilson score interval (``counts``: cases counted and cases it is a share of). The bootstrap keeps what patients
    add; Wilson what a few cases, or a share of 0 or 1, leave uncertain."""
    for name, (k, n) in counts.items():
        if n == 0 or f"{name}_ci_low" not in intervals:
            continue
        low, high = wilson_interval(np.array(k), np.array(n), ci)
        intervals[f"{name}_ci_low"] = float(np.fmin(intervals[f"{name}_ci_low"], low))
        intervals[f"{name}_ci_high"] = float(np.fmax(intervals[f"{name}_ci_high"], high))


def wilson_interval(k: np.ndarray, n: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of k successes in n trials (element-wise; n > 0): the one every share of cases,
    and every reliability bin, is given."""
    z = norm.ppf(0.5 + ci / 2)
    f = np.asarray(k, dtype=float) / n
    centre = (f + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
