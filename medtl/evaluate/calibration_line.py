"""Calibration slope and intercept: what a reviewer of a clinical prediction model reads beside the calibration plot
(Van Calster et al. 2019, "Calibration: the Achilles heel of predictive analytics"; TRIPOD+AI item 17). ECE says how
far the probabilities are off; these say how: a slope below 1 is probabilities too extreme (overfitting, or a new
site's harder cases), above 1 too modest; an intercept below 0 is risks overestimated on the whole (a new site's lower
prevalence), above 0 underestimated. Perfect calibration is slope 1, intercept 0.

- slope: b in logit P(y = 1) = a + b · z, the logistic recalibration fit on the model's log-odds z = logit(p);
- intercept (calibration-in-the-large): a in logit P(y = 1) = a + z, the slope held at 1.

Each comes with its Wald interval from the fit's information (cases taken as independent)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import norm

MAX_SLOPE = 50.0
"""Beyond this the outcome is separated by the scores (the likelihood has no finite maximum): no slope is reported."""
MAX_SE = 10.0
"""A standard error above this many log-odds units says the cases carry no information on the figure (scores so far
apart that the likelihood is flat around its maximum): it is not reported, rather than with an interval of ±10⁶."""


def _logistic_fit(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Maximum-likelihood coefficients of logit P(y) = x @ beta + offset by Newton's method, and their covariance
    (the inverse information); None where it does not converge."""
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        mu = expit(x @ beta + offset)
        information = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(information, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.abs(beta).max() > MAX_SLOPE:
            return None
        if np.abs(step).max() < 1e-10:
            mu = expit(x @ beta + offset)
            try:
                return beta, np.linalg.inv(x.T @ (x * (mu * (1 - mu))[:, None]))
            except np.linalg.LinAlgError:
                return None
    return None


def calibration_line(y_true: np.ndarray, log_odds: np.ndarray, ci: float = 0.95) -> dict[str, float]:
    """``calibration_slope`` and ``calibration_intercept`` of a binary model's log-odds of the positive class (from its
    logits: a probability that rounds to 1 has none), each with ``_ci_low`` and ``_ci_high``; NaN where the cases
    hold one class or the scores separate them, and where the cases say nothing of it (``MAX_SE``)."""
    y = np.asarray(y_true, dtype=float)
    z = np.asarray(log_odds, dtype=float)
    out = {f"calibration_{name}{end}": float("nan") for name in ("slope", "intercept") for end in ("", "_ci_low", "_ci_high")}
    if len(np.unique(y)) < 2:
        return out
    q = norm.ppf(0.5 + ci / 2)
    ones = np.ones((len(y), 1))
    for name, x, offset, index in (("slope", np.hstack([ones, z[:, None]]), np.zeros(len(y)), 1),
                                   ("intercept", ones, z, 0)):
        fit = _logistic_fit(x, y, offset)
        if fit is None:
            continue
        value, se = fit[0][index], float(np.sqrt(fit[1][index, index]))
        if not se <= MAX_SE:
            continue
        out |= {f"calibration_{name}": float(value), f"calibration_{name}_ci_low": float(value - q * se),
                f"calibration_{name}_ci_high": float(value + q * se)}
    return out


def suffixed(metrics: dict[str, float], suffix: str) -> dict[str, float]:
    """``calibration_slope_ci_low`` as ``calibration_slope_calibrated_ci_low``: the step named before the interval, as
    the report reads it."""
    return {(k.replace("_ci_", f"{suffix}_ci_") if "_ci_" in k else k + suffix): v for k, v in metrics.items()}
