"""Segmentation metrics per case, in millimetres, through MONAI.

Conventions for empty masks: prediction and reference both empty → Dice 1, IoU 1, distances 0;
exactly one empty → Dice 0, IoU 0, distances undefined (NaN, listed in the report's notes).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.evaluate.subgroups import subgroup_metrics

SUMMARY = ("dice", "iou", "hd95_mm", "asd_mm")


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
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
    values = np.array([[r[key] for key in SUMMARY] for r in rows], dtype=float).reshape(len(rows), len(SUMMARY))
    for j, key in enumerate(SUMMARY):
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
                        for j, key in enumerate(SUMMARY)}

        cis = bootstrap_ci(means, np.zeros(len(rows), int), values, patients, n_resamples, ci, seed)
        for name, (lo, hi) in cis.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    return out


def subgroup_summaries(table: pd.DataFrame, rows: list[dict[str, float]], patients: np.ndarray | None,
                       columns: list[str], min_size: int, n_resamples: int, ci: float, seed: int,
                       notes: list[str]) -> dict[str, float]:
    """Each mean per subgroup, with its patient-bootstrap CI, as for the whole split."""
    def measure(idx: np.ndarray) -> dict[str, float]:
        part = summarise([rows[i] for i in idx], None if patients is None else patients[idx], n_resamples, ci, seed)
        return {k: v for k, v in part.items() if k.endswith(("_mean", "_ci_low", "_ci_high"))}

    return subgroup_metrics(table, columns, min_size, notes, measure)
