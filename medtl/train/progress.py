"""The training figure, in the manner of nnU-Net's ``progress.png``: refreshed in the run folder (and the
MLflow run) after every epoch while a person watches, written once more, with its SVG, when training ends."""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker

from medtl.figures import plt, save_figure


def training_curves(history: list[dict[str, float]], path: Path, svg: bool = True) -> Path:
    """Train and validation loss on one axis and the monitored validation metric on the other (best epoch
    marked); learning rate and epoch time below."""
    epochs = [h["epoch"] for h in history]
    fig, (ax, axl, axt) = plt.subplots(3, 1, figsize=(6.5, 6), gridspec_kw={"height_ratios": [3, 1, 1]}, sharex=True)
    for key, style in (("train_loss", "o-"), ("val_loss", "s-")):
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), style, ms=4, label=key.replace("_", " "))
    ax.set_ylabel("loss")
    ax.legend(loc="upper left", fontsize=8)
    metric = next((k for k in ("val_auroc", "val_dice") if any(k in h for h in history)), None)
    pts = [(h["epoch"], h[metric]) for h in history if metric and metric in h and h[metric] == h[metric]]
    if pts:
        axm = ax.twinx()
        axm.plot(*zip(*pts), "^-", color="tab:green", ms=4, label=metric.replace("_", " "))  # type: ignore[union-attr]
        best = max(pts, key=lambda t: t[1])
        axm.axvline(best[0], color="tab:green", ls=":", lw=1)
        axm.annotate(f"best epoch {best[0]}: {best[1]:.3f}", (best[0], best[1]), fontsize=8, xytext=(-4, -12), ha="right",
                     textcoords="offset points")
        axm.set_ylabel(metric.replace("_", " "))  # type: ignore[union-attr]
        axm.legend(loc="upper right", fontsize=8)
    for axis, key, label, colour in ((axl, "lr", "learning rate", "tab:purple"), (axt, "epoch_s", "epoch time (s)", "tab:gray")):
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            axis.plot(*zip(*pts), "o-", color=colour, ms=3)
        axis.set_ylabel(label, fontsize=8)
    axt.set_xlabel("epoch")
    axt.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"Training progress ({len(epochs)} epochs)")
    return save_figure(fig, path, svg=svg, dpi=200 if svg else 100)
