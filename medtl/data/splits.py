"""Patient-grouped, label-stratified splits: a patient never appears in two splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medtl.data.manifest import read_manifest, read_sheet, rebased
from medtl.errors import ManifestError
from medtl.files import write_table
from medtl.log import logger


def _labels_or_constant(table: pd.DataFrame) -> np.ndarray:
    if "label" in table and table["label"].notna().all():
        return table["label"].astype(str).to_numpy()
    return np.zeros(len(table), dtype=int)


def _warn_rare_classes(table: pd.DataFrame, parts: int, what: str) -> None:
    """Names the classes with fewer cases than ``parts``: stratification cannot put them in every one (in medtl's
    words, not scikit-learn's UserWarning about 'the least populated class')."""
    if "label" not in table or table["label"].isna().any():
        return
    counts = table["label"].astype(str).value_counts()
    rare = counts[counts < parts]
    if len(rare):
        named = ", ".join(f"{label} ({n})" for label, n in rare.items())
        logger.warning("class(es) with fewer cases than %s: %s; they cannot be in every one, and their metrics are "
                       "undefined where they are missing", what, named)


def _stratified(cv: StratifiedGroupKFold, table: pd.DataFrame, groups: np.ndarray):
    with warnings.catch_warnings():  # said once, by _warn_rare_classes
        warnings.filterwarnings("ignore", message="The least populated class")
        return list(cv.split(np.zeros(len(table)), _labels_or_constant(table), groups))


def _holdout(table: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a patient-grouped, stratified holdout of about ``fraction`` of the cases."""
    largest = int(pd.Series(_labels_or_constant(table)).value_counts().max())  # scikit-learn needs n_splits within it
    n_splits = max(2, min(int(round(1.0 / fraction)), largest))
    groups = table["patient_id"].to_numpy()
    if len(np.unique(groups)) < n_splits or largest < n_splits:
        raise ManifestError(f"only {len(np.unique(groups))} patients ({largest} in the largest class): too few for a "
                            f"{fraction:.0%} patient-level split; add cases, lower the fraction, or fill the manifest's "
                            "split column yourself")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = _stratified(cv, table, groups)[0]
    mask = np.zeros(len(table), bool)
    mask[held] = True
    return mask


def with_saved_splits(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The manifest's cases with the splits a training run wrote (its ``splits.csv``): the same test cases
    again, never a fresh split that would put training cases under test. Cases it does not list get none."""
    if not path.is_file():
        raise ManifestError(f"{path}: splits file not found; give the splits.csv in the training run's folder")
    saved = read_sheet(path)
    if not {"case_id", "split"} <= set(saved.columns):
        raise ManifestError(f"{path}: needs the columns case_id and split, as the splits.csv of a training run has")
    return table.assign(split=table["case_id"].astype(str).map(saved.set_index("case_id")["split"]))


def split_manifest(table: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Assigns train/val/test to every row; rows keep their order. Deterministic for a seed."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ManifestError(f"--val {val} and --test {test} must be fractions in [0, 1) that add up to less than 1")
    _warn_rare_classes(table, 1 + (val > 0) + (test > 0), "splits")
    out = table.copy()
    out["split"] = "train"
    remaining = np.ones(len(out), bool)
    if test > 0:
        is_test = _holdout(out, test, seed)
        out.loc[is_test, "split"] = "test"
        remaining = ~is_test
    if val > 0:
        rest = out[remaining]
        is_val = _holdout(rest, val / (1 - test), seed + 1)
        out.loc[rest.index[is_val], "split"] = "val"
    return out


def validation_from_training(table: pd.DataFrame, fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """A manifest split into train and test only (as many public sets ship) still needs validation cases, for the
    temperature, the threshold and early stopping: a patient-grouped, stratified share of the training patients
    becomes validation. The test cases are never touched."""
    train = table[table["split"] == "train"]
    _warn_rare_classes(train, 2, "the training and validation splits")
    held = _holdout(train, fraction, seed + 1)
    out = table.copy()
    out.loc[train.index[held], "split"] = "val"
    logger.warning("the manifest has no validation cases: %d of its %d training cases (%.0f%% of the training "
                   "patients) are validation cases now, saved with the run's splits", int(held.sum()), len(train),
                   100 * fraction)
    return out


def write_split(manifest: Path, out: Path, val: float = 0.15, test: float = 0.15, folds: int | None = None,
                seed: int = 0) -> tuple[pd.DataFrame, str]:
    """``medtl manifest split``: the manifest with a new split (or, with ``folds``, fold) column, written to ``out``
    with image paths that still reach the scans from there; returns the table and the column. The input is kept."""
    if Path(out).resolve() == Path(manifest).resolve():
        raise ManifestError(f"--out {out}: that is the manifest being split; write the split to a new file "
                            f"(e.g. {Path(out).with_name(Path(out).stem + '_split.csv')}), so the input is kept")
    table = rebased(read_manifest(manifest), Path(out).parent)
    column = "fold" if folds is not None else "split"
    existing = table[column].dropna().astype(str) if column in table else pd.Series(dtype=str)
    if len(existing):
        counts = ", ".join(f"{k} {n}" for k, n in existing.value_counts().sort_index().items())
        logger.warning("%s: its %s column (%s) is replaced by the new one in %s", manifest, column, counts, out)
    table = fold_manifest(table, folds, seed) if folds is not None else split_manifest(table, val, test, seed)
    write_table(table, out)
    return table, column


def fold_manifest(table: pd.DataFrame, folds: int, seed: int = 0) -> pd.DataFrame:
    """Adds a ``fold`` column (0..k-1) for k-fold cross-validation, patient-grouped and stratified."""
    if folds < 2:
        raise ManifestError(f"--folds {folds}: give 2 or more folds (5 is usual)")
    groups = table["patient_id"].to_numpy()
    if len(np.unique(groups)) < folds:
        raise ManifestError(f"only {len(np.unique(groups))} patients: too few for {folds} folds")
    _warn_rare_classes(table, folds, "folds")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = table.copy()
    out["fold"] = -1
    for k, (_, held) in enumerate(_stratified(cv, out, groups)):
        out.iloc[held, out.columns.get_loc("fold")] = k
    return out


def nested_subsets(table: pd.DataFrame, fractions: list[float], seed: int = 0, min_per_class: int = 2) -> dict[float, set[str]]:
    """Case ids of nested, patient-grouped, class-stratified subsets of ``table``'s rows: one fixed random
    order of patients per class, and each fraction takes the first share of every class, so a smaller
    subset always lies inside a larger one (at least ``min_per_class`` patients per class)."""
    rng = np.random.default_rng(seed)
    labels = _labels_or_constant(table)
    patient_label = pd.Series(labels, index=table.index).groupby(table["patient_id"]).max()
    order = {c: rng.permutation(patient_label.index[patient_label == c].to_numpy()) for c in sorted(set(patient_label))}
    out = {}
    for f in sorted(fractions):
        chosen = set()
        for patients in order.values():
            k = min(len(patients), max(min_per_class, int(np.ceil(f * len(patients)))))
            chosen.update(patients[:k])
        out[f] = set(table.loc[table["patient_id"].isin(chosen), "case_id"].astype(str))
    return out
