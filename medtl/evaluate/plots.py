"""PNG figures a person would rather look at than read: ROC with CI band, PR, reliability, confusion
matrix, segmentation overlays, Grad-CAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import matplotlib.ticker  # noqa: E402
from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score,  # noqa: E402
                             roc_curve)

from medtl.evaluate.bootstrap import patient_strata, resample_indices, wilson_interval  # noqa: E402
from medtl.evaluate.calibration import reliability_bins  # noqa: E402
from medtl.figures import save_figure as _save  # noqa: E402


def _of(subject: str) -> str:
    """A figure title's "which model, which split" part."""
    return f" — {subject}" if subject else ""


def _resampling(groups: np.ndarray | None, n: int) -> str:
    return "cases" if groups is None or len(np.unique(groups)) == n else "patients"


def roc_plot(y: np.ndarray, p: np.ndarray, threshold: float, path: Path, groups: np.ndarray | None = None,
             n_boot: int = 200, seed: int = 0, title: str = "ROC", auroc_ci: tuple[float, float] | None = None) -> Path:
    """ROC curve with AUROC [95% CI] in the legend, its bootstrap band, and the operating point. ``auroc_ci``, the
    report's interval, is the legend's, so one evaluation gives one interval for its AUROC; else the band's
    resamples give it."""
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y, p)
    grid = np.linspace(0, 1, 101)
    strata = patient_strata(y, np.arange(len(y)) if groups is None else groups)
    rng = np.random.default_rng(seed)
    curves, aucs = [], []
    for _ in range(n_boot):
        idx = resample_indices(strata, rng)
        if len(np.unique(y[idx])) == 2:
            f, t, _ = roc_curve(y[idx], p[idx])
            curves.append(np.interp(grid, f, t))
            aucs.append(roc_auc_score(y[idx], p[idx]))
    auc = roc_auc_score(y, p)
    if auroc_ci is None and aucs:
        auroc_ci = (float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5)))
    label = f"AUROC {auc:.3f}" + (f" [{auroc_ci[0]:.3f}, {auroc_ci[1]:.3f}]" if auroc_ci and np.isfinite(auroc_ci).all() else "")
    if curves:
        lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label=f"95% CI (bootstrap over {_resampling(groups, len(y))})")
    ax.plot(fpr, tpr, lw=2, label=label)
    pred = p >= threshold
    sens = pred[y == 1].mean() if (y == 1).any() else np.nan
    spec = (~pred[y == 0]).mean() if (y == 0).any() else np.nan
    ax.plot([1 - spec], [sens], "o", color="crimson", ms=8,
            label=f"threshold {threshold:.3f}: sens {sens:.2f}, spec {spec:.2f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"{title} (n = {len(y)})", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def roc_overlay_plot(y: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str = "ROC") -> Path:
    """Several models' ROC curves on the same cases, AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUROC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"{title}, same {len(y)} cases", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_plot(y: np.ndarray, p: np.ndarray, path: Path, threshold: float | None = None, title: str = "Precision-recall") -> Path:
    """Precision-recall with AUPRC in the legend, prevalence as the no-skill line, and the operating point."""
    fig, ax = plt.subplots(figsize=(5, 5))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec, lw=2, label=f"AUPRC {average_precision_score(y, p):.3f}")
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"no skill (prevalence {y.mean():.2f})")
    if threshold is not None:
        called = p >= threshold
        if called.any():
            ax.plot([called[y == 1].mean()], [y[called].mean()], "o", color="crimson", ms=8, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=f"{title} (n = {len(y)})", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def reliability_plot(y: np.ndarray, curves: dict[str, np.ndarray], path: Path, bins: int = 10,
                     positive: str = "positive class", strategy: str = "quantile", subject: str = "") -> Path:
    """Observed frequency against mean predicted probability in equal-mass bins (each holds ~n/bins cases),
    with a 95% Wilson interval per bin and each curve's ECE over those bins in the legend (the report's ``ece`` is
    over equal-width bins, so the two differ); bin counts below."""
    from medtl.evaluate.calibration import ece_binary

    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for i, (name, p) in enumerate(curves.items()):
        r = reliability_bins(y, p, bins, strategy)
        n, f = r["count"], r["frequency"]
        low, high = wilson_interval(f * n, n)
        ece = ece_binary(y, p, bins, strategy)[0]
        below, above = np.clip(f - low, 0, None), np.clip(high - f, 0, None)  # ≥ 0 despite rounding
        ax.errorbar(r["confidence"], f, yerr=[below, above], fmt="o-", capsize=2, ms=4,
                    label=f"{name}: ECE {ece:.3f} over these bins")
        axc.plot(r["confidence"], n, "o-", ms=3, label=name)
    ax.set(ylabel="observed frequency", title=f"Reliability, {positive}{_of(subject)} (n = {len(y)}, {bins} equal-mass bins)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    axc.set(xlabel=f"predicted probability of {positive}", ylabel="cases per bin", ylim=(0, None))  # from 0: 62 vs 63 is no dip
    return _save(fig, path)


def confusion_plot(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path, subject: str = "") -> Path:
    """Counts and row percentages (the share of each true class given each prediction)."""
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(classes), 4 + 0.3 * len(classes)))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v}\n{rows[i, j]:.0%}", ha="center", va="center", color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix{_of(subject)} (n = {int(cm.sum())}, row %)")
    return _save(fig, path)


def overlay_plot(images: list[np.ndarray], refs: list[np.ndarray], preds: list[np.ndarray], titles: list[str], path: Path) -> Path:
    """Middle slice of each case with the reference (green) and predicted (red) contours."""
    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4), squeeze=False)
    for ax, img, ref, pred, title in zip(axes[0], images, refs, preds, titles):
        sl = (lambda a: a[..., a.shape[-1] // 2]) if img.ndim == 3 else (lambda a: a)
        ax.imshow(sl(img).T, cmap="gray", origin="lower")
        if sl(ref).any():
            ax.contour(sl(ref).T, levels=[0.5], colors="lime", linewidths=1)
        if sl(pred).any():
            ax.contour(sl(pred).T, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _save(fig, path)


def gradcam_plot(panels: list[tuple[str, str, float, np.ndarray | None, np.ndarray | None]], path: Path,
                 note: str | None = None, svg: bool = True, positive: str = "positive class") -> Path:
    """One row per (kind, case_id, p, image, cam): the raw image, then the heat map over it with a colour bar;
    ``p`` and the map are the ``positive`` class's. A kind without a case is a row that says so."""
    fig, axes = plt.subplots(len(panels), 2, figsize=(5.6, 2.6 * len(panels)), squeeze=False)
    for (kind, case, p, img, cam), (raw_ax, cam_ax) in zip(panels, axes):
        for ax in (raw_ax, cam_ax):
            ax.axis("off")
        if img is None:
            raw_ax.text(0.0, 0.5, f"{kind}: no case of this kind in the split", fontsize=9, va="center")
            continue
        raw_ax.imshow(img.T, cmap="gray", origin="upper")
        raw_ax.set_title(f"{kind} {case}, p({positive}) = {p:.3f}", fontsize=8)
        cam_ax.imshow(img.T, cmap="gray", origin="upper")
        if cam is not None:
            shown = cam_ax.imshow(cam.T, cmap="inferno", alpha=0.45, origin="upper", vmin=0, vmax=1)
            fig.colorbar(shown, ax=cam_ax, fraction=0.046, pad=0.04, label="Grad-CAM")
            cam_ax.set_title(f"Grad-CAM, {positive}", fontsize=8)
        else:
            cam_ax.set_title(note or "Grad-CAM unavailable", fontsize=8)
    return _save(fig, path, svg=svg)


