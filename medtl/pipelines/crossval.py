"""Cross-validation: k patient-grouped, stratified folds, each a nested MLflow run of the pipeline for the config's
task, diagnosis or segmentation (fold k tests, fold k+1 validates, the rest trains); the parent run holds the mean
and sd of each test metric."""

from __future__ import annotations

import numpy as np

from medtl.config import Config
from medtl.data.manifest import read_manifest
from medtl.data.splits import fold_manifest
from medtl.errors import ConfigError
from medtl.pipelines import task_pipeline
from medtl.steps import run_context
from medtl.train.run import run_dir


def run(cfg: Config, folds: int = 5) -> dict:
    diagnosis = task_pipeline(cfg)
    manifest = read_manifest(cfg.data.manifest, cfg.data.data_root)  # type: ignore[arg-type]
    table = manifest.table
    need = "cross-validation needs at least 3 folds (one tests, the next validates, the rest train)"
    if "fold" not in table:
        if folds < 3:
            raise ConfigError(f"--folds {folds}: {need}")
        table = fold_manifest(table, folds, cfg.train.seed)
    k = int(table["fold"].astype(int).max()) + 1
    if k < 3:
        raise ConfigError(f"the manifest's fold column holds {k} fold(s): {need}")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    per_fold: list[dict[str, float]] = []
    with run_context(cfg.tracking, f"{cfg.name}-cv{k}") as parent:
        for fold in range(k):
            f = table["fold"].astype(int)
            split = np.where(f == fold, "test", np.where(f == (fold + 1) % k, "val", "train"))
            path = out / f"fold{fold}_manifest.csv"
            cols = [c for c in table.columns if c not in ("image", "mask", "split", "image_path", "mask_path", "fold")]
            fold_table = table[cols].assign(image=table["image_path"], split=split)
            if "mask_path" in table:
                fold_table["mask"] = table["mask_path"]
            fold_table.to_csv(path, index=False)
            data = cfg.data.model_copy(update={"manifest": path, "data_root": cfg.data.data_root or manifest.root})
            tracking = cfg.tracking.model_copy(update={"registered_model": None})
            evaluate = cfg.evaluate.model_copy(update={"typicality": False})  # a fold's model estimates, it is not used
            variant = cfg.model_copy(update={"data": data, "tracking": tracking, "evaluate": evaluate,
                                             "name": f"{cfg.name}-fold{fold}"})
            result = diagnosis.run(variant, nested=True)
            per_fold.append(result["evaluation"].metrics if result["evaluation"] else {})
        summary = summarise_folds(per_fold)
        parent.log_metrics(summary)
    return {"folds": per_fold, "cv": summary, "summary": summary_lines(summary)}


SHOWN = ("auroc", "sensitivity", "specificity", "auroc_macro", "balanced_accuracy", "ece", "ece_calibrated",
         "dice_mean", "iou_mean", "hd95_mm_mean")


def summary_lines(summary: dict[str, float]) -> str:
    """Mean ± sd of each headline figure every fold reports: a fold whose test cases are all of one class has no
    sensitivity, and a model of several classes reports macro AUROC instead."""
    return "\n".join(f"{key}: {summary[f'cv_test_{key}_mean']:.3f} ± {summary[f'cv_test_{key}_sd']:.3f}"
                     for key in SHOWN if f"cv_test_{key}_mean" in summary)


def summarise_folds(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Mean and sample sd over folds of every test metric that all folds report."""
    keys = set.intersection(*(set(m) for m in per_fold)) if per_fold else set()
    out = {}
    for key in sorted(keys):
        values = np.array([m[key] for m in per_fold], dtype=float)
        if np.all(np.isfinite(values)):
            out[f"cv_test_{key}_mean"] = float(values.mean())
            out[f"cv_test_{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
