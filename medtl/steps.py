"""The steps pipelines compose: each takes plain inputs from the step before and reports to the run."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtl.config import Config, TrackingConfig
from medtl.data.manifest import rows_of_split
from medtl.evaluate.calibration import calibrate
from medtl.evaluate.report import Evaluation, headline
from medtl.evaluate.run import evaluate_table
from medtl.log import logger
from medtl.models.checkpoint import ModelBundle, save_model
from medtl.observe import NullTracker, Tracker
from medtl.train.run import TrainResult, train

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def run_context(cfg: TrackingConfig, name: str, nested: bool = False, checkpoint_dir: Path | None = None,
                tags: dict[str, str] | None = None, resume: bool = False) -> Iterator[Tracker]:
    """An MLflow run when tracking is on (the store checked before anything else), else a no-op tracker."""
    if not cfg.enabled or not is_main_process():  # under torchrun, rank 0 alone keeps the record
        with nullcontext():
            yield NullTracker()
        return
    from medtl.tracking import tracked_run

    with tracked_run(cfg, name, nested, checkpoint_dir, tags, resume) as tracker:
        yield tracker


def is_main_process() -> bool:
    """Rank 0 under torchrun (every process otherwise): the one that evaluates, logs and registers."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def train_step(cfg: Config, tracker: Tracker, resume: bool = False) -> TrainResult:
    from medtl.run_record import applied_params, run_tags

    tracker.set_tags(run_tags(cfg, {}))
    tracker.log_params(applied_params(cfg))
    result = train(cfg, resume=resume, tracker=tracker)
    tracker.log_artifact(result.out_dir / "config.yaml")
    if cfg.evaluate.figures and result.history and is_main_process():
        from medtl.train.progress import training_curves

        figure = training_curves(result.history, result.out_dir / "progress.png")
        for path in (figure, figure.with_suffix(".svg")):
            tracker.log_artifact(path)
    if (result.out_dir / "config_changes.json").is_file():  # resumed with another config: what changed when
        tracker.log_artifact(result.out_dir / "config_changes.json")
    m = result.prepared.manifest
    tracker.set_tags({"weights_sha256": result.weights_sha256 or "none", "manifest_sha256": m.digest(),
                      "device": "cuda" if next(result.bundle.model.parameters()).is_cuda else "cpu"})
    tracker.log_dataset(result.prepared.table, m.path, m.digest(), cfg.data.subgroups)
    return result


def calibrate_step(result: TrainResult, tracker: Tracker) -> None:
    """Temperature (when ``evaluate.calibrate``) and decision threshold from the validation predictions,
    set on the bundle: chosen once, here. ``model.pt`` is written after them (``model_written``)."""
    bundle, cfg = result.bundle, result.bundle.config
    if result.val is None or not is_main_process():
        return
    drift = drift_step(result) if cfg.evaluate.calibrate and cfg.evaluate.drift_calibration else None
    chosen = calibrate(result.val["logits"], result.val["labels"], cfg.train.threshold_rule,
                       cfg.train.target_sensitivity, cfg.evaluate.calibrate, temperature=drift, classes=bundle.classes)
    bundle.temperature, bundle.threshold = chosen.temperature, chosen.threshold
    if chosen.caveat:
        bundle.extra["calibration_caveat"] = chosen.caveat
    bundle.extra["source_prior"] = chosen.source_prior
    if chosen.call_rates is not None:
        bundle.extra["source_call_rates"] = chosen.call_rates
    if len(bundle.classes) == 2:
        logger.info("temperature %.3f; decision threshold %.4f (%s on %s validation probabilities): the one applied",
                    chosen.temperature, chosen.threshold, cfg.train.threshold_rule,
                    "calibrated" if cfg.evaluate.calibrate else "uncalibrated")
    else:  # no threshold: the most probable class is called
        logger.info("temperature %.3f; each case called its most probable of the %d classes", chosen.temperature,
                    len(bundle.classes))
    typicality_step(result)


