"""PNG figures a person would rather look at than read: ROC with CI band, PR, reliability, confusion
matrix, training curves, segmentation overlays, Grad-CAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve  # noqa: E402

from medtl.evaluate.bootstrap import patient_strata, resample_indices  # noqa: E402
from medtl.evaluate.calibration import reliability_bins  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def roc_plot(y: np.ndarray, p: np.ndarray, threshold: float, path: Path, groups: np.ndarray | None = None,
             n_boot: int = 200, seed: int = 0) -> Path:
    """ROC curve, its 95% band from patient-level bootstrap, and the operating point at the threshold."""
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y, p)
    grid = np.linspace(0, 1, 101)
    strata = patient_strata(y, np.arange(len(y)) if groups is None else groups)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        idx = resample_indices(strata, rng)
        if len(np.unique(y[idx])) == 2:
            f, t, _ = roc_curve(y[idx], p[idx])
            curves.append(np.interp(grid, f, t))
    if curves:
        lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label="95% CI (patient bootstrap)")
    ax.plot(fpr, tpr, lw=2, label="ROC")
    pred = p >= threshold
    sens = pred[y == 1].mean() if (y == 1).any() else np.nan
    spec = (~pred[y == 0]).mean() if (y == 0).any() else np.nan
    ax.plot([1 - spec], [sens], "o", color="crimson", ms=8, label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_plot(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec, lw=2)
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8)
    return _save(fig, path)


def reliability_plot(y: np.ndarray, curves: dict[str, np.ndarray], path: Path, bins: int = 15) -> Path:
    """One reliability curve per named probability vector (e.g. before/after temperature), with bin counts."""
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / bins / (len(curves) + 1)
    for i, (name, p) in enumerate(curves.items()):
        r = reliability_bins(y, p, bins)
        ax.plot(r["confidence"], r["frequency"], "o-", label=name)
        centres = (r["edges"][:-1] + r["edges"][1:]) / 2
        counts = np.histogram(p, bins=r["edges"])[0]
        axc.bar(centres + (i - 0.5) * width, counts, width=width, label=name)
    ax.set(ylabel="observed frequency", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    axc.set(xlabel="predicted probability", ylabel="cases per bin")
    return _save(fig, path)


def confusion_plot(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> Path:
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(classes), 4 + 0.3 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, path)


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    keys = [k for k in ("train_loss", "val_loss", "val_auroc", "val_dice") if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot([h["epoch"] for h in history if key in h], [h[key] for h in history if key in h], "o-")
        ax.set(xlabel="epoch", title=key)
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
                 note: str | None = None) -> Path:
    """One row per (kind, case_id, p, image, cam): the raw image, then the heat map over it with a colour bar.
    A kind without a case is a row that says so."""
    fig, axes = plt.subplots(len(panels), 2, figsize=(5.6, 2.6 * len(panels)), squeeze=False)
    for (kind, case, p, img, cam), (raw_ax, cam_ax) in zip(panels, axes):
        for ax in (raw_ax, cam_ax):
            ax.axis("off")
        if img is None:
            raw_ax.text(0.0, 0.5, f"{kind}: no case of this kind in the split", fontsize=9, va="center")
            continue
        raw_ax.imshow(img.T, cmap="gray", origin="upper")
        raw_ax.set_title(f"{kind} {case} p={p:.3f}", fontsize=8)
        cam_ax.imshow(img.T, cmap="gray", origin="upper")
        if cam is not None:
            shown = cam_ax.imshow(cam.T, cmap="inferno", alpha=0.45, origin="upper", vmin=0, vmax=1)
            fig.colorbar(shown, ax=cam_ax, fraction=0.046, pad=0.04, label="Grad-CAM")
            cam_ax.set_title("Grad-CAM, positive class", fontsize=8)
        else:
            cam_ax.set_title(note or "Grad-CAM unavailable", fontsize=8)
    return _save(fig, path)


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
    png = _save_both(fig, path)
    return png


def _save_both(fig: Any, path: Path) -> list[Path]:
    """PNG (300 dpi) and SVG of one figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=300)
    svg = path.with_suffix(".svg")
    fig.savefig(svg)
    plt.close(fig)
    return [path, svg]


def learning_curve_plot(curve: Any, metric: str, path: Path) -> list[Path]:
    """Test metric against labelled training cases (log x), one line per strategy: mean over seeds, with the
    span of the bootstrap CIs as a band."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for strategy, part in curve.groupby("strategy"):
        g = part.groupby("n_labelled").agg(mean=(metric, "mean"), low=("ci_low", "min"), high=("ci_high", "max"))
        ax.plot(g.index, g["mean"], marker="o", lw=1.8, label=strategy)
        ax.fill_between(g.index, g["low"], g["high"], alpha=0.15)
    ax.set_xscale("log")
    ax.set(xlabel="labelled training cases", ylabel=f"test {metric.replace('_mean', '')} (95% CI)",
           title=f"Label efficiency (test n = same cases for every model)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save_both(fig, path)