def decision_curve_plot(curve: Any, names: tuple[str, ...], path: Path) -> list[Path]:
    """Net benefit against threshold probability for each model, with treat-all and treat-none; PNG and SVG."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name in names:
        ax.plot(curve["threshold"], curve[name], label=name, lw=1.8)
    ax.plot(curve["threshold"], curve["treat_all"], color="0.4", ls="--", lw=1, label="treat all")
    ax.axhline(0, color="0.2", lw=1, label="treat none")
    top = float(np.nanmax(curve[list(names) + ["treat_all"]].to_numpy()))
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05, max(0.05, top * 1.1)), xlim=(0, 1),
           title="Decision curve")
    ax.legend(frameon=False, fontsize=8)
    return [_save(fig, path), path.with_suffix(".svg")]


def paired_dice_plot(dice_a: np.ndarray, dice_b: np.ndarray, names: tuple[str, str], path: Path) -> list[Path]:
    """Each case's Dice under both models, against the line where they agree: points above it favour the
    first model. PNG and SVG."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="equal")
    ax.scatter(dice_b, dice_a, s=18, alpha=0.7)
    above = int(np.sum(dice_a > dice_b))
    ax.set(xlabel=f"Dice, {names[1]}", ylabel=f"Dice, {names[0]}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=f"Dice per case (n = {len(dice_a)}; {above} above the line)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return [_save(fig, path), path.with_suffix(".svg")]


_METRIC_NAMES = {"auroc": "AUROC", "auroc_macro": "AUROC (macro, one-vs-rest)", "dice_mean": "Dice"}


def learning_curve_plot(curve: Any, metric: str, path: Path) -> list[Path]:
    """Test metric against labelled training cases (log x), one line per strategy: mean over seeds, with the
    span of the bootstrap CIs as a band."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for strategy, part in curve.groupby("strategy"):
        g = part.groupby("n_labelled").agg(mean=(metric, "mean"), low=("ci_low", "min"), high=("ci_high", "max"))
        ax.plot(g.index, g["mean"], marker="o", lw=1.8, label=strategy)
        ax.fill_between(g.index, g["low"], g["high"], alpha=0.15)
    ax.set_xscale("log")
    ax.set(xlabel="labelled training cases", ylabel=f"test {_METRIC_NAMES.get(metric, metric)} (95% CI)",
           title="Label efficiency (the same test cases for every model)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return [_save(fig, path), path.with_suffix(".svg")]
