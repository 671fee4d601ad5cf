"""Outcome metrics as pure functions of arrays, validated once at the boundary.

Binary tasks take ``p`` as the probability of the positive class (the second class); multi-class tasks
take an (n, k) probability matrix. Undefined values (AUROC with one class present) come back as NaN with
a reason in ``notes``, never as a crash.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from medtl.errors import MedtlError


def check_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if len(y) != len(p):
        raise MedtlError(f"y_true has {len(y)} cases but probs {len(p)}")
    if not np.all(np.isfinite(p)):
        raise MedtlError(f"probs: {int(np.sum(~np.isfinite(p)))} NaN/Inf probabilities; the model produced invalid outputs")
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        raise MedtlError("probs: values outside [0, 1]; pass probabilities, not logits")
    return y.astype(int), p


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, AUPRC and the operating-point metrics at ``threshold`` (predict positive when p >= threshold)."""
    y, p = check_inputs(y_true, p)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    two = len(np.unique(y)) == 2
    sens, spec = _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)
    ppv, npv = _safe_div(tp, tp + fp), _safe_div(tn, tn + fn)
    return {
        "auroc": float(roc_auc_score(y, p)) if two else float("nan"),
        "auprc": float(average_precision_score(y, p)) if y.sum() > 0 else float("nan"),
        "accuracy": _safe_div(tp + tn, len(y)),
        "balanced_accuracy": float(np.nanmean([sens, spec])) if not (np.isnan(sens) and np.isnan(spec)) else float("nan"),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "n": float(len(y)),
        "n_positive": float(y.sum()),
    }


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro and weighted one-vs-rest AUROC, accuracy, balanced accuracy and per-class sensitivity (argmax)."""
    y, p = check_inputs(y_true, probs)
    k = p.shape[1]
    pred = p.argmax(1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    per_class_sens = [_safe_div(cm[i, i], cm[i].sum()) for i in range(k)]
    present = np.unique(y)
    out = {"accuracy": float((pred == y).mean()) if len(y) else float("nan"),
           "balanced_accuracy": float(np.nanmean(per_class_sens)), "n": float(len(y))}
    if len(present) == k:
        out["auroc_macro"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
        out["auroc_weighted"] = float(roc_auc_score(y, p, multi_class="ovr", average="weighted", labels=list(range(k))))
    else:
        out["auroc_macro"] = out["auroc_weighted"] = float("nan")
    for i in range(k):
        out[f"sensitivity_class{i}"] = per_class_sens[i]
        out[f"auroc_class{i}"] = float(roc_auc_score(y == i, p[:, i])) if 0 < (y == i).sum() < len(y) else float("nan")
    return out


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Binary metrics for (n, 2) or (n,) probabilities, multi-class ones otherwise."""
    p = np.asarray(probs, dtype=float)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 1:
        return binary_metrics(y_true, p, threshold)
    return multiclass_metrics(y_true, p)


def proportion_counts(y_true: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, tuple[int, int]]:
    """Each metric that is a share of cases as (cases counted, cases it is a share of): sensitivity is TP of TP + FN."""
    y, p = check_inputs(y_true, probs)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 2:
        return {"accuracy": (int((p.argmax(1) == y).sum()), len(y))}
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel())
    return {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp), "npv": (tn, tn + fn),
            "accuracy": (tp + tn, len(y))}


def undefined_reasons(y_true: np.ndarray, metrics: dict[str, float]) -> list[str]:
    """Why some metrics are NaN, in words for the report."""
    notes = []
    if len(np.unique(np.asarray(y_true))) < 2:
        notes.append("only one class present: AUROC and related metrics are undefined")
    if len(np.asarray(y_true)) == 0:
        notes.append("no case")
    return notes
