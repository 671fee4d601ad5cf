"""Patient-grouped, label-stratified splits: a patient never appears in two splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medtl.data.manifest import Manifest, read_manifest, read_sheet, rebased
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


OWN_PATIENTS = ("no patient_id: each case is taken as its own patient, so one patient's scans may land in training "
                "and test; if a patient has several scans, give the manifest a patient_id column (manifest build "
                "writes one)")
"""Said wherever medtl splits, or checks, a manifest whose every case is its own patient."""


def own_patients(table: pd.DataFrame) -> bool:
    """Whether every case is its own patient as far as the manifest says: no patient_id, or one per case id."""
    return len(table) > 1 and bool((table["patient_id"].astype(str) == table["case_id"].astype(str)).all())


def split_manifest(table: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0,
                   test_cases: set[str] | None = None) -> pd.DataFrame:
    """Assigns train/val/test to every row; rows keep their order. Deterministic for a seed. ``test_cases``, when
    given, are the test split (a public set's official one), and ``val`` a fraction of the other patients."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ManifestError(f"--val {val} and --test {test} must be fractions in [0, 1) that add up to less than 1")
    if own_patients(table):
        logger.warning(OWN_PATIENTS)
    _warn_rare_classes(table, 1 + (val > 0) + (test > 0 or bool(test_cases)), "splits")
    out = table.copy()
    out["split"] = "train"
    remaining = np.ones(len(out), bool)
    if test_cases is not None:
        is_test = out["case_id"].astype(str).isin(test_cases).to_numpy()
        _refuse_split_patients(out, is_test)
        if is_test.all():
            raise ManifestError(f"--test-list names all {len(out)} cases, so none is left to train on; list the test "
                                "cases only")
        out.loc[is_test, "split"] = "test"
        remaining, test = ~is_test, 0.0
    elif test > 0:
        is_test = _holdout(out, test, seed)
        out.loc[is_test, "split"] = "test"
        remaining = ~is_test
    if val > 0:
        rest = out[remaining]
        is_val = _holdout(rest, val / (1 - test), seed + 1)
        out.loc[rest.index[is_val], "split"] = "val"
    return out


def _refuse_split_patients(table: pd.DataFrame, listed: np.ndarray) -> None:
    """A test list that takes some of a patient's cases and not the others would test on a patient trained on."""
    patients = pd.Series(listed).groupby(table["patient_id"].to_numpy()).agg(["any", "all"])
    torn = patients.index[patients["any"] & ~patients["all"]]
    if len(torn):
        case = table.loc[(table["patient_id"] == torn[0]).to_numpy() & ~listed, "case_id"].iloc[0]
        raise ManifestError(f"--test-list names some of a patient's cases and not others ({len(torn)} patient(s); e.g. "
                            f"case {case} is not listed, its patient's other cases are): list every case of a patient, "
                            "or none")


def listed_cases(path: Path, manifest: Manifest) -> set[str]:
    """The cases a list names, one per line (case ids, file names or paths; a CSV's first column), as a public set
    ships its official test split (ChestX-ray14's ``test_list.txt``)."""
    from medtl.data.label_sheets import file_matcher

    if not path.is_file():
        raise ManifestError(f"--test-list {path}: file not found")
    names = [line.split(",")[0].strip().strip('"') for line in path.read_text(errors="replace").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ManifestError(f"--test-list {path}: the file names no case; give the test cases' ids or file names, one "
                            "per line")
    table = manifest.table
    ids = set(table["case_id"].astype(str))
    case_of = file_matcher(list(zip(table["case_id"].astype(str), table["image_path"].astype(str))), manifest.path.parent)
    found = [n if n in ids else case_of(n) for n in names]
    if len(names) > 1 and found[0] is None and any(found[1:]):  # a CSV's header (valid.csv's "Path")
        names, found = names[1:], found[1:]
    unmatched = [n for n, case in zip(names, found) if case is None]
    if len(unmatched) == len(names):
        raise ManifestError(f"--test-list {path}: none of its {len(names)} names is a case of {manifest.path.name} "
                            f"(e.g. {names[0]}); give case ids, or the scans' file names")
    if unmatched:
        logger.warning("--test-list %s: %d of its %d names match no case (e.g. %s); the %d others are the test split",
                       path.name, len(unmatched), len(names), unmatched[0], len(names) - len(unmatched))
    return {case for case in found if case is not None}


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
                seed: int = 0, test_list: Path | None = None) -> tuple[pd.DataFrame, str]:
    """``medtl manifest split``: the manifest with a new split (or, with ``folds``, fold) column, written to ``out``
    with image paths that still reach the scans from there; returns the table and the column. The input is kept.
    ``test_list`` names the test cases (``listed_cases``)."""
    if Path(out).resolve() == Path(manifest).resolve():
        raise ManifestError(f"--out {out}: that is the manifest being split; write the split to a new file "
                            f"(e.g. {Path(out).with_name(Path(out).stem + '_split.csv')}), so the input is kept")
    if test_list is not None and folds is not None:
        raise ManifestError("--test-list and --folds: folds take every case; give one of them")
    read = read_manifest(manifest)
    test_cases = listed_cases(Path(test_list), read) if test_list is not None else None
    table = rebased(read, Path(out).parent)
    column = "fold" if folds is not None else "split"
    existing = table[column].dropna().astype(str) if column in table else pd.Series(dtype=str)
    if len(existing):
        counts = ", ".join(f"{k} {n}" for k, n in existing.value_counts().sort_index().items())
        logger.warning("%s: its %s column (%s) is replaced by the new one in %s", manifest, column, counts, out)
    table = fold_manifest(table, folds, seed) if folds is not None else split_manifest(table, val, test, seed, test_cases)
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
