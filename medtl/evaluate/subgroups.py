"""Metrics per subgroup (site, scanner, sex...): one row set per value of each configured column, named so
MLflow takes the name, with the same figures, intervals included, as the whole split."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pandas as pd


def subgroup_metrics(table: pd.DataFrame, columns: list[str], min_size: int, notes: list[str],
                     measure: Callable[[np.ndarray], dict[str, float]]) -> dict[str, float]:
    """``subgroup_<column>_<value>_n`` for every value (an empty cell is ``missing``), and where n reaches
    ``min_size`` what ``measure`` returns for those rows' indices, under the same prefix; a smaller subgroup
    gets a note instead."""
    out: dict[str, float] = {}
    for col in columns:
        named: set[str] = set()
        values = banded(table[col], notes, min_size)
        for value, idx in values.groupby(values, dropna=False).indices.items():
            key = f"subgroup_{metric_name(col)}_{unique_name(metric_name(value), named)}"
            out[f"{key}_n"] = float(len(idx))
            if len(idx) < min_size:
                notes.append(f"{col}={value}: {len(idx)} case{'s' * (len(idx) != 1)}, below the minimum of {min_size}; "
                             "not reported")
                continue
            out.update({f"{key}_{name}": v for name, v in measure(idx).items()})
    return out


MAX_LEVELS = 10
"""A numeric column of more values than this (age, BMI) is reported in quartile bands, not one subgroup a value; so
is one of more than 4 values where fewer cases than that many subgroups of the minimum size are evaluated."""


def banded(column: pd.Series, notes: list[str], min_size: int = 1) -> pd.Series:
    """``column`` as the subgroups it is reported in: its values, or for a number of many values (age) its quartile
    bands over these cases, each from its lower edge up to the next (the last up to and with its top)."""
    numbers = pd.to_numeric(column, errors="coerce")
    most = max(4, min(MAX_LEVELS, len(column) // max(1, min_size)))
    if numbers.notna().sum() != column.notna().sum() or numbers.nunique() <= most:
        return column
    edges = np.unique(np.quantile(numbers.dropna(), [0, 0.25, 0.5, 0.75, 1]))
    band = np.clip(np.searchsorted(edges, numbers, side="right") - 1, 0, len(edges) - 2)
    labels = np.array([f"{lo:g} to {hi:g}" for lo, hi in zip(edges[:-1], edges[1:])], dtype=object)
    notes.append(f"{column.name}: {numbers.nunique()} values, reported in quartile bands of these cases "
                 f"({', '.join(labels)}; each up to the next band's lower edge)")
    return pd.Series(np.where(numbers.notna(), labels[band], None), index=column.index, name=column.name)


def metric_name(value: object) -> str:
    """A subgroup's column or value as MLflow takes it in a metric name (letters, digits, ``_ - .`` and spaces): a
    site called "St. Mary's (north)", or a column headed "Sex (M/F)", would otherwise fail the logging call and send
    the whole run offline."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "missing"
    return re.sub(r"[^\w.\- ]", "_", str(value)).strip() or "_"


def unique_name(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out
