"""Decision thresholds chosen on the validation set, stored with the model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(y_true: np.ndarray, p_positive: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float:
    """``youden``: maximises sensitivity + specificity - 1; ``sensitivity``: the highest threshold whose
    sensitivity reaches the target; ``fixed``: 0.5. Falls back to 0.5 when validation holds one class."""
    y_true = np.asarray(y_true).astype(int)
    p = np.asarray(p_positive, dtype=float)
    if rule == "fixed" or len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, p, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if rule == "sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity)
        return float(thr[ok[0]]) if ok.size else float(thr[-1])
    raise ValueError(f"unknown threshold rule {rule!r}")
