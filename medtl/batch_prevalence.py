"""What a scored batch says about the site it came from: how often the model calls the finding, and the prevalence
its scores imply (labels unused), beside the prevalence its probabilities assume. A site whose scores imply a far
other prevalence needs ``--prevalence`` (or ``medtl recalibrate``) before its probabilities are read as risks: the
first sign of a new site that a person can act on without labelling a case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.evaluate.calibration import estimate_prior
from medtl.models.checkpoint import ModelBundle

FAR = 0.1
"""How far (in prevalence) the batch's implied prevalence may be from the assumed one before it is pointed out."""
MIN_CASES = 20
"""Fewer scored cases tell too little about a site's prevalence to report one."""


@dataclass(frozen=True)
class BatchPrevalence:
    positive: str
    cases: int
    called: float
    """Fraction of the scored cases the model calls ``positive``."""
    implied: float | None
    """The prevalence the scores imply (EM, checked against the validation call rates); None where none can be read."""
    how: str
    assumed: float
    """The prevalence the probabilities were computed for: the model's calibration set's, or ``--prevalence``."""

    @property
    def far(self) -> bool:
        return self.implied is not None and abs(self.implied - self.assumed) > FAR

    def metrics(self) -> dict[str, float]:
        out = {"batch_called_positive": self.called, "batch_prevalence_assumed": self.assumed}
        return out | ({"batch_prevalence_implied": self.implied} if self.implied is not None else {})

    def message(self, applied: bool = False) -> str:
        """``applied``: the probabilities written are at the implied prevalence already (``--prevalence em``)."""
        said = (f"{self.positive} called in {self.called:.0%} of the {self.cases} cases scored; the prevalence their "
                f"scores imply is {self.implied:.2f} ({self.how}), and the probabilities assume {self.assumed:.2f}"
                if self.implied is not None else
                f"{self.positive} called in {self.called:.0%} of the {self.cases} cases scored; prevalence {self.how}")
        if self.far and not applied:
            said += ("; far apart: where this site's prevalence is known, score with --prevalence, or recalibrate on "
                     "labelled cases of it (medtl recalibrate) before reading the probabilities as risks")
        return said


def batch_prevalence(bundle: ModelBundle, table: pd.DataFrame) -> BatchPrevalence | None:
    """For a binary classifier calibrated by medtl and at least ``MIN_CASES`` scored cases; else None."""
    if bundle.task != "classification" or len(bundle.classes) != 2 or "source_prior" not in bundle.extra:
        return None
    ok = table[table["status"] == "ok"]
    if len(ok) < MIN_CASES:
        return None
    positive = bundle.classes[1]
    p = ok[f"prob_{positive}"].to_numpy(dtype=float)
    target = bundle.extra.get("target_prior")
    assumed = np.asarray(target or bundle.extra["source_prior"], dtype=float)
    rates = None if target else bundle.extra.get("source_call_rates")  # measured at the calibration prevalence
    implied, how = estimate_prior(np.column_stack([1 - p, p]), assumed, bundle.threshold, rates)
    return BatchPrevalence(positive, len(ok), float((ok["predicted"] == positive).mean()),
                           None if implied is None else float(implied[1]), how, float(assumed[1]))


def scores_plot(bundle: ModelBundle, table: pd.DataFrame, batch: BatchPrevalence, path: Path) -> Path:
    """The scored cases' probabilities of the finding with the decision threshold: the shape of the batch at a
    glance (a site where every case sits at one end, or a pile just under the threshold); beside it, where the model
    measures typicality, its histogram."""
    from medtl.figures import plt, save_figure

    ok = table[table["status"] == "ok"]
    p = ok[f"prob_{batch.positive}"].to_numpy(dtype=float)
    typical = "typicality" in ok
    fig, axes = plt.subplots(1, 2 if typical else 1, figsize=(11 if typical else 6, 3.5), squeeze=False)
    ax = axes[0, 0]
    ax.hist(p, bins=np.linspace(0, 1, 41), color="#4c72b0")
    ax.axvline(bundle.threshold, color="black", linestyle="--", label=f"threshold {bundle.threshold:.3f}")
    implied = f"\nimplied prevalence {batch.implied:.2f}" if batch.implied is not None else "\n"
    implied += f" (the probabilities assume {batch.assumed:.2f})"
    ax.set(xlabel=f"probability of {batch.positive}", ylabel="cases", xlim=(0, 1),
           title=f"{batch.cases} cases scored: {batch.called:.0%} called {batch.positive}{implied}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    if typical:
        _typicality_panel(axes[0, 1], ok["typicality"].to_numpy(dtype=float))
    return save_figure(fig, path, svg=False)


def _typicality_panel(ax: Any, typicality: np.ndarray) -> None:
    """Cases like the validation cases spread their typicality evenly over (0, 1]; a pile at the left edge is a batch
    unlike the training data, seen before any case is read."""
    from medtl.typicality import LEVEL

    bins = np.linspace(0, 1, 21)
    ax.hist(typicality, bins=bins, color="#dd8452")
    ax.axhline(len(typicality) / (len(bins) - 1), color="black", linestyle=":", label="cases like the validation cases")
    ax.axvline(LEVEL, color="#c44e52", linestyle="--", label=f"unlike the training cases (at most {LEVEL})")
    unlike = int((typicality <= LEVEL).sum())
    ax.set(xlabel="typicality", ylabel="cases", xlim=(0, 1),
           title=f"{unlike} of {len(typicality)} ({unlike / max(1, len(typicality)):.1%}) unlike the training cases")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
