"""The model card a registered version carries (its MLflow description and tags): what the model is for,
the data it saw, how well it did with CIs, how calibrated it is, where it may fail, and the TRIPOD+AI items
a run can fill. What only a person can say is marked NEEDS INPUT, never invented."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from medtl.config import Config
from medtl.evaluate.report import fmt
from medtl.evaluate.segmentation import class_names

NEEDS = "NEEDS INPUT"
PERFORMANCE = (("AUROC", "auroc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "ppv"),
               ("NPV", "npv"), ("Dice (mean)", "dice_mean"))
SEVERAL_CLASSES = (("AUROC macro (one-vs-rest)", "auroc_macro"), ("accuracy", "accuracy"),
                   ("balanced accuracy", "balanced_accuracy"))
"""A model of several classes calls each case its most probable class: no sensitivity at a threshold."""


def model_card(cfg: Config, table: pd.DataFrame, metrics: dict[str, float], dataset_digest: str, notes: list[str],
               classes: list[str] | None = None, views: list[str] | None = None) -> str:
    """Markdown, short enough to read in the registry page. ``classes`` and ``views`` are the model's: the config
    names neither when the manifest's labels and films give them."""
    counts = table.groupby(["split", "label"]).size().unstack(fill_value=0) if "label" in table else table.groupby("split").size()
    sites = [c for c in cfg.data.subgroups if c in table]
    lines = [f"# {cfg.tracking.registered_model or cfg.name}", "",
             "## Intended use", cfg.tracking.intended_use or f"{NEEDS}: clinical question, population, setting, user.", "",
             "## Model", f"{cfg.model.backbone} ({cfg.model.pretrained} weights), transfer strategy {cfg.transfer.strategy}, "
             f"{cfg.data.spatial_dims}D input {cfg.data.image_size}, {cfg.data.modality}; classes: "
             f"{', '.join(classes or cfg.data.classes or [])}. Trained with {_training(cfg)}."
             + (" Each prediction averages the scan and its left-right mirror (test-time mirroring)."
                if cfg.evaluate.tta else "")
             + (f" Takes {', '.join(views)} films only (DICOM ViewPosition, or the manifest's view column); a film of "
                "another view is refused, one that states none is not checked." if views else ""), "",
             "## Data", f"Manifest digest (SHA-256) `{dataset_digest[:16]}`; patient-level splits.", "",
             *_markdown_counts(counts), ""]
    if sites:
        lines += [f"Subgroups recorded: {', '.join(sites)}.", ""]
    lines += ["## Performance (test split, 95% CI by patient bootstrap)",
              "| metric | value |", "| --- | --- |",
              *[f"| {name} | {fmt(metrics, key)} |"
                for name, key in (SEVERAL_CLASSES if "auroc_macro" in metrics else PERFORMANCE) if key in metrics],
              *[f"| Dice {name} | {fmt(metrics, f'dice_{name}_mean')} |" for name in class_names(metrics)], "",
              "## Calibration", f"ECE {fmt(metrics, 'ece')} before and {fmt(metrics, 'ece_calibrated')} after temperature "
              f"scaling (T = {metrics.get('temperature', math.nan):.3f}, fitted on validation)"
              + (f"; {fmt(metrics, 'ece_prior_adjusted')} after the prior-shift correction to prevalence "
                 f"{metrics['prevalence_used']:.3f}." if "ece_prior_adjusted" in metrics else ".")
              + (f" Calibration slope {fmt(metrics, 'calibration_slope_calibrated')} and intercept "
                 f"{fmt(metrics, 'calibration_intercept_calibrated')} after temperature (1 and 0 are perfect)."
                 if "calibration_slope_calibrated" in metrics else ""), "",
              "## Subgroups"]
    sub = sorted({k.rsplit("_", 1)[0] for k in metrics if k.startswith("subgroup_") and k.endswith("_n")})
    shown = (("Dice", "_dice_mean") if "dice_mean" in metrics else ("AUROC macro", "_auroc_macro")
             if "auroc_macro" in metrics else ("AUROC", "_auroc"))
    lines += [f"- {s.removeprefix('subgroup_')}: n {int(metrics[s + '_n'])}, {shown[0]} {fmt(metrics, s + shown[1])}"
              + (f", ECE after temperature {fmt(metrics, s + '_ece_calibrated')}" if s + "_ece_calibrated" in metrics else "")
              for s in sub] or ["- none recorded (set data.subgroups)"]
    lines += ["", "## Limitations", *[f"- {n}" for n in notes],
              f"- {NEEDS}: populations, scanners and sites not represented in the training data; measured shift, if any.",
              "", "## TRIPOD+AI items this run fills",
              "- 5 (data source: manifest digest), 6 (outcome: classes), 9 (missing data: cases skipped are listed in the run),",
              "- 12 (model and training: config artifact), 16 (performance with CIs), 17 (calibration), 19 (subgroups).",
              f"- {NEEDS}: 3 (objectives), 7 (predictors' clinical meaning), 8 (sample size rationale), 22 (funding)."]
    return "\n".join(lines)


