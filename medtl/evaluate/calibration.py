"""Calibration metrics and temperature scaling.

Binary ECE is measured on the positive-class probability against the observed positive rate per bin
(the quantity a reliability diagram shows); multi-class ECE on the top-label confidence, with class-wise
ECE averaging the one-vs-rest ECE of every class. Bins are equal-width (``uniform``) or equal-mass
(``quantile``), with scikit-learn's ``calibration_curve`` edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import log_loss

from medtl.evaluate.metrics import check_inputs
from medtl.probability import probabilities


def bin_edges(p: np.ndarray, bins: int, strategy: str) -> np.ndarray:
    if strategy == "quantile":
        return np.percentile(p, np.linspace(0, 100, bins + 1))
    return np.linspace(0.0, 1.0, bins + 1)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 15, strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Per non-empty bin: mean predicted probability, observed frequency, count."""
    edges = bin_edges(p, bins, strategy)
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=len(edges) - 1)
    sum_p = np.bincount(ids, weights=p, minlength=len(edges) - 1)
    sum_y = np.bincount(ids, weights=y.astype(float), minlength=len(edges) - 1)
    keep = counts > 0
    return {"confidence": sum_p[keep] / counts[keep], "frequency": sum_y[keep] / counts[keep], "count": counts[keep],
            "edges": edges}


def ece_binary(y: np.ndarray, p: np.ndarray, bins: int = 15, strategy: str = "uniform") -> tuple[float, float]:
    """(ECE, MCE) of positive-class probabilities."""
    if len(y) == 0:
        return float("nan"), float("nan")
    r = reliability_bins(np.asarray(y), np.asarray(p, dtype=float), bins, strategy)
    gaps = np.abs(r["frequency"] - r["confidence"])
    return float(np.sum(r["count"] * gaps) / len(y)), float(gaps.max())


def ece_and_brier(y: np.ndarray, p2: np.ndarray, bins: int = 15) -> dict[str, float]:
    """ECE (equal width) and Brier score: the calibration numbers a report gives with a bootstrap CI, so
    cheap enough for every resample. Binary ECE is on the positive class, multi-class on the top label;
    binary Brier is the usual mean squared error of the positive-class probability."""
    k = p2.shape[1]
    brier = float(np.mean(np.sum((p2 - np.eye(k)[y]) ** 2, axis=1)) / (2 if k == 2 else 1))
    ece = ece_binary(y, p2[:, 1], bins)[0] if k == 2 else ece_binary(p2.argmax(1) == y, p2.max(1), bins)[0]
    return {"ece": ece, "brier": brier}


def calibration_metrics(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, float]:
    """ECE (equal width and equal mass), MCE, Brier score and NLL; class-wise ECE for multi-class."""
    y, p = check_inputs(y_true, probs)
    p2 = np.column_stack([1 - p, p]) if p.ndim == 1 else p
    k = p2.shape[1]
    out = {**ece_and_brier(y, p2, bins), "nll": float(log_loss(y, np.clip(p2, 1e-12, 1), labels=list(range(k))))}
    if k == 2:
        out["mce"] = ece_binary(y, p2[:, 1], bins, "uniform")[1]
        out["ece_equal_mass"], _ = ece_binary(y, p2[:, 1], bins, "quantile")
    else:
        conf, correct = p2.max(1), (p2.argmax(1) == y)
        out["mce"] = ece_binary(correct, conf, bins, "uniform")[1]
        out["ece_equal_mass"], _ = ece_binary(correct, conf, bins, "quantile")
        out["ece_classwise"] = float(np.mean([ece_binary(y == c, p2[:, c], bins)[0] for c in range(k)]))
    return out


TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The temperatures ``fit_temperature`` searches: validation scores that separate the classes perfectly, or barely
vary, have no finite optimum and land on an end."""


def at_bound(temperature: float) -> bool:
    """Whether a fitted temperature (or 1 / slope) sits on an end of ``TEMPERATURE_BOUNDS``: no optimum was found."""
    lo, hi = TEMPERATURE_BOUNDS
    return not lo * 1.02 < temperature < hi * 0.995


def unfit_temperature(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> str | None:
    """Why a temperature fitted on these cases means nothing, or None: when every case is already classified
    correctly the NLL only falls as T falls (no optimum); an end of the bounds says that scores too close together
    want an ever smaller T, or scores that tell the classes apart no better than chance an ever larger one."""
    z, y = np.asarray(logits), np.asarray(y_true).astype(int)
    if len(np.unique(y)) < 2:
        return "hold one class only"
    if (z.argmax(1) == y).all():
        return "are all classified correctly (the classes are separated perfectly)"
    if at_bound(temperature):
        return ("get scores so close together that no temperature in range sharpens them enough (a barely trained "
                "model?)" if temperature < 1 else "are barely told apart by the model")
    return None


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on validation cases (Guo et al. 2017)."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(y_true).astype(int)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded")
    return float(np.exp(res.x))


def logistic_recalibration(logits: np.ndarray, y_true: np.ndarray) -> tuple[float, float]:
    """Calibration slope and intercept of a binary model on labelled cases: the (a, b) maximising the likelihood
    of sigmoid(a * (z1 - z0) + b) (logistic recalibration, Cox 1958; how clinical models are updated for a new
    site). A temperature alone is the slope with the intercept held at 0. The slope is kept within the
    temperatures ``fit_temperature`` allows (1/20 to 1/0.05) and the intercept within ±20: scores that barely
    vary, or that separate the sample perfectly, have no finite maximum."""
    from scipy.optimize import minimize
    from scipy.special import log_expit

    z = np.asarray(logits, dtype=float)
    d, y = z[:, 1] - z[:, 0], np.asarray(y_true).astype(int)

    def nll(w: np.ndarray) -> float:
        s = w[0] * d + w[1]
        return float(-np.mean(y * log_expit(s) + (1 - y) * log_expit(-s)))

    res = minimize(nll, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[TEMPERATURE_BOUNDS, (-20.0, 20.0)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000})
    return float(res.x[0]), float(res.x[1])


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return probabilities(logits, temperature)


@dataclass
class Calibration:
    """What validation decides for a model, chosen once: temperature, decision threshold, the class mix the
    temperature was fitted on (for a later prior shift) and, binary, the call rates that check one."""

    temperature: float
    threshold: float
    source_prior: list[float]
    call_rates: list[float] | None
    caveat: str | None = None
    """Why these choices rest on too little (said once, when they are made), or None."""


MIN_PER_CLASS = 20
"""Below this many cases of a class a fitted temperature and a chosen threshold rest on too few: said, not refused
(a pilot has few cases, and the choice is still the best these cases allow)."""


def calibration_caveat(logits: np.ndarray, y: np.ndarray, temperature: float, fitted: bool, cases: str,
                       classes: list[str] | None) -> str | None:
    """Why the temperature and threshold chosen on these cases cannot be trusted, or rest on few, or None."""
    why = unfit_temperature(logits, y, temperature) if fitted else None
    if why:
        return (f"temperature {temperature:.3f} cannot be trusted: the {len(y)} {cases} {why}, so neither can the "
                "threshold chosen on them; add cases")
    counts = np.bincount(y, minlength=logits.shape[1])
    if counts.min() >= MIN_PER_CLASS:
        return None
    k = int(counts.argmin())
    name = repr(classes[k]) if classes else str(k)
    chosen = f"temperature {temperature:.3f} and the decision threshold" if fitted else "the decision threshold"
    return (f"{chosen} rest on few cases: {counts.min()} of class {name} among the {len(y)} {cases} "
            f"({MIN_PER_CLASS} or more per class recommended)")


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, rule: str, target_sensitivity: float = 0.9,
              temperature_scaling: bool = True, cases: str = "validation cases",
              temperature: float | None = None, classes: list[str] | None = None) -> Calibration:
    """Temperature fitted on validation (or 1 without ``temperature_scaling``, or ``temperature`` where one was
    fitted otherwise), then the decision threshold chosen on the validation probabilities it gives (binary): the one
    place either is chosen. A temperature with no optimum on these cases, or choices resting on few cases of a
    class, are said (``cases`` names the cases, ``classes`` the classes) and kept as the caveat."""
    from medtl.evaluate.threshold import choose_threshold
    from medtl.log import logger

    y = np.asarray(val_labels).astype(int)
    if temperature is None:
        temperature = fit_temperature(val_logits, y) if temperature_scaling else 1.0
    caveat = calibration_caveat(np.asarray(val_logits), y, temperature, temperature_scaling, cases, classes)
    if caveat:
        logger.warning("%s", caveat)
    probs = apply_temperature(val_logits, temperature)
    threshold, rates = 0.5, None
    if val_logits.shape[1] == 2:
        threshold = choose_threshold(y, probs[:, 1], rule, target_sensitivity)
        rates = call_rates(y, probs[:, 1], threshold)
    counts = np.bincount(y, minlength=val_logits.shape[1]).astype(float) + 0.5
    return Calibration(temperature, threshold, [float(c) for c in counts / counts.sum()], rates, caveat)


def em_prior(probs: np.ndarray, source_prior: np.ndarray, tol: float = 1e-6, max_iter: int = 1000) -> np.ndarray:
    """The class priors of an unlabelled set, by the EM algorithm of Saerens, Latinne & Decaestecker (2002).

    ``probs`` are calibrated posteriors under ``source_prior``; each step re-weights them by the current
    prior ratio and takes the mean posterior as the next prior. No label is used. EM converges to the
    maximum-likelihood priors; for two classes that point is found directly (``binary_ml_prior``)."""
    p = np.asarray(probs, dtype=float)
    p = np.column_stack([1 - p, p]) if p.ndim == 1 else p
    source = np.asarray(source_prior, dtype=float)
    if p.shape[1] == 2:
        return binary_ml_prior(p, source)
    prior = source.copy()
    for _ in range(max_iter):
        w = p * (prior / source)
        w /= w.sum(1, keepdims=True)
        new = w.mean(0)
        if np.max(np.abs(new - prior)) < tol:
            return new
        prior = new
    return prior


def binary_ml_prior(p: np.ndarray, source: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """The two-class priors EM converges to: the likelihood of the unlabelled scores is concave in the
    prevalence, so its maximum is the root of its derivative (or an end of the interval). One root search
    instead of the hundreds of EM steps that overlapping classes need, which every bootstrap resample repeats."""
    a, b = p[:, 1] / source[1], p[:, 0] / source[0]

    def slope(pi: float) -> float:
        return float(np.sum((a - b) / (a * pi + b * (1 - pi))))

    if slope(floor) <= 0:
        pi = floor
    elif slope(1 - floor) >= 0:
        pi = 1 - floor
    else:
        pi = brentq(slope, floor, 1 - floor, xtol=1e-10)
    return np.array([1 - pi, pi])


EM_TOLERANCE = 0.1
"""How far (in prevalence) the EM estimate may stray from the confusion-matrix estimate before it is not trusted."""


def call_rates(y: np.ndarray, p_positive: np.ndarray, threshold: float) -> list[float] | None:
    """[P(called positive | negative), P(called positive | positive)] on labelled (validation) cases; None
    when one class has no case."""
    y, called = np.asarray(y).astype(int), np.asarray(p_positive) >= threshold
    if not ((y == 0).any() and (y == 1).any()):
        return None
    return [float(called[y == 0].mean()), float(called[y == 1].mean())]


def confusion_prior(p_positive: np.ndarray, threshold: float, rates: list[float]) -> float | None:
    """Positive prevalence of an unlabelled set from how often the model calls positive there and its call
    rates on validation (black-box shift estimation, Lipton et al. 2018): consistent under label shift
    however the scores are calibrated. None when the model barely separates the classes on validation."""
    fpr, tpr = rates
    if tpr - fpr < 0.2:
        return None
    q = float(np.mean(np.asarray(p_positive) >= threshold))
    return float(np.clip((q - fpr) / (tpr - fpr), 0.01, 0.99))


def estimate_prior(probs: np.ndarray, source_prior: np.ndarray, threshold: float,
                   rates: list[float] | None) -> tuple[np.ndarray | None, str]:
    """The unlabelled set's class priors (binary): EM on the calibrated scores, checked against the
    confusion-matrix estimate when the model's validation call rates are known. EM is the sharper of the
    two when scores are calibrated and can run away when they are not (a model trained on few cases); when
    the two disagree by more than ``EM_TOLERANCE`` the confusion-matrix estimate is used; a model that barely
    separates the classes on validation gets no estimate (None). Returns the priors and how they were obtained."""
    em = em_prior(probs, source_prior)
    how = f"estimated by EM from the {len(probs)} cases' scores, labels unused"
    check = None if rates is None else confusion_prior(np.asarray(probs)[:, 1], threshold, rates)
    if rates is not None and check is None:
        return None, (f"not estimated: the model barely separates the classes on validation (positive calls "
                      f"{rates[0]:.2f} of negatives, {rates[1]:.2f} of positives), so no prevalence can be read from its scores")
    if check is None:
        return em, how
    if abs(em[1] - check) > EM_TOLERANCE:
        return np.array([1 - check, check]), (f"from the model's positive calls on the {len(probs)} cases and its validation "
                                              f"call rates, labels unused: EM gave {em[1]:.3f}, more than {EM_TOLERANCE} away, "
                                              "so its scores were not trusted for this")
    return em, how + f"; the confusion-matrix estimate agrees ({check:.3f})"
