"""A classification or segmentation evaluation: every number (metrics.json), tables a person reads
(report.md), per-case predictions and plots, all in one output folder."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.config import EvaluateConfig
from medtl.evaluate import plots
from medtl.evaluate.bootstrap import bootstrap_ci, widen_to_wilson
from medtl.evaluate.calibration import apply_temperature, calibration_metrics, ece_and_brier, estimate_prior
from medtl.evaluate.calibration_line import calibration_line, suffixed
from medtl.evaluate.metrics import classification_metrics, proportion_counts, undefined_reasons
from medtl.evaluate.subgroups import subgroup_metrics
from medtl.probability import decide, log_odds, log_prior_ratio, probabilities

CI_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy", "auroc_macro",
              "accuracy")


@dataclass
class Evaluation:
    metrics: dict[str, float]
    """Flat names, e.g. auroc, auroc_ci_low, ece, ece_calibrated, subgroup_site_A_auroc."""
    notes: list[str]
    files: list[Path] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    """Per case: case_id, label, prob_<class>, predicted and, in memory only, patient_id (not in predictions.csv)."""
    target_prior: list[float] | None = None
    """The deployment class prior chosen by ``evaluate.prevalence``, if any."""


def _point_and_ci(y: np.ndarray, cal: np.ndarray, logits: np.ndarray, threshold: float, groups: np.ndarray,
                  cfg: EvaluateConfig, shift: Callable[[np.ndarray, np.ndarray], np.ndarray | None] | None) -> dict[str, float]:
    """Point estimates, and patient-bootstrap CIs of discrimination and of calibration after temperature and
    after the prior shift; ``shift`` re-estimates the prevalence in each resample, so its CI carries that
    estimate's uncertainty too."""
    k = cal.shape[1]

    def fn(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        m = {n: v for n, v in classification_metrics(yy, pp[:, :k], threshold).items() if n in CI_METRICS}
        m.update({f"{n}_calibrated": v for n, v in ece_and_brier(yy, pp[:, :k], cfg.bins).items()})
        adjusted = None if shift is None else shift(pp[:, :k], pp[:, k:])
        if adjusted is not None:
            m.update({f"{n}_prior_adjusted": v for n, v in ece_and_brier(yy, adjusted, cfg.bins).items()})
        return m

    out = classification_metrics(y, cal, threshold)
    if cfg.bootstrap > 0 and len(y):
        stacked = np.hstack([cal, logits])
        for name, (lo, hi) in bootstrap_ci(fn, y, stacked, groups, cfg.bootstrap, cfg.ci, cfg.seed).items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
        widen_to_wilson(out, proportion_counts(y, cal, threshold), cfg.ci)
    return out


def _subgroups(table: pd.DataFrame, y: np.ndarray, probs: np.ndarray, threshold: float, groups: np.ndarray,
               columns: list[str], cfg: EvaluateConfig, notes: list[str]) -> dict[str, float]:
    """The headline metrics per subgroup, calibration after temperature among them (a model may be calibrated for
    all and not for a site or a sex), with patient-bootstrap CIs, like the whole split's."""
    def fn(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        out = {n: v for n, v in classification_metrics(yy, pp, threshold).items() if n in CI_METRICS}
        return out | {f"{n}_calibrated": v for n, v in ece_and_brier(yy, pp, cfg.bins).items()}

    def measure(idx: np.ndarray) -> dict[str, float]:
        out = fn(y[idx], probs[idx])
        if cfg.bootstrap > 0:
            for name, (lo, hi) in bootstrap_ci(fn, y[idx], probs[idx], groups[idx], cfg.bootstrap, cfg.ci, cfg.seed).items():
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
            widen_to_wilson(out, proportion_counts(y[idx], probs[idx], threshold), cfg.ci)
        return out

    return subgroup_metrics(table, columns, cfg.min_subgroup_size, notes, measure)


def evaluate_classification(
    table: pd.DataFrame, logits: np.ndarray, classes: list[str], threshold: float, temperature: float,
    cfg: EvaluateConfig, out_dir: Path, subgroups: list[str] | None = None,
    source_prior: list[float] | None = None, subject: str = "", source_rates: list[float] | None = None,
    typicality: np.ndarray | None = None, model_temperature: float | None = None,
) -> Evaluation:
    """``table`` holds case_id, label (class name), patient_id and subgroup columns, aligned with ``logits``.
    ``source_prior`` is the class mix the temperature was fitted on, needed for a prior-shift correction;
    ``source_rates`` the model's validation call rates at its threshold, which check an EM estimate;
    ``typicality`` each case's, where the model measures it (how many look unlike the training cases);
    ``model_temperature`` the model's own where ``temperature`` was fitted on these cases (its ECE is reported too)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(classes)}
    y = table["label"].map(index).to_numpy().astype(int)
    groups = table["patient_id"].astype(str).to_numpy()
    raw, cal = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    notes = undefined_reasons(y, {})
    metrics = calibration_metrics(y, raw, cfg.bins)
    metrics.update({f"{k}_calibrated": v for k, v in calibration_metrics(y, cal, cfg.bins).items()})
    if cal.shape[1] == 2:
        metrics |= calibration_line(y, log_odds(logits), cfg.ci)
        metrics |= suffixed(calibration_line(y, log_odds(logits, temperature), cfg.ci), "_calibrated")
    metrics["temperature"], metrics["threshold"] = float(temperature), float(threshold)
    if model_temperature is not None:
        notes.append(_site_temperature_note(y, logits, temperature, model_temperature, cfg, metrics))
    prior = _prior_shift(logits, y, cal, temperature, threshold, source_prior, source_rates, cfg, metrics, notes)
    shift = None if prior is None else _resampled_shift(temperature, threshold, source_prior, source_rates, cfg)
    metrics.update(_point_and_ci(y, cal, logits, threshold, groups, cfg, shift))
    notes += _no_width_notes(metrics, len(y))
    metrics.update(_subgroups(table, y, cal, threshold, groups, subgroups or [], cfg, notes))
    pred = decide(cal, threshold)
    predictions = pd.DataFrame({"case_id": table["case_id"].to_numpy(), "label": table["label"].to_numpy(),
                                **{f"prob_{c}": cal[:, i] for i, c in enumerate(classes)},
                                "predicted": [classes[i] for i in pred]})
    if typicality is not None:
        predictions = _with_typicality(predictions, typicality, metrics, notes)
    files = [out_dir / "predictions.csv"]
    predictions.to_csv(files[0], index=False)
    if cfg.figures:
        files += _classification_plots(y, raw, cal, pred, classes, threshold, groups, out_dir, cfg, subject, metrics)
    # patients stay in memory, for the paired comparison's patient bootstrap; predictions.csv never holds them
    ev = Evaluation(metrics, notes, files, predictions.assign(patient_id=groups), prior)
    files += write_report(ev, out_dir, classes)
    return ev


def _site_temperature_note(y: np.ndarray, logits: np.ndarray, temperature: float, model_temperature: float,
                           cfg: EvaluateConfig, metrics: dict[str, float]) -> str:
    """The model's own temperature and its ECE, beside the one fitted on these cases' scans."""
    metrics["model_temperature"] = float(model_temperature)
    metrics["ece_model_temperature"] = calibration_metrics(y, apply_temperature(logits, model_temperature), cfg.bins)["ece"]
    return (f"temperature {temperature:.3f} fitted on these {len(y)} cases' own scans, labels unused (PseudoCal, "
            f"evaluate.site_temperature), in place of the model's validation temperature {model_temperature:.3f}: ECE "
            f"after temperature {metrics['ece_calibrated']:.3f} at it, {metrics['ece_model_temperature']:.3f} at the "
            "model's; the threshold moved with it, so every case is called as before")


def _no_width_notes(metrics: dict[str, float], n: int) -> list[str]:
    """What an AUROC interval of no width means: classes the model separates perfectly in every resample, which
    says the cases are few, not that the figure is certain."""
    return [f"{name}: its interval has no width, because the {n} cases' classes are separated perfectly in every "
            "resample; that says the cases are few, not that the figure is certain: evaluate on more cases"
            for name in ("auroc", "auroc_macro")
            if metrics.get(f"{name}_ci_low") is not None
            and np.allclose([metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"]], 1.0, rtol=0, atol=1e-9)]  # 1 - 1e-16


def _with_typicality(predictions: pd.DataFrame, typicality: np.ndarray, metrics: dict[str, float],
                     notes: list[str]) -> pd.DataFrame:
    """Each case's typicality in the predictions, and the share unlike the training cases as a metric and a note: on a
    new site's cases, far more than chance says the site differs from the training data before any label does."""
    from medtl.typicality import unlike_training, unlike_training_cases

    predictions = predictions.assign(typicality=typicality, unlike_training=[unlike_training(p) for p in typicality])
    unlike = unlike_training_cases(predictions)
    if unlike is not None:
        metrics["unlike_training_share"] = len(unlike.flagged) / unlike.cases
        notes.append(unlike.message())
    return predictions


def _prior_shift(logits: np.ndarray, y: np.ndarray, cal: np.ndarray, temperature: float, threshold: float,
                 source_prior: list[float] | None, source_rates: list[float] | None, cfg: EvaluateConfig,
                 metrics: dict[str, float], notes: list[str]) -> list[float] | None:
    """Calibration after the prior-shift correction (known prevalence, or EM on the unlabelled scores)."""
    if cfg.prevalence is None or source_prior is None or cal.shape[1] != 2:
        return None
    source = np.asarray(source_prior, dtype=float)
    target, how = _target_prior(cal, source, threshold, source_rates, cfg)
    if target is None:
        notes.append(f"prior shift: prevalence {how}; no correction applied")
        return None
    shift = log_prior_ratio(source, target)
    adjusted = probabilities(logits, temperature, shift)
    metrics.update({f"{k}_prior_adjusted": v for k, v in calibration_metrics(y, adjusted, cfg.bins).items()})
    metrics.update(suffixed(calibration_line(y, log_odds(logits, temperature, shift), cfg.ci), "_prior_adjusted"))
    metrics["prevalence_used"], metrics["prevalence_calibration"] = float(target[1]), float(source[1])
    notes.append(f"prior shift: positive-class prevalence {target[1]:.3f} ({how}) instead of {source[1]:.3f} "
                 "(the validation cases the temperature was fitted on); applied as a logit offset after temperature")
    return [float(v) for v in target]


def _target_prior(cal: np.ndarray, source: np.ndarray, threshold: float, source_rates: list[float] | None,
                  cfg: EvaluateConfig) -> tuple[np.ndarray | None, str]:
    """The deployment class prior ``evaluate.prevalence`` asks for (given, or estimated from the unlabelled
    scores), and how it was obtained."""
    if cfg.prevalence == "em":
        return estimate_prior(cal, source, threshold, source_rates)
    return np.array([1 - cfg.prevalence, cfg.prevalence]), "given: evaluate.prevalence, or evaluate --prevalence"


def _resampled_shift(temperature: float, threshold: float, source_prior: list[float] | None,
                     source_rates: list[float] | None, cfg: EvaluateConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray | None]:
    """The prior-shift correction as a bootstrap resample redoes it: (calibrated probabilities, logits) ->
    probabilities under the prevalence estimated from that resample's scores (None where none is)."""
    source = np.asarray(source_prior, dtype=float)

    def shift(cal: np.ndarray, logits: np.ndarray) -> np.ndarray | None:
        target = _target_prior(cal, source, threshold, source_rates, cfg)[0]
        return None if target is None else probabilities(logits, temperature, log_prior_ratio(source, target))
    return shift


def _classification_plots(y, raw, cal, pred, classes, threshold, groups, out_dir, cfg, subject, metrics) -> list[Path]:
    """Every title names the model, the split and n (``subject``: "MODEL, SPLIT split"); the reliability diagram's
    legend gives each curve's calibration slope and intercept beside its ECE."""
    files = [plots.confusion_plot(y, pred, classes, out_dir / "confusion_matrix.png", subject)]
    if len(classes) == 2 and len(np.unique(y)) == 2:
        reported = (metrics["auroc_ci_low"], metrics["auroc_ci_high"]) if "auroc_ci_low" in metrics else None
        files.append(plots.roc_plot(y, cal[:, 1], threshold, out_dir / "roc.png", groups, seed=cfg.seed,
                                    title=f"ROC — {subject}" if subject else "ROC", auroc_ci=reported))
        files.append(plots.pr_plot(y, cal[:, 1], out_dir / "precision_recall.png", threshold,
                                   title=f"Precision-recall — {subject}" if subject else "Precision-recall"))
        def named(step: str, suffix: str) -> str:
            slope, intercept = metrics.get(f"calibration_slope{suffix}"), metrics.get(f"calibration_intercept{suffix}")
            known = slope is not None and intercept is not None and np.isfinite([slope, intercept]).all()
            return f"{step} (slope {slope:.2f}, intercept {intercept:+.2f})" if known else step

        curves = {named("before temperature", ""): raw[:, 1], named("after temperature", "_calibrated"): cal[:, 1]}
        files.append(plots.reliability_plot(y, curves, out_dir / "reliability.png", min(cfg.bins, 10), classes[1],
                                            subject=subject))
    return files + [f.with_suffix(".svg") for f in files if f.with_suffix(".svg").is_file()]


def fmt(metrics: dict[str, float], name: str) -> str:
    v = metrics.get(name, float("nan"))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "undefined"
    lo, hi = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None and not math.isnan(lo) else f"{v:.3f}"


def write_report(ev: Evaluation, out_dir: Path, classes: list[str]) -> list[Path]:
    m = ev.metrics
    (out_dir / "metrics.json").write_text(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                      for k, v in m.items()}, indent=1))
    positive = f" (positive: {classes[1]})" if len(classes) == 2 else ""
    lines = ["# Evaluation", "", f"Classes: {', '.join(classes)}{positive}; cases: {int(m.get('n', 0))}", "",
             "| metric | value [95% CI] |", "| --- | --- |"]
    for name in ("auroc", "auroc_macro", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                 "ppv", "npv", "f1", "threshold"):
        if name in m and (name != "threshold" or len(classes) == 2):  # several classes: the most probable is called
            lines.append(f"| {name} | {fmt(m, name)} |")
    shifted = "ece_prior_adjusted" in m
    lines += ["", "| calibration | before temperature | after temperature |" + (" after prior shift |" if shifted else ""),
              "| --- | --- | --- |" + (" --- |" if shifted else "")]
    for name in ("ece", "ece_equal_mass", "mce", "brier", "nll", "ece_classwise", "calibration_slope",
                 "calibration_intercept"):
        if name in m:
            lines.append(f"| {name} | {fmt(m, name)} | {fmt(m, name + '_calibrated')} |"
                         + (f" {fmt(m, name + '_prior_adjusted')} |" if shifted else ""))
    if "calibration_slope" in m:
        lines.append("\nCalibration slope 1 and intercept 0 are perfect: a slope below 1 is probabilities too extreme, "
                     "above 1 too modest; an intercept below 0 is risks overestimated on the whole, above 0 "
                     "underestimated (Wald 95% intervals). ece is over equal-width bins, ece_equal_mass over bins of "
                     "equal counts; the reliability diagram's legend gives the ECE over the diagram's own bins.")
    own = f" (fitted on these cases' scans; the model's own {m['model_temperature']:.3f})" if "model_temperature" in m else ""
    lines.append(f"\nTemperature: {m.get('temperature', 1.0):.3f}{own}")
    sub = sorted({k.rsplit('_', 1)[0] for k in m if k.startswith("subgroup_") and k.endswith("_n")})
    if sub:
        shown = ((("AUROC macro", "auroc_macro"), ("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"))
                 if "auroc_macro" in m else (("AUROC", "auroc"), ("sensitivity", "sensitivity"),
                                             ("specificity", "specificity"))) + (("ECE after temperature", "ece_calibrated"),)
        lines += ["", "| subgroup | n | " + " | ".join(name for name, _ in shown) + " |",
                  "| --- | --- |" + " --- |" * len(shown)]
        for s in sub:
            measured = f"{s}_{shown[1][1]}" in m
            lines.append(f"| {s.removeprefix('subgroup_')} | {int(m[s + '_n'])} | "
                         + " | ".join(fmt(m, f"{s}_{key}") if measured else "too small" for _, key in shown) + " |")
    if ev.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in ev.notes]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return [out_dir / "metrics.json", out_dir / "report.md"]