def drift_step(result: TrainResult) -> float | None:
    """The temperature fitted under simulated drift (``medtl.drift_calibration``), recorded with the model; None
    (the clean validation temperature, as without it) where it cannot be fitted."""
    from medtl.data.datasets import case_items
    from medtl.drift_calibration import LEVELS, drift_temperature
    from medtl.models.checkpoint import unwrap
    from medtl.models.predictor import Predictor

    bundle = result.bundle
    items = case_items(rows_of_split(result.prepared.table, "val"), bundle.classes)
    predictor = Predictor(unwrap(bundle.model), bundle.spec, next(bundle.model.parameters()).device,
                          batch_size=bundle.config.train.batch_size, cache=True)
    drift = drift_temperature(predictor, items, bundle.config.evaluate.seed)
    if drift is None:
        return None
    bundle.extra["drift_calibration"] = {"temperature": drift.temperature, "strongest_noise": drift.strongest_noise}
    logger.info("temperature %.3f fitted under drift: the %d validation cases clean and under Gaussian noise up to "
                "sigma %.3f, where the model no longer tells the classes apart", drift.temperature,
                drift.cases // (LEVELS + 1), drift.strongest_noise)
    return drift.temperature


def typicality_step(result: TrainResult) -> None:
    """The feature density scoring measures each new case against (``medtl.typicality``), from the training and
    validation cases; a model it cannot be fitted for scores without typicality."""
    from medtl.typicality import fit_typicality, measurable

    bundle = result.bundle
    if not bundle.config.evaluate.typicality or not measurable(bundle):
        return
    density = fit_typicality(bundle, result.prepared.table, next(bundle.model.parameters()).device,
                             bundle.config.train.seed)
    if density is not None:
        bundle.extra["typicality"] = density.to_payload()
        logger.info("typicality: the feature density of %d training cases, against which %d validation cases set "
                    "what an ordinary scan looks like", density.reference_cases, len(density.calibration))


@contextmanager
def model_written(result: TrainResult) -> Iterator[None]:
    """``model.pt`` is written once, when the steps inside (calibration, AdaBN, the prevalence evaluation
    chooses) have set everything it carries — and also when one of them fails, so nothing trained is lost."""
    try:
        yield
    finally:
        if is_main_process():
            save_model(result.bundle, result.model_path)


def fit_model(cfg: Config, resume: bool | str = False, tracker: Tracker | None = None) -> TrainResult:
    """``medtl train``: training, then calibration on validation, then ``model.pt``: a model ready to score."""
    tracker = tracker or NullTracker()
    result = train(cfg, resume=resume, tracker=tracker)
    with model_written(result):
        calibrate_step(result, tracker)
    return result


def evaluate_step(result: TrainResult, tracker: Tracker, split: str = "test", prefix: str = "test_") -> Evaluation | None:
    table = result.prepared.table
    part = rows_of_split(table, split)
    if not is_main_process():
        return None
    if part.empty:
        logger.warning("no %s split: skipping evaluation", split)
        return None
    out = result.out_dir / f"evaluation_{split}"
    ev = evaluate_table(result.bundle, part, out)
    cfg = result.bundle.config
    tracker.set_tags({"mlflow.note.content": headline(ev.metrics, f"{cfg.name}: {split} split, {cfg.model.backbone}, "
                                                                 f"{cfg.transfer.strategy}")})
    if ev.target_prior is not None:  # the deployment prevalence chosen by evaluate.prevalence goes with the model
        result.bundle.extra["target_prior"] = ev.target_prior
    log_evaluation(tracker, ev, prefix, "evaluation", dataset=split)
    return ev


def log_evaluation(tracker: Tracker, ev: Evaluation, prefix: str, folder: str, dataset: str | None = None) -> None:
    """Every defined metric under ``prefix`` and every file (each figure with its SVG) under ``folder``."""
    tracker.log_metrics({f"{prefix}{k}": v for k, v in ev.metrics.items() if isinstance(v, float) and not math.isnan(v)},
                        dataset=dataset)
    for f in _with_svg(ev.files):
        tracker.log_artifact(f, folder)


def paired_step(tracker: Tracker, a: Any, b: Any, names: tuple[str, str], folder: Path, n_resamples: int,
                metric_prefix: str | None = None, figures: bool = True) -> Any:
    """Two models' test predictions (classification) or per-case results (segmentation) compared on the same
    cases; files under ``folder`` are logged to the run (in an artifact folder of the same name), metrics too
    when ``metric_prefix`` is given. Models of several classes are not compared here (None): which class to
    compare against the rest is the reader's question, ``medtl compare --positive`` answers it."""
    from medtl.evaluate.paired import compare_predictions, write_comparison
    from medtl.evaluate.paired_segmentation import compare_segmentations, write_segmentation_comparison

    if sum(c.startswith("prob_") for c in a.columns) > 2:
        logger.warning("%s and %s predict several classes: no paired comparison here; run `medtl compare` on their "
                       "evaluation_test/predictions.csv with --positive CLASS", *names)
        return None
    if "dice" in a.columns:
        cmp = compare_segmentations(a, b, names, n_resamples or 1000)
        files = write_segmentation_comparison(cmp, folder, figures)
    else:
        cmp = compare_predictions(a, b, names, n_resamples or 1000)
        files = write_comparison(cmp, folder, figures)
    for f in files:
        tracker.log_artifact(f, folder.name)
    if metric_prefix is not None:
        tracker.log_metrics({f"{metric_prefix}{k}": v for k, v in cmp.metrics.items()})
    return cmp


def _with_svg(files: list[Path]) -> list[Path]:
    """Every figure's SVG goes wherever its PNG goes."""
    svgs = [f.with_suffix(".svg") for f in files if f.suffix == ".png" and f.with_suffix(".svg").is_file()]
    return list(dict.fromkeys([*files, *svgs]))


def register_step(result: TrainResult, tracker: Tracker, evaluation: Evaluation | None = None) -> dict[str, Any]:
    """Logs the pyfunc model under the run's name (and the best checkpoint); registers it, with its model card
    and promotion gates, when tracking.registered_model is set."""
    cfg = result.bundle.config.tracking
    if not cfg.log_model and not cfg.registered_model:
        return {}
    tracker.log_artifact(result.model_path, "checkpoints")
    epoch = int(result.history[-1]["epoch"]) if result.history else 1
    uri = tracker.log_model(result.bundle, result.model_path, logged_model_name(result.bundle.config), epoch)
    if uri is None:
        return {}
    info: dict[str, Any] = {"model_uri": uri}
    if cfg.registered_model:
        from medtl.drift_calibration import card_note as drift_note
        from medtl.model_card import card_tags, model_card
        from medtl.typicality import card_note

        metrics = evaluation.metrics if evaluation else {}
        digest = result.prepared.manifest.digest()
        caveat = result.bundle.extra.get("calibration_caveat")
        notes = [*(evaluation.notes if evaluation else []), *card_note(result.bundle.extra.get("typicality")),
                 *([f"Chosen on validation: {caveat}."] if caveat else []),
                 *drift_note(result.bundle.extra.get("drift_calibration")),
                 *(f"In the training manifest, {line}." for line in result.prepared.shortcuts)]
        card = model_card(result.bundle.config, result.prepared.table, metrics, digest, notes,
                          classes=result.prepared.classes, views=result.prepared.views)
        gates = {"min_auroc_ci_low": cfg.gate_min_auroc_ci_low, "max_ece": cfg.gate_max_ece}
        version = tracker.register(uri, cfg.registered_model, cfg.alias, card, card_tags(metrics, digest), gates)
        if version is not None:
            info.update(version=version, registered=f"models:/{cfg.registered_model}@{cfg.alias}")
            logger.info("registered %s version %s as @%s", cfg.registered_model, version, cfg.alias)
    return info


def logged_model_name(cfg: Config) -> str:
    """The run's name with its transfer strategy (``pneumonia-fine_tune``), not MLflow's default "model"."""
    strategy = cfg.transfer.strategy
    return cfg.name if cfg.name.endswith(strategy) else f"{cfg.name}-{strategy}"


def strategy_variant(cfg: Config, strategy: str, register: bool = True) -> Config:
    """The same config under another transfer strategy (scratch: same architecture, random init)."""
    model = cfg.model.model_copy(update={"pretrained": "none"}) if strategy == "scratch" else cfg.model
    update: dict[str, Any] = {"strategy": strategy}
    if strategy == "scratch":
        update["layer_lr_decay"] = 1.0  # random weights: no stage has anything to preserve
    transfer = cfg.transfer.model_copy(update=update)
    tracking = cfg.tracking if register else cfg.tracking.model_copy(update={"registered_model": None})
    return cfg.model_copy(update={"model": model, "transfer": transfer, "tracking": tracking, "name": f"{cfg.name}-{strategy}"})


def summary_table(rows: list[tuple[str, dict[str, float]]]) -> "Any":
    """One row per run: AUROC [CI], sensitivity/specificity at the threshold, ECE before/after temperature; for
    several classes, macro AUROC, accuracy and balanced accuracy; for segmentation, Dice and HD95 (mean, median)."""
    import pandas as pd

    from medtl.evaluate.report import fmt

    if any("dice_mean" in m for _, m in rows):
        return pd.DataFrame([{"strategy": name, "test Dice (mean)": fmt(m, "dice_mean"), "Dice (median)": fmt(m, "dice_median"),
                              "HD95 mm (mean)": fmt(m, "hd95_mm_mean"), "cases": int(m["n"]) if "n" in m else "undefined"} for name, m in rows])
    if any("auroc_macro" in m for _, m in rows):  # several classes: no one positive class to be sensitive to
        return pd.DataFrame([{"strategy": name, "test AUROC macro [95% CI]": fmt(m, "auroc_macro"),
                              "accuracy": fmt(m, "accuracy"), "balanced accuracy": fmt(m, "balanced_accuracy"),
                              "ECE before": fmt(m, "ece"), "ECE after": fmt(m, "ece_calibrated")} for name, m in rows])
    shifted = any("ece_prior_adjusted" in m for _, m in rows)
    return pd.DataFrame([{
        "strategy": name,
        "test AUROC [95% CI]": fmt(m, "auroc"),
        "sensitivity": fmt(m, "sensitivity"),
        "specificity": fmt(m, "specificity"),
        "ECE before": fmt(m, "ece"),
        "ECE after": fmt(m, "ece_calibrated"),
        **({"ECE after prior shift": fmt(m, "ece_prior_adjusted") if "ece_prior_adjusted" in m else "not estimated"}
           if shifted else {}),
    } for name, m in rows])


def adabn_step(result: TrainResult, tracker: Tracker) -> None:
    """AdaBN: BatchNorm statistics re-estimated on the target domain's images (``model.pt`` carries them)."""
    if result.target is None:
        from medtl.errors import MedtlError

        raise MedtlError("adaptation.method adabn needs adaptation.target_manifest")
    seen = adapt_norms(result.bundle, result.target.table, result.summary)
    tracker.log_metrics({"adabn_target_images": float(seen)})


def adapt_norms(bundle: ModelBundle, table: pd.DataFrame, summary: list[dict]) -> int:
    """AdaBN of ``bundle``'s model on the images of ``table`` (its training rows when it has any; labels unused).
    ``summary`` is the training run's per-stage table: stages it left frozen keep their ImageNet statistics."""
    from medtl.models.adaptation import adabn
    from medtl.models.registry import get_backbone
    from medtl.models.transfer import frozen_at_end
    from medtl.train.run import target_loader
    from medtl.train.runtime import make_runtime

    cfg = bundle.config
    rt = make_runtime(cfg.train, cfg.data.spatial_dims)
    keep = frozen_at_end(bundle.model, get_backbone(cfg.model.backbone), summary)
    seen = adabn(bundle.model, (b["image"] for b in target_loader(cfg, table, train=False)), rt.device, keep)
    if not seen:
        logger.warning("AdaBN changed nothing: every BatchNorm is in a stage kept frozen (transfer.strategy %s); "
                       "fine_tune with fewer frozen stages, or full, leaves some to adapt", cfg.transfer.strategy)
        return 0
    logger.info("AdaBN: BatchNorm statistics re-estimated on %d target images%s", seen,
                " (the frozen stages keep their ImageNet statistics)" if keep else "")
    if bundle.extra.pop("typicality", None) is not None:
        logger.info("typicality left out of the adapted model: it was measured on the features AdaBN has changed")
    return seen


def evaluate_target_step(result: TrainResult, tracker: Tracker) -> Evaluation | None:
    """Every outcome and calibration metric on the target domain's test cases (its labels used only here)."""
    if result.target is None:
        logger.warning("no adaptation.target_manifest: no target-domain evaluation")
        return None
    table = result.target.table
    if (table["split"] == "test").any():
        table = rows_of_split(table, "test")
    if "label" not in table or table["label"].isna().any():
        logger.warning("target manifest has no labels for its test cases: no target-domain evaluation")
        return None
    ev = evaluate_table(result.bundle, table, result.out_dir / "evaluation_target_test")
    log_evaluation(tracker, ev, "target_test_", "evaluation_target")
    return ev