def _training(cfg: Config) -> str:
    """The objective in words: what shaped the model's confidence, which a reader of its calibration wants to know."""
    t = cfg.train
    if cfg.transfer.strategy == "feature_extraction":
        return f"a {cfg.transfer.head} head fitted on the frozen backbone's features"
    weights = t.class_weights if isinstance(t.class_weights, str) else "explicit"
    loss = {"ce": "cross-entropy", "focal": "focal", "dice_ce": "Dice + cross-entropy",
            "dice_focal": "Dice + focal"}[t.loss]
    parts = [*(["the head started from a logistic probe on the frozen features (LP-FT)"] if cfg.transfer.probes_first else []),
             f"{loss} loss" + (f" (gamma {t.focal_gamma:g})" if "focal" in t.loss else ""),
             *([f"{weights.replace('_', '-')} class weights"] if weights != "none" else []),
             *([f"mixup (alpha {t.mixup_alpha:g})"] if t.mixup_alpha else []), f"up to {t.epochs} epochs",
             *([f"its weights averaged over about {t.ema_epochs:g} epoch{'' if t.ema_epochs == 1 else 's'} of steps "
                "(exponential moving average)"] if t.ema_epochs else [])]
    return ", ".join(parts)


def _markdown_counts(counts: pd.DataFrame | pd.Series) -> list[str]:
    """Cases per split (rows) and class (columns) as a markdown table."""
    frame = counts.to_frame("cases") if isinstance(counts, pd.Series) else counts
    head = ["| split | " + " | ".join(map(str, frame.columns)) + " |", "| --- |" + " --- |" * len(frame.columns)]
    return head + [f"| {split} | " + " | ".join(str(int(v)) for v in row) + " |" for split, row in frame.iterrows()]


def card_tags(metrics: dict[str, float], dataset_digest: str) -> dict[str, Any]:
    """Registry tags to sort and filter versions by, and that the promotion gate reads."""
    keys = ("auroc", "auroc_ci_low", "auroc_ci_high", "auroc_macro", "auroc_macro_ci_low", "auroc_macro_ci_high",
            "ece_calibrated", "dice_mean")
    tags = {f"test_{k}": f"{metrics[k]:.4f}" for k in keys if k in metrics and not math.isnan(metrics[k])}
    return {**tags, "dataset_sha256": dataset_digest[:16]}


def tagged_auroc(tags: dict[str, str]) -> tuple[str, str | None, str | None, str | None]:
    """A version's test AUROC and its CI from its tags: the binary one, or a model of several classes' macro
    one-vs-rest AUROC. The tag it is read from, then value, CI low and CI high as tagged (None where not)."""
    key = "test_auroc" if "test_auroc" in tags or "test_auroc_macro" not in tags else "test_auroc_macro"
    return key, tags.get(key), tags.get(f"{key}_ci_low"), tags.get(f"{key}_ci_high")


def gate_failures(tags: dict[str, str], min_auroc_ci_low: float | None, max_ece: float | None) -> list[str]:
    """Why a version may not be promoted under the configured gates (empty: it may). The gates are a classifier's:
    a segmentation model (tagged with its Dice) has no AUROC or ECE to hold them to."""
    failures: list[str] = []
    if "test_dice_mean" in tags:
        return failures
    if min_auroc_ci_low is not None:
        low = float(tagged_auroc(tags)[2] or "nan")
        if not low >= min_auroc_ci_low:
            failures.append(f"AUROC CI lower bound {low:.3f} is below the gate {min_auroc_ci_low:.3f}")
    if max_ece is not None:
        ece = float(tags.get("test_ece_calibrated", "nan"))
        if not ece <= max_ece:
            failures.append(f"calibrated ECE {ece:.3f} is above the gate {max_ece:.3f}")
    return failures