def headline(m: dict[str, float], title: str) -> str:
    """The few numbers a reader wants first, as the run's description (MLflow's note): discrimination with
    its CI, the operating point, calibration before and after each step, and n."""
    if "dice_mean" in m:
        rows = [("Dice (mean)", f"{m['dice_mean']:.3f}"), ("HD95 mm (mean)", f"{m.get('hd95_mm_mean', float('nan')):.2f}"),
                ("cases", f"{int(m['n'])}")]
    elif "auroc_macro" in m:  # several classes: each case called its most probable, no threshold
        rows = [("AUROC macro [95% CI]", fmt(m, "auroc_macro")), ("accuracy", fmt(m, "accuracy")),
                ("balanced accuracy", fmt(m, "balanced_accuracy")),
                ("ECE before / after temperature", f"{fmt(m, 'ece')} / {fmt(m, 'ece_calibrated')}"), ("cases", f"{int(m.get('n', 0))}")]
    else:
        rows = [("AUROC [95% CI]", fmt(m, "auroc")),
                ("sensitivity at the threshold", fmt(m, "sensitivity")), ("specificity at the threshold", fmt(m, "specificity")),
                ("threshold (chosen on validation)", fmt(m, "threshold")),
                ("ECE before / after temperature", f"{fmt(m, 'ece')} / {fmt(m, 'ece_calibrated')}")]
        if "ece_prior_adjusted" in m:
            rows.append(("ECE after prior shift", f"{fmt(m, 'ece_prior_adjusted')} (prevalence {m['prevalence_used']:.3f})"))
        rows.append(("cases", f"{int(m.get('n', 0))}"))
    return "\n".join([f"**{title}**", "", "| | |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]])
