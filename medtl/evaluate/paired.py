"""Two models on the same cases: the paired comparison a reviewer of a clinical ML paper asks for.

ΔAUROC with a paired patient-bootstrap CI (the same resampled patients score both models) and DeLong's
test (mid-rank placements, as Sun & Xu 2014; by patient, Obuchowski's 1997 extension), ΔBrier and ΔECE with paired
CIs, and a decision-curve analysis (Vickers & Elkin 2006): net benefit against threshold probability, with treat-all
and treat-none."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.files import claim_folder
from medtl.evaluate.calibration import ece_binary
from medtl.evaluate.metrics import check_inputs


def _placements(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and the structural components V10 (per positive) and V01 (per negative), via mid-ranks."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    r_all = rankdata(np.concatenate([pos, neg]))
    v10 = (r_all[:m] - rankdata(pos)) / n
    v01 = 1.0 - (r_all[m:] - rankdata(neg)) / m
    return float(v10.mean()), v10, v01


def _patient_index(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Each case's patient as 0..K-1; without ``groups``, each case its own patient."""
    return np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)[1]


def delong_test(y_true: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """DeLong's test for two correlated AUROCs on the same cases: AUROCs, difference, its SE, z and p. With ``groups``
    (patients), Obuchowski's (1997) extension for clustered data: each patient's structural components are summed
    before their (co)variances are taken, so a patient's several scans count as one patient, not as independent cases,
    as the paired bootstrap resamples them; with one case per patient it is DeLong's test exactly."""
    y, pa = check_inputs(y_true, p_a)
    _, pb = check_inputs(y_true, p_b)
    patient = _patient_index(groups, len(y))
    pos, neg = y == 1, y == 0
    m, n, patients = int(pos.sum()), int(neg.sum()), int(patient.max(initial=-1)) + 1
    i10, i01 = len(np.unique(patient[pos])), len(np.unique(patient[neg]))
    aucs, c10, c01 = [], [], []
    for p in (pa, pb):
        auc, v10, v01 = _placements(y, p)
        aucs.append(auc)  # a patient's components, centred: V10_i - m_i * AUROC (and V01_i - n_i * AUROC)
        c10.append(np.bincount(patient[pos], weights=v10 - auc, minlength=patients))
        c01.append(np.bincount(patient[neg], weights=v01 - auc, minlength=patients))
    auc_a, auc_b = aucs
    if min(i10, i01) < 2:  # the variance needs two patients of each class: no test, rather than p = 1
        return {"auroc_a": auc_a, "auroc_b": auc_b, "delta_auroc": auc_a - auc_b}
    c10, c01 = np.stack(c10), np.stack(c01)
    s10 = i10 / ((i10 - 1) * m) * c10 @ c10.T
    s01 = i01 / ((i01 - 1) * n) * c01 @ c01.T
    s11 = patients / (patients - 1) * c10 @ c01.T  # zero unless a patient has cases of both classes
    cov = s10 / m + s01 / n + (s11 + s11.T) / (m * n)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc_a - auc_b
    z = diff / np.sqrt(var) if var > 0 else (0.0 if diff == 0 else np.inf * np.sign(diff))
    out = {"auroc_a": auc_a, "auroc_b": auc_b, "delta_auroc": diff, "delta_auroc_se": float(np.sqrt(max(var, 0.0))),
           "delong_z": float(z), "delong_p": float(2 * norm.sf(abs(z)))}
    return out | ({"delong_patients": float(patients)} if patients < len(y) else {})


def net_benefit(y_true: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating when p >= t: TP/n - FP/n * t / (1 - t), at each threshold t."""
    y, p = check_inputs(y_true, p)
    n = len(y)
    out = []
    for t in thresholds:
        called = p >= t
        tp, fp = np.sum(called & (y == 1)), np.sum(called & (y == 0))
        out.append(tp / n - fp / n * t / (1 - t))
    return np.asarray(out, dtype=float)


def decision_curve(y_true: np.ndarray, models: dict[str, np.ndarray], thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Net benefit per threshold for each model, treat-all and treat-none (0)."""
    thresholds = np.round(np.arange(0.01, 1.0, 0.01), 2) if thresholds is None else np.asarray(thresholds)
    y = np.asarray(y_true).astype(int)
    prevalence = y.mean()
    table = pd.DataFrame({"threshold": thresholds, "treat_all": prevalence - (1 - prevalence) * thresholds / (1 - thresholds),
                          "treat_none": 0.0})
    for name, p in models.items():
        table[name] = net_benefit(y, p, thresholds)
    return table


@dataclass
class PairedComparison:
    names: tuple[str, str]
    metrics: dict[str, float]
    """delta_* (a minus b) with *_ci_low/high, DeLong's z and p, n."""
    curve: pd.DataFrame = field(repr=False)
    y: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    probs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    """Each model's positive-class probabilities on the paired cases, for the overlay figures."""
    positive: str = ""
    """The class compared against the rest, where the models have several."""
    class_name: str = "positive class"
    """The class whose probabilities are compared, as figures name it."""


def mcnemar(y_true: np.ndarray, call_a: np.ndarray, call_b: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """McNemar's exact test of two models' calls on the same cases, among the positives (sensitivity) and among the
    negatives (specificity): the cases one model calls right and the other wrong, and the two-sided binomial p that
    they split as evenly as chance would. Where ``groups`` gives a patient several of those cases, they are not
    independent: Obuchowski's (1998) test for clustered data, whose variance comes from each patient's difference."""
    from scipy.stats import binomtest, chi2

    y, a, b = (np.asarray(v).astype(int) for v in (y_true, call_a, call_b))
    patient = _patient_index(groups, len(y))
    out: dict[str, float] = {}
    for name, cls in (("sensitivity", 1), ("specificity", 0)):
        right_a, right_b = (a == cls) & (y == cls), (b == cls) & (y == cls)
        only_a, only_b = right_a & ~right_b, right_b & ~right_a
        out[f"{name}_only_a"], out[f"{name}_only_b"] = int(only_a.sum()), int(only_b.sum())
        of_class = patient[y == cls]
        if len(np.unique(of_class)) == len(of_class):
            discordant = int(only_a.sum() + only_b.sum())
            out[f"mcnemar_{name}_p"] = binomtest(int(only_a.sum()), discordant).pvalue if discordant else 1.0
            continue
        k = len(np.unique(of_class))  # patients with cases of this class, and each one's b_k - c_k
        d = np.bincount(patient, weights=only_a.astype(float) - only_b, minlength=int(patient.max()) + 1)
        stat = (k - 1) / k * d.sum() ** 2 / np.sum(d ** 2) if np.any(d) else 0.0
        out[f"mcnemar_{name}_p"] = float(chi2.sf(stat, 1)) if k > 1 else np.nan  # one patient: nothing to test
        out[f"mcnemar_{name}_clustered"] = 1.0
    return out


def _share(right: np.ndarray, of: np.ndarray) -> float:
    return float(right[of].mean()) if of.any() else np.nan


def compare_models(y_true: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, names: tuple[str, str] = ("a", "b"),
                   groups: np.ndarray | None = None, n_resamples: int = 1000, ci: float = 0.95, seed: int = 0,
                   bins: int = 15, calls: tuple[np.ndarray, np.ndarray] | None = None) -> PairedComparison:
    """Model a minus model b on the same cases (positive-class probabilities, aligned by case); with ``calls``, each
    model's positive calls at its own threshold, their sensitivity and specificity too."""
    y, pa = check_inputs(y_true, p_a)
    _, pb = check_inputs(y_true, p_b)

    def deltas(yy: np.ndarray, both: np.ndarray) -> dict[str, float]:
        a, b = both[:, 0], both[:, 1]
        out = {"delta_brier": float(np.mean((a - yy) ** 2) - np.mean((b - yy) ** 2)),
               "delta_ece": ece_binary(yy, a, bins)[0] - ece_binary(yy, b, bins)[0]}
        out["delta_auroc"] = float(roc_auc_score(yy, a) - roc_auc_score(yy, b)) if len(np.unique(yy)) == 2 else np.nan
        if both.shape[1] == 4:
            ca, cb, pos = both[:, 2] == 1, both[:, 3] == 1, yy == 1
            out["delta_sensitivity"] = _share(ca, pos) - _share(cb, pos)
            out["delta_specificity"] = _share(~ca, ~pos) - _share(~cb, ~pos)
        return out

    both = np.column_stack([pa, pb, *([np.asarray(c, dtype=float) for c in calls] if calls else [])])  # the pairing
    metrics: dict[str, float] = {"n": float(len(y)), **deltas(y, both)}
    if len(np.unique(y)) == 2:
        metrics.update({k: v for k, v in delong_test(y, pa, pb, groups).items() if k != "delta_auroc"})
    if calls is not None:
        metrics.update(mcnemar(y, *calls, groups))
    for key, (low, high) in bootstrap_ci(deltas, y, both, groups, n_resamples, ci, seed).items():
        metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = low, high
    both_probs = {names[0]: pa, names[1]: pb}
    return PairedComparison(names, metrics, decision_curve(y, both_probs), y, both_probs)


def write_comparison(cmp: PairedComparison, out_dir: Path, figures: bool = True) -> list[Path]:
    """comparison.json, decision_curve.csv, a markdown summary, and figures (PNG + SVG): the decision curve,
    and both models on one ROC and one reliability diagram."""
    import json

    from medtl.evaluate import plots

    claim_folder(out_dir, "--out")
    a, b = cmp.names
    m = cmp.metrics
    files = [out_dir / "paired_comparison.json", out_dir / "decision_curve.csv", out_dir / "paired_comparison.md"]
    files[0].write_text(json.dumps({"a": a, "b": b, **({"positive": cmp.positive} if cmp.positive else {}), **m},
                                   indent=1, default=float))
    cmp.curve.to_csv(files[1], index=False)

    def row(key: str, label: str) -> str:
        if np.isnan(m[key]):
            return f"| {label} | not defined: the cases are all of one class |"
        if key + "_ci_low" not in m:
            return f"| {label} | {m[key]:+.3f} (no interval: 0 bootstrap resamples) |"
        return f"| {label} | {m[key]:+.3f} [{m[key + '_ci_low']:+.3f}, {m[key + '_ci_high']:+.3f}] |"

    against = f", {cmp.positive} against the other classes" if cmp.positive else ""
    lines = [f"# {a} vs {b} on the same {int(m['n'])} cases{against}", "", "| difference (a − b) | value [95% CI] |", "| --- | --- |",
             row("delta_auroc", "ΔAUROC (paired bootstrap)"), row("delta_brier", "ΔBrier"), row("delta_ece", "ΔECE")]
    if "delta_sensitivity" in m:
        lines += [row("delta_sensitivity", "Δsensitivity, each at its own threshold"),
                  row("delta_specificity", "Δspecificity, each at its own threshold")]
    delong = (f"DeLong by patient (Obuchowski 1997, {int(m['delong_patients'])} patients)" if "delong_patients" in m
              else "DeLong")
    if "delong_p" in m:
        lines += ["", f"{delong}: AUROC {m['auroc_a']:.3f} vs {m['auroc_b']:.3f}, z = {m['delong_z']:.2f}, p = {m['delong_p']:.3g}"]
    elif "auroc_a" in m:
        lines += ["", f"DeLong: AUROC {m['auroc_a']:.3f} vs {m['auroc_b']:.3f}; no test: it needs two or more patients of each class"]
    if "mcnemar_sensitivity_p" in m:
        lines += ["", *[f"McNemar {'by patient (Obuchowski 1998)' if f'mcnemar_{name}_clustered' in m else '(exact)'}, "
                        f"{name}: {int(m[f'{name}_only_a'])} {what} only {a} calls right, {int(m[f'{name}_only_b'])} only "
                        f"{b}; p = {m[f'mcnemar_{name}_p']:.3g}"
                        for name, what in (("sensitivity", "positive cases"), ("specificity", "negative cases"))]]
    files[2].write_text("\n".join(lines) + "\n")
    if not figures:
        return files
    files += plots.decision_curve_plot(cmp.curve, (a, b), out_dir / "decision_curve.png")
    if len(np.unique(cmp.y)) == 2:  # both arms on one ROC and one reliability diagram
        files += [plots.roc_overlay_plot(cmp.y, cmp.probs, out_dir / "roc_both.png"), out_dir / "roc_both.svg",
                  plots.reliability_plot(cmp.y, cmp.probs, out_dir / "reliability_both.png", positive=cmp.class_name,
                                         subject=f"{a} vs {b}"), out_dir / "reliability_both.svg"]
    return files


def require_prediction_columns(table: pd.DataFrame, source: str) -> None:
    """A predictions table names its cases, their labels and one probability per class, or is refused."""
    from medtl.errors import MedtlError

    missing = [c for c in ("case_id", "label") if c not in table] + ([] if any(c.startswith("prob_") for c in table)
                                                                     else ["prob_<class>"])
    if missing:
        raise MedtlError(f"{source}: missing column(s) {', '.join(missing)}; give the predictions.csv of a classification "
                         "evaluation (case_id, label, prob_<class> per class)")


def shared_cases(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """The cases both tables scored, side by side: a case one model failed on, or that only one table holds, is
    left out with a warning; a case labelled differently in the two, or a different set of classes, is refused."""
    from medtl.errors import MedtlError
    from medtl.log import logger

    for table, name in zip((a, b), names):
        require_prediction_columns(table, name)
    probs = [[c for c in t.columns if c.startswith("prob_")] for t in (a, b)]
    if probs[0] != probs[1]:
        raise MedtlError(f"{names[0]} predicts {', '.join(probs[0])} but {names[1]} {', '.join(probs[1])}: "
                         "compare models of the same classes")
    scored = [t[t[probs[0]].notna().all(axis=1)] for t in (a, b)]
    for table, kept, name in zip((a, b), scored, names):
        if len(kept) < len(table):
            logger.warning("%d case(s) that %s could not score left out of the comparison", len(table) - len(kept), name)
    merged = scored[0].merge(scored[1], on="case_id", suffixes=("_a", "_b"))
    clash = merged[merged["label_a"].astype(str) != merged["label_b"].astype(str)]
    if not clash.empty:
        case = clash.iloc[0]
        raise MedtlError(f"case {case['case_id']}: labelled {case['label_a']} for {names[0]} and {case['label_b']} for "
                         f"{names[1]} ({len(clash)} such case(s)): compare evaluations made with the same labels")
    if merged.empty:
        raise MedtlError("the two predictions tables share no case: compare models on the same cases")
    only = [len(set(t["case_id"]) - set(merged["case_id"])) for t in scored]
    if any(only):
        logger.warning("compared on the %d cases both scored: %d only in %s, %d only in %s", len(merged), only[0],
                       names[0], only[1], names[1])
    return merged.drop(columns="label_b").rename(columns={"label_a": "label"})


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], n_resamples: int = 1000,
                        seed: int = 0, positive: str | None = None) -> PairedComparison:
    """Two predictions tables (case_id, label, prob_<class>...) of the same cases; the positive class is the
    second of a binary model's, or ``positive`` against the rest (a model of several classes must name it)."""
    from medtl.errors import MedtlError

    merged = shared_cases(a, b, names)
    classes = [c.removeprefix("prob_") for c in a.columns if c.startswith("prob_")]
    if positive is None and len(classes) > 2:
        raise MedtlError(f"{names[0]} and {names[1]} predict {len(classes)} classes ({', '.join(classes)}); the paired "
                         "comparison (ΔAUROC, DeLong, decision curve) is of one class against the rest: name it with "
                         "--positive CLASS")
    if positive is not None and positive not in classes:
        raise MedtlError(f"--positive {positive}: not a class of these predictions ({', '.join(classes)})")
    compared = positive or classes[-1]
    column = f"prob_{compared}"
    y = (merged["label"].astype(str) == compared).to_numpy().astype(int)
    groups = next((merged[c].astype(str).to_numpy() for c in ("patient_id_a", "patient_id", "patient_id_b") if c in merged),
                  None)  # each case its own patient when neither table knows them (a predictions.csv)
    calls = (tuple((merged[f"predicted_{s}"].astype(str) == compared).to_numpy() for s in "ab")
             if {"predicted_a", "predicted_b"} <= set(merged.columns) else None)  # each model's calls, at its threshold
    cmp = compare_models(y, merged[f"{column}_a"].to_numpy(), merged[f"{column}_b"].to_numpy(), names, groups,
                         n_resamples, seed=seed, calls=calls)
    cmp.positive = compared if len(classes) > 2 else ""
    cmp.class_name = compared
    return cmp
