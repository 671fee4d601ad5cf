"""Segmentation metrics per case, in millimetres, through MONAI.

Conventions for empty masks: prediction and reference both empty → Dice 1, IoU 1, distances 0;
exactly one empty → Dice 0, IoU 0, distances undefined (NaN, listed in the report's notes).

A model of several foreground classes (tumour core and oedema; PTV and GTV) is measured class by class, and its
headline Dice is their mean: the foreground as one region would call a model that swaps the classes perfect.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.evaluate.subgroups import metric_name, subgroup_metrics

SUMMARY = ("dice", "iou", "hd95_mm", "asd_mm")


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
                 classes: list[str] | None = None) -> dict[str, float]:
    """Dice, IoU, HD95 and ASD (symmetric) of label masks with the voxel spacing in mm: of the foreground (labels
    above 0) for a single foreground class; with more ``classes`` (background first), of each as ``dice_NAME`` ...,
    and as the headline their mean (distances over the classes where they are defined)."""
    if classes is None or len(classes) <= 2:
        return binary_metrics(np.asarray(pred) > 0, np.asarray(ref) > 0, spacing)
    each = {metric_name(name): binary_metrics(np.asarray(pred) == k, np.asarray(ref) == k, spacing)
            for k, name in enumerate(classes) if k}  # a class name as MLflow takes it in a metric's
    out: dict[str, float] = {}
    for key in SUMMARY:
        values = np.array([m[key] for m in each.values()])
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    for name, m in each.items():
        out.update({f"{key}_{name}": m[key] for key in SUMMARY})
    return out


def mean_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> float:
    """The headline Dice of ``case_metrics`` alone, without the distances: what validation follows each epoch."""
    labels = [(pred > 0, ref > 0)] if n_classes <= 2 else [(pred == k, ref == k) for k in range(1, n_classes)]
    scores = []
    for p, r in labels:
        total = p.sum() + r.sum()
        scores.append(1.0 if total == 0 else 2.0 * float(np.logical_and(p, r).sum()) / float(total))
    return float(np.mean(scores))


def reference_labels(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """A reference mask as labels: its foreground for a single foreground class (drawn 0/1 or 0/255), its whole
    numbers for several (``n_classes`` counts the background)."""
    return np.asarray(mask) > 0.5 if n_classes <= 2 else np.rint(np.asarray(mask)).astype(np.int64)


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Dice, IoU, HD95 and ASD (symmetric) of binary masks with the voxel spacing in mm."""
    p = torch.as_tensor(np.asarray(pred) > 0)[None, None].float()
    r = torch.as_tensor(np.asarray(ref) > 0)[None, None].float()
    pe, re_ = not bool(p.any()), not bool(r.any())
    if pe and re_:
        return {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    if pe or re_:
        return {"dice": 0.0, "iou": 0.0, "hd95_mm": float("nan"), "asd_mm": float("nan")}
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI's own call of its deprecated get_mask_edges argument, not ours
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        return {
            "dice": float(compute_dice(p, r, include_background=True)),
            "iou": float(compute_iou(p, r, include_background=True)),
            "hd95_mm": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)),
            "asd_mm": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=sp)),
        }


def summarise(rows: list[dict[str, float]], patients: np.ndarray | None = None, n_resamples: int = 0,
              ci: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean, median and IQR of each metric over cases (NaN cases left out, their count kept), and with
    ``n_resamples`` a patient-bootstrap CI of each mean: a patient's scans are drawn together."""
    out: dict[str, float] = {"n": float(len(rows))}
    keys = metric_keys(rows)
    values = np.array([[r[key] for key in keys] for r in rows], dtype=float).reshape(len(rows), len(keys))
    for j, key in enumerate(keys):
        v = values[:, j]
        finite = v[np.isfinite(v)]
        out[f"{key}_mean"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{key}_median"] = float(np.median(finite)) if finite.size else float("nan")
        out[f"{key}_iqr"] = float(np.subtract(*np.percentile(finite, [75, 25]))) if finite.size else float("nan")
        out[f"{key}_undefined"] = float(len(v) - finite.size)
    if n_resamples > 0 and len(rows):
        def means(_: np.ndarray, sample: np.ndarray) -> dict[str, float]:
            with np.errstate(invalid="ignore"):
                return {f"{key}_mean": float(np.nanmean(sample[:, j])) if np.isfinite(sample[:, j]).any() else float("nan")
                        for j, key in enumerate(keys)}

        cis = bootstrap_ci(means, np.zeros(len(rows), int), values, patients, n_resamples, ci, seed)
        for name, (lo, hi) in cis.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    return out


def metric_keys(rows: list[dict[str, float]]) -> list[str]:
    """The headline metrics, then each class's where a model has several, in the order the rows hold them."""
    return [*SUMMARY, *(k for k in (rows[0] if rows else {}) if k not in SUMMARY and k != "case_id")]


def class_names(metrics: dict[str, float]) -> list[str]:
    """The classes measured one by one (``dice_NAME_mean``), in order; empty for a single foreground class."""
    return [k.removeprefix("dice_").removesuffix("_mean") for k in metrics
            if k.startswith("dice_") and k.endswith("_mean") and k != "dice_mean" and not k.startswith("subgroup_")]


def subgroup_summaries(table: pd.DataFrame, rows: list[dict[str, float]], patients: np.ndarray | None,
                       columns: list[str], min_size: int, n_resamples: int, ci: float, seed: int,
                       notes: list[str]) -> dict[str, float]:
    """Each mean per subgroup, with its patient-bootstrap CI, as for the whole split."""
    def measure(idx: np.ndarray) -> dict[str, float]:
        part = summarise([rows[i] for i in idx], None if patients is None else patients[idx], n_resamples, ci, seed)
        return {k: v for k, v in part.items() if k.endswith(("_mean", "_ci_low", "_ci_high"))}

    return subgroup_metrics(table, columns, min_size, notes, measure)
