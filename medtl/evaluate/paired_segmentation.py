"""Two segmentation models on the same cases: the mean per-case difference in Dice, IoU, HD95 and ASD with a
paired patient-bootstrap CI (the same resampled patients score both models), and the Wilcoxon signed-rank test
on the Dice differences, with patients as its units: a patient's several scans give one difference, their mean."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from medtl.errors import MedtlError
from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.evaluate.segmentation import SUMMARY
from medtl.files import claim_folder


@dataclass
class PairedSegmentation:
    names: tuple[str, str]
    metrics: dict[str, float]
    """delta_<metric> (a − b, mean per case) with *_ci_low/high, each model's mean Dice, the Wilcoxon p, n."""
    per_case: pd.DataFrame = field(repr=False)


def compare_segmentations(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], n_resamples: int = 1000,
                          ci: float = 0.95, seed: int = 0) -> PairedSegmentation:
    """Per-case tables (case_id, dice, iou, hd95_mm, asd_mm as numbers, optionally patient_id) of the same cases:
    evaluations' own, or files read through ``per_case_numbers``. A distance undefined for either model (an
    empty mask) leaves that case out of that metric's difference."""
    merged = a.merge(b, on="case_id", suffixes=("_a", "_b"))
    if merged.empty:
        raise MedtlError(f"{names[0]} and {names[1]} share no case: compare segmentations of the same cases")
    values = np.column_stack([merged[f"{k}_{s}"].to_numpy(dtype=float) for k in SUMMARY for s in ("a", "b")])
    patients = merged["patient_id_a"].astype(str).to_numpy() if "patient_id_a" in merged else None

    def deltas(_: np.ndarray, v: np.ndarray) -> dict[str, float]:
        out = {}
        for j, key in enumerate(SUMMARY):
            d = v[:, 2 * j] - v[:, 2 * j + 1]
            d = d[np.isfinite(d)]
            out[f"delta_{key}"] = float(d.mean()) if d.size else float("nan")
        return out

    metrics: dict[str, float] = {"n": float(len(merged)), **deltas(np.zeros(0), values)}
    metrics["dice_mean_a"], metrics["dice_mean_b"] = (float(np.nanmean(merged[f"dice_{s}"])) for s in ("a", "b"))
    if n_resamples > 0:
        for key, (low, high) in bootstrap_ci(deltas, np.zeros(len(merged), int), values, patients, n_resamples, ci,
                                             seed).items():
            metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
    diff = merged["dice_a"].to_numpy(dtype=float) - merged["dice_b"].to_numpy(dtype=float)
    units = diff if patients is None else pd.Series(diff).groupby(patients).mean().to_numpy()
    if len(units) >= 2 and np.any(units != 0):  # no test where the models agree on every patient
        metrics["wilcoxon_p"] = float(wilcoxon(units).pvalue)
        if len(units) < len(diff):
            metrics["wilcoxon_patients"] = float(len(units))
    per_case = merged[["case_id", *(f"{k}_{s}" for k in SUMMARY for s in ("a", "b"))]].assign(delta_dice=diff)
    return PairedSegmentation(names, metrics, per_case)


def per_case_numbers(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """A per-case table with its metrics as numbers (a per_case.csv read as text included), or refused."""
    missing = [c for c in ("case_id", *SUMMARY) if c not in table]
    if missing:
        raise MedtlError(f"{name}: missing column(s) {', '.join(missing)}; give the per_case.csv of a segmentation "
                         "evaluation")
    return table.assign(**{k: pd.to_numeric(table[k], errors="coerce") for k in SUMMARY})


def write_segmentation_comparison(cmp: PairedSegmentation, out_dir: Path, figures: bool = True) -> list[Path]:
    """paired_comparison.json and .md, the per-case differences, and each case's Dice under both models."""
    claim_folder(out_dir, "--out")
    (a, b), metrics, per_case = cmp.names, cmp.metrics, cmp.per_case
    files = [out_dir / "paired_comparison.json", out_dir / "paired_per_case.csv", out_dir / "paired_comparison.md"]
    files[0].write_text(json.dumps({"a": a, "b": b, **metrics}, indent=1, default=float))
    per_case.to_csv(files[1], index=False)
    lines = [f"# {a} vs {b} on the same {int(metrics['n'])} cases", "", "| difference (a − b), mean per case | value [95% CI] |",
             "| --- | --- |"]
    for key, label in (("dice", "ΔDice"), ("iou", "ΔIoU"), ("hd95_mm", "ΔHD95 (mm)"), ("asd_mm", "ΔASD (mm)")):
        v, lo, hi = (metrics.get(f"delta_{key}{s}", float("nan")) for s in ("", "_ci_low", "_ci_high"))
        shown = "not defined: no case with both distances" if np.isnan(v) else (
            f"{v:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if not np.isnan(lo) else " (no interval: 0 bootstrap resamples)"))
        lines.append(f"| {label} | {shown} |")
    lines += ["", f"Mean Dice {metrics['dice_mean_a']:.3f} ({a}) vs {metrics['dice_mean_b']:.3f} ({b}); "
              + (f"Wilcoxon signed-rank p = {metrics['wilcoxon_p']:.3g}" if "wilcoxon_p" in metrics
                 else "no Wilcoxon test: the models agree on every case, or there is one patient")
              + (f" (by patient: each of the {int(metrics['wilcoxon_patients'])} patients' mean ΔDice)"
                 if "wilcoxon_patients" in metrics else "")]
    files[2].write_text("\n".join(lines) + "\n")
    if figures:
        from medtl.evaluate import plots

        files += plots.paired_dice_plot(per_case["dice_a"].to_numpy(), per_case["dice_b"].to_numpy(), cmp.names,
                                        out_dir / "paired_dice.png")
    return files
