"""Decision thresholds chosen on the validation set, stored with the model."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit
from sklearn.metrics import roc_curve


def choose_threshold(y_true: np.ndarray, p_positive: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float:
    """``youden``: maximises sensitivity + specificity - 1; ``sensitivity``: the highest threshold whose
    sensitivity reaches the target; ``fixed``: 0.5. Falls back to 0.5 when validation holds one class.

    Every threshold between the chosen validation score and the next lower one gives the same validation
    operating point; medtl takes the middle of that gap (in logit space), not its edge. At the edge, a new
    case a hair less confident than the least confident chosen validation case falls on the other side: with
    a validation split the model separates perfectly, the edge is a probability of 1.000 and almost nothing
    is called positive."""
    y_true = np.asarray(y_true).astype(int)
    p = np.asarray(p_positive, dtype=float)
    if rule == "fixed" or len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, p, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))
    elif rule == "sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity)
        i = int(ok[0]) if ok.size else len(thr) - 1
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    return _middle(thr[i], thr[i + 1]) if i + 1 < len(thr) else float(thr[i])


def _middle(upper: float, lower: float) -> float:
    """The probability halfway between two, in logit space."""
    return float(expit((logit(np.clip(upper, 1e-7, 1 - 1e-7)) + logit(np.clip(lower, 1e-7, 1 - 1e-7))) / 2))
