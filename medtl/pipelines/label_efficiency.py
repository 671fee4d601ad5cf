"""Label efficiency: how many labelled cases each transfer strategy needs. Every strategy trains on nested,
patient-grouped, class-stratified subsets of the training split (several seeds where a subset is small),
every model is tested on the same test cases, and the parent run holds the learning curve, the table and the
paired comparison (study.compare) at every size."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from medtl.config import Config
from medtl.data.manifest import class_names, read_manifest, rows_of_split
from medtl.data.splits import nested_subsets, split_manifest
from medtl.errors import ConfigError
from medtl.evaluate.plots import learning_curve_plot
from medtl.pipelines import task_pipeline
from medtl.steps import paired_step, run_context, strategy_variant
from medtl.train.run import run_dir


def run(cfg: Config) -> dict:
    study, seg = cfg.study, cfg.data.task == "segmentation"
    absent = [s for s in study.compare if s not in study.strategies]
    if absent:
        raise ConfigError(f"study.compare names {absent[0]}, which study.strategies ({', '.join(study.strategies)}) does "
                          "not train; add it there or compare two of those")
    pipeline = task_pipeline(cfg)
    manifest = read_manifest(cfg.data.manifest, cfg.data.data_root)  # type: ignore[arg-type]
    table = manifest.table if manifest.table["split"].notna().all() else split_manifest(manifest.table, 0.15, 0.15, cfg.train.seed)
    train = rows_of_split(table, "train")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    several = not seg and manifest.has_labels and len(class_names(manifest, cfg.data.classes)) > 2
    metric = "dice_mean" if seg else "auroc_macro" if several else "auroc"
    rows, predictions = [], {}
    with run_context(cfg.tracking, f"{cfg.name}-label-efficiency") as parent:
        for seed in range(study.seeds):
            subsets = nested_subsets(train, study.fractions, cfg.train.seed + seed)
            for fraction, cases in subsets.items():
                if seed > 0 and fraction > study.small:
                    continue
                path = subset_manifest(table, cases, out / f"f{fraction:g}_s{seed}.csv")
                for strategy in study.strategies:
                    variant = study_variant(cfg, strategy, path, manifest.root, f"{fraction:g}-s{seed}")
                    result = pipeline.run(variant, nested=True)
                    m = result["evaluation"].metrics if result["evaluation"] else {}
                    rows.append({"strategy": strategy, "fraction": fraction, "n_labelled": len(cases), "seed": seed,
                                 **curve_metric(m, metric)})
                    if result["evaluation"] is not None and result["evaluation"].predictions is not None:
                        predictions[(strategy, fraction, seed)] = result["evaluation"].predictions
        curve = pd.DataFrame(rows)
        paired = _paired(predictions, study.compare, out, parent, cfg.evaluate.bootstrap, cfg.evaluate.figures)
        paired.to_csv(out / "paired_by_size.csv", index=False)
        for f in [out / "paired_by_size.csv", *write_curve(curve, metric, out)]:
            parent.log_artifact(f)
    return {"table": curve, "paired": paired, "summary": _summary(curve, paired, metric)}


def curve_metric(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """One model's point on a learning curve: its test metric with the bootstrap CI (NaN when undefined)."""
    return {metric: metrics.get(metric, math.nan), "ci_low": metrics.get(f"{metric}_ci_low", math.nan),
            "ci_high": metrics.get(f"{metric}_ci_high", math.nan)}


def write_curve(curve: pd.DataFrame, metric: str, out: Path, figures: bool = True) -> list[Path]:
    """learning_curve.csv and, with ``figures``, its plot (PNG and SVG) in ``out``."""
    curve.to_csv(out / "learning_curve.csv", index=False)
    return [out / "learning_curve.csv", *(learning_curve_plot(curve, metric, out / "learning_curve.png") if figures else [])]


def subset_manifest(table: pd.DataFrame, train_cases: set[str], path: Path) -> Path:
    keep = (table["split"] != "train") | table["case_id"].astype(str).isin(train_cases)
    part = table[keep]
    cols = [c for c in part.columns if c not in ("image", "mask", "image_path", "mask_path")]
    written = part[cols].assign(image=part["image_path"])
    if "mask_path" in part:
        written["mask"] = part["mask_path"]
    written.to_csv(path, index=False)
    return path


def study_variant(cfg: Config, strategy: str, manifest: Path, root: Path, tag: str) -> Config:
    v = strategy_variant(cfg, strategy, register=False)
    data = v.data.model_copy(update={"manifest": manifest, "data_root": cfg.data.data_root or root})
    tracking = v.tracking.model_copy(update={"log_model": False})  # dozens of small models: their model.pt is kept
    evaluate = v.evaluate.model_copy(update={"typicality": False})  # measured for the curve, not put to scoring
    return v.model_copy(update={"data": data, "tracking": tracking, "evaluate": evaluate,
                                "name": f"{cfg.name}-{strategy}-{tag}"})


PAIRED_CLASSIFICATION = ("delta_auroc", "delta_auroc_ci_low", "delta_auroc_ci_high", "delong_p", "delta_brier", "delta_ece")
PAIRED_SEGMENTATION = ("delta_dice", "delta_dice_ci_low", "delta_dice_ci_high", "wilcoxon_p", "delta_hd95_mm",
                       "delta_hd95_mm_ci_low", "delta_hd95_mm_ci_high")


def _paired(predictions: dict, pair: tuple[str, str], out: Path, parent, n_resamples: int, figures: bool) -> pd.DataFrame:
    """The paired comparison of ``pair`` on the same test cases at every size (seed 0)."""
    rows = []
    for (strategy, fraction, seed), a in sorted(predictions.items(), key=lambda kv: kv[0][1]):
        if strategy != pair[0] or seed != 0 or (pair[1], fraction, 0) not in predictions:
            continue
        cmp = paired_step(parent, a, predictions[(pair[1], fraction, 0)], pair, out / f"paired_f{fraction:g}", n_resamples,
                          figures=figures)
        if cmp is None:
            break
        keys = PAIRED_SEGMENTATION if "delta_dice" in cmp.metrics else PAIRED_CLASSIFICATION
        rows.append({"fraction": fraction, **{k: cmp.metrics.get(k, math.nan) for k in keys}})
    return pd.DataFrame(rows)


def _summary(curve: pd.DataFrame, paired: pd.DataFrame, metric: str) -> str:
    if curve.empty:
        return "no model was trained"
    table = curve.groupby(["strategy", "n_labelled"])[metric].agg(["mean", "count"]).unstack(0)["mean"].round(3)
    text = f"test {metric} (mean over seeds) by labelled cases:\n{table.to_string()}"
    if not paired.empty:
        text += "\n\npaired difference at each size (seed 0):\n" + paired.round(4).to_string(index=False)
    return text
