"""What a manifest's labels go with besides the finding: the films' size or view, or a configured site. Where
pneumonia films came from one hospital and normal ones from another, a network learns the hospital (Zech et al. 2018,
PLOS Medicine: a pneumonia model that read the site from the film); where the sickest patients are filmed AP in bed,
it learns the view. Both show in what the check reads anyway, before anything trains: each film's size and stated
view, and the site column a config names as a subgroup. A strong association is said, with the figures; it is not a
fault of any one case, so it stops nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MIN_CASES = 20
"""Labelled cases below which no association is measured."""
MIN_GROUP = 5
"""Cases a size or view needs to count: a few odd films say nothing of the others."""
STRONG = 0.5
"""Cramér's V from which the label is said to go with the attribute (0 none, 1 one tells the other)."""
MAX_SIZES = 10
"""Distinct sizes above which sizes are taken in quartile bands of their pixel count."""


def shortcuts(table: pd.DataFrame, seen: dict[str, Any], sites: list[str] | tuple[str, ...] = ()) -> list[str]:
    """One line per attribute the labels of ``table`` go with (Cramér's V at least ``STRONG``): the image size and
    view of each fit image's geometry in ``seen`` (case id to ``Geometry``), and each of the configured subgroup
    columns ``sites`` of no more than ``MAX_SIZES`` values (a site, a scanner; not a measurement such as age)."""
    if "label" not in table:
        return []
    indexed = table.set_index(table["case_id"].astype(str))
    labels = indexed["label"].dropna()
    labels = labels[labels.index.isin(list(seen))]
    if len(labels) < MIN_CASES or labels.nunique() < 2:
        return []
    sizes = pd.Series({case: "×".join(str(n) for n in seen[case].shape) for case in labels.index})
    views = pd.Series({case: seen[case].view for case in labels.index}).replace("", np.nan).dropna()
    attributes = [("image size", _banded_sizes(sizes, seen), "test on films from a source the training did not see"),
                  ("view", views, "read the test figures within each view (data.subgroups: [view])")]
    attributes += [(column, indexed.loc[labels.index, column], f"read the test figures within each {column} (the "
                    "report gives them)") for column in sites
                   if column in indexed and column != "view" and indexed[column].nunique() <= MAX_SIZES]
    return [line for name, values, within in attributes if (line := _association(name, values, labels, within))]


def _banded_sizes(sizes: pd.Series, seen: dict[str, Any]) -> pd.Series:
    """Each film's size, or where films come in many sizes (CheXpert's), its quartile band of pixel count."""
    if sizes.nunique() <= MAX_SIZES:
        return sizes
    pixels = pd.Series({case: float(np.prod(seen[case].shape)) for case in sizes.index})
    edges = np.unique(np.quantile(pixels, [0, 0.25, 0.5, 0.75, 1]))
    band = np.clip(np.searchsorted(edges, pixels, side="right") - 1, 0, len(edges) - 2)
    names = [f"{lo:,.0f} to {hi:,.0f} pixels" for lo, hi in zip(edges[:-1], edges[1:])]
    return pd.Series([names[b] for b in band], index=pixels.index)


def cramers_v(counts: np.ndarray) -> float:
    """Cramér's V of a contingency table (rows: attribute values, columns: labels): sqrt(chi² / (n (min(r, c) - 1)))."""
    from scipy.stats.contingency import association

    return float(association(counts, method="cramer"))


def _association(name: str, values: pd.Series, labels: pd.Series, within: str) -> str | None:
    joined = pd.DataFrame({"value": values, "label": labels}).dropna()
    counts = joined["value"].value_counts()
    joined = joined[joined["value"].isin(counts[counts >= MIN_GROUP].index)]
    if len(joined) < MIN_CASES or joined["value"].nunique() < 2 or joined["label"].nunique() < 2:
        return None
    table = pd.crosstab(joined["value"], joined["label"])
    v = cramers_v(table.to_numpy())
    if v < STRONG:
        return None
    shares = table.div(table.sum(axis=1), axis=0)
    shown = [f"{value} {shares.loc[value].max():.0%} {shares.loc[value].idxmax()} (n {int(table.loc[value].sum())})"
             for value in table.sum(axis=1).sort_values(ascending=False).index[:4]]
    return (f"the labels go with the {name} (Cramér's V {v:.2f}): {'; '.join(shown)}. A model can learn the {name}, "
            f"and so where or how a film was taken, in place of the finding (Zech et al. 2018): give each {name} "
            f"cases of every class, and {within}")
