"""``medtl evaluate``: a trained model on a manifest split → report, metrics and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtl.config import EvaluateConfig
from medtl.data.check import OTHER_VIEW
from medtl.data.datasets import case_items
from medtl.data.manifest import read_manifest, rows_of_split
from medtl.data.readers import load_scan
from medtl.data.splits import with_saved_splits
from medtl.errors import DataError, ManifestError, MedtlError
from medtl.evaluate import plots
from medtl.explain import cam_layer, cam_maps
from medtl.files import claim_folder
from medtl.log import logger
from medtl.evaluate.report import Evaluation, evaluate_classification, fmt, write_report
from medtl.evaluate.segmentation import case_metrics, class_names, reference_labels, subgroup_summaries, summarise
from medtl.models.checkpoint import ModelBundle
from medtl.models.predictor import Predictor, device_for
from medtl.typicality import measures_typicality


def select_split(table: pd.DataFrame, split: str | None, splits: Path | None = None) -> pd.DataFrame:
    """The cases of one split (or all); ``splits``, a training run's splits.csv, supplies the split column of a
    manifest without one."""
    table = with_saved_splits(table, splits) if splits else table
    if not split or split == "all":
        return table.reset_index(drop=True)
    part = rows_of_split(table, split)
    if part.empty:
        present = sorted(str(v) for v in table["split"].dropna().unique() if str(v))
        if not present:  # splits live in the run's splits.csv when medtl made them
            raise ManifestError(f"no case in split {split!r}: the manifest has no split column; give the training run's "
                                "splits.csv with --splits, or use --split all")
        made = "" if splits else ("; the splits a training made (validation cases it took from training, say) are in "
                                  "its splits.csv: add --splits RUN/splits.csv")
        raise ManifestError(f"no case in split {split!r}; splits present: {', '.join(present)}{made}")
    return part.reset_index(drop=True)


def predict_logits(bundle: ModelBundle, table: pd.DataFrame, device: torch.device,
                   batch_size: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
    """Uncalibrated logits for every case in order, with the cases they belong to (and each one's typicality, where
    the model measures it). A case that cannot be read is an error naming it, or, when the model's config skips bad
    cases, a warning and one case less; a film of a view the model does not take is left out, as training leaves it
    out, and counted."""
    items = case_items(table, None)
    logits, kept, typicality, other_views = [], [], [], []
    for i, rec in enumerate(Predictor.of(bundle, device, batch_size).predict(items)):
        if rec["error"] and rec["error"].startswith(OTHER_VIEW):
            other_views.append(rec["case_id"])
            continue
        if rec["error"]:
            if not bundle.spec.data.skip_bad_cases:
                raise DataError(f"case {rec['case_id']}: {rec['error']}")
            logger.warning("case %s left out of the evaluation: %s", rec["case_id"], rec["error"])
            continue
        logits.append(rec["logits"])
        typicality.append(rec.get("typicality", np.nan))
        kept.append(i)
    if other_views:
        logger.warning("%d film(s) of views the model does not take (%s) left out of the evaluation (first: case %s)",
                       len(other_views), ", ".join(bundle.spec.data.views or []), other_views[0])
    if not logits:
        raise DataError("no case of the evaluated split could be read" + (", or is of a view the model takes"
                                                                          if other_views else ""))
    kept_table = table.iloc[kept].reset_index(drop=True)
    if measures_typicality(bundle):
        kept_table = kept_table.assign(typicality=typicality)
    return np.stack(logits), kept_table


def evaluate_bundle(bundle: ModelBundle, manifest_path: Path, split: str | None, out_dir: Path,
                    cfg: EvaluateConfig | None = None, device: str = "auto", splits: Path | None = None) -> Evaluation:
    table = read_manifest(manifest_path, bundle.spec.data.data_root).table
    return evaluate_table(bundle, select_split(table, split, splits), out_dir, cfg, device)


def evaluation_config(bundle: ModelBundle, prevalence: float | str | None = None) -> EvaluateConfig:
    """The model's own evaluation settings; ``prevalence`` (a value, or ``em``) in place of its own where given, for
    a site whose prevalence is not the one the model was evaluated at."""
    if prevalence is not None and (bundle.task != "classification" or len(bundle.classes) != 2):
        raise MedtlError(f"--prevalence: this is a {bundle.task} model of {len(bundle.classes)} classes; a prevalence "
                         "shifts a binary classifier's calibration only: evaluate without it")
    cfg = bundle.config.evaluate if bundle.config is not None else EvaluateConfig(prevalence=bundle.spec.prevalence)
    return cfg if prevalence is None else cfg.model_copy(update={"prevalence": prevalence})


def evaluate_table(bundle: ModelBundle, table: pd.DataFrame, out_dir: Path, cfg: EvaluateConfig | None = None,
                   device: str = "auto") -> Evaluation:
    """Evaluates the cases of ``table`` (manifest rows with resolved paths)."""
    cfg = cfg or evaluation_config(bundle)
    table = table.reset_index(drop=True)
    dev = device_for(device)
    _require_references(table, bundle.task)
    claim_folder(out_dir, "--out")
    if bundle.task == "segmentation":
        if cfg.site_temperature:
            logger.warning("evaluate.site_temperature is for classifiers; this segmentation is evaluated as trained")
        return evaluate_segmentation(bundle, table, dev, out_dir, cfg)
    unknown = sorted(set(table["label"].dropna()) - set(bundle.classes))
    if unknown:
        cases = table.loc[table["label"] == unknown[0], "case_id"].astype(str)
        raise ManifestError(f"case {cases.iloc[0]}: label {unknown[0]!r} ({len(cases)} case(s) in all) is not one of the "
                            f"model's classes ({', '.join(bundle.classes)}); relabel them, or evaluate the model they "
                            "were labelled for")
    logits, table = predict_logits(bundle, table, dev)
    subgroups = [c for c in bundle.spec.data.subgroups if c in table]
    site = site_calibration(bundle, table, dev, cfg)
    temperature, threshold = site or (bundle.temperature, bundle.threshold)
    ev = evaluate_classification(table, logits, bundle.classes, threshold, temperature, cfg,
                                 out_dir, subgroups, bundle.extra.get("source_prior"), figure_subject(bundle, table),
                                 bundle.extra.get("source_call_rates"),
                                 table["typicality"].to_numpy() if "typicality" in table else None,
                                 model_temperature=bundle.temperature if site else None)
    if cfg.figures and cfg.gradcam and bundle.spec.data.spatial_dims == 2 and len(bundle.classes) == 2 and ev.predictions is not None:
        ev.files.append(gradcam_examples(bundle, table, ev.predictions, cfg.gradcam, dev, out_dir / "gradcam.png"))
    return ev


def site_calibration(bundle: ModelBundle, table: pd.DataFrame, device: torch.device,
                     cfg: EvaluateConfig) -> tuple[float, float] | None:
    """With ``evaluate.site_temperature``, PseudoCal's temperature from these cases' scans (labels unused) and the
    threshold that calls every case as the model's did; None where the model's own stand."""
    from medtl.pseudo_calibration import REPEATS, same_calls_threshold, site_temperature

    if not cfg.site_temperature:
        return None
    logger.info("fitting a temperature on these %d cases' scans, labels unused (PseudoCal: %d passes over them)",
                len(table), REPEATS + 1)
    site = site_temperature(bundle.model.to(device), bundle.spec, table, device, cfg.seed)
    if site is None:
        logger.warning("evaluate.site_temperature: the model calls too few of these %d cases differently to fit a "
                       "temperature on them; the model's own (%.3f) stands", len(table), bundle.temperature)
        return None
    logger.info("temperature %.3f fitted on these %d cases' scans, unlabelled (PseudoCal, %d mixtures), in place of "
                "the model's %.3f", site.temperature, len(table), site.pairs, bundle.temperature)
    binary = len(bundle.classes) == 2
    return site.temperature, (same_calls_threshold(bundle.threshold, bundle.temperature, site.temperature)
                              if binary else bundle.threshold)


def _require_references(table: pd.DataFrame, task: str) -> None:
    """Evaluation compares with a reference on every case: a label (diagnosis) or a mask (segmentation)."""
    column = "mask" if task == "segmentation" else "label"
    if column not in table:
        raise ManifestError(f"the manifest has no {column} column, and evaluating a {task} model compares each case with "
                            f"its {column}; give a manifest with them, or score the cases with `medtl score`")
    missing = table.loc[table[column].isna(), "case_id"]
    if len(missing):
        raise ManifestError(f"case {missing.iloc[0]}: no {column} ({len(missing)} case(s) without one); give every "
                            f"evaluated case its {column}, or drop those rows")


def figure_subject(bundle: ModelBundle, table: pd.DataFrame) -> str:
    """"MODEL, SPLIT split" for figure titles (the split from the rows evaluated)."""
    splits = sorted(set(table["split"].astype(str))) if "split" in table else []
    return f"{bundle.spec.name}, " + (f"{splits[0]} split" if len(splits) == 1 else "all splits")


CAM_KINDS = ("TP", "FP", "FN", "TN")


def gradcam_picks(predictions: pd.DataFrame, positive: str, n: int) -> pd.DataFrame:
    """Up to ``n`` cases spread over true/false positives/negatives, the most confident of each kind first.

    Whatever the model predicts, the result names every kind (``case_id`` empty where none exists), so the
    figure always says which kinds the test split had."""
    p = predictions[f"prob_{positive}"]
    called, truth = predictions["predicted"] == positive, predictions["label"] == positive
    pools = {"TP": called & truth, "FP": called & ~truth, "FN": ~called & truth, "TN": ~called & ~truth}
    per_kind = max(1, n // len(CAM_KINDS))
    rows = []
    for kind in CAM_KINDS:
        pool = predictions[pools[kind]].assign(p=p[pools[kind]])
        chosen = pool.nlargest(per_kind, "p") if kind in ("TP", "FP") else pool.nsmallest(per_kind, "p")
        if chosen.empty:
            rows.append(pd.DataFrame({"case_id": [""], "p": [float("nan")], "kind": [kind]}))
        else:
            rows.append(chosen[["case_id", "p"]].assign(kind=kind))
    return pd.concat(rows, ignore_index=True)


def gradcam_examples(bundle: ModelBundle, table: pd.DataFrame, predictions: pd.DataFrame, n: int,
                     device: torch.device, path: Path) -> Path:
    """Grad-CAM (MONAI) of the positive class beside the raw image, for TP, FP, FN and TN examples.

    The figure is always written: a kind without a case, or a backbone without a known target layer, is
    said in the figure instead of silently dropping it."""
    picks = gradcam_picks(predictions, bundle.classes[1], n)
    layer = cam_layer(bundle)
    present = picks[picks["case_id"] != ""]
    images, maps = {}, {}
    if not present.empty:
        transform = Predictor.of(bundle, device).transform
        rows = table.set_index("case_id").loc[present["case_id"]]
        batch = torch.stack([transform({"case_id": c, "image": r.image_path})["image"] for c, r in rows.iterrows()])
        images = {c: im[0].numpy() for c, im in zip(present["case_id"], batch)}
        if layer is not None:
            maps = dict(zip(present["case_id"], cam_maps(bundle, batch, layer, device)))
    panels = [(row.kind, row.case_id, row.p, images.get(row.case_id), maps.get(row.case_id))
              for row in picks.itertuples(index=False)]
    return plots.gradcam_plot(panels, path, note=None if layer else f"no Grad-CAM layer known for {bundle.spec.model.backbone}",
                              positive=bundle.classes[1])


def evaluate_segmentation(bundle: ModelBundle, table: pd.DataFrame, device: torch.device, out_dir: Path,
                          cfg: EvaluateConfig) -> Evaluation:
    """Predictions come back on each scan's own grid (the inverse of its preprocessing); they are compared
    with the reference mask there, distances in the source spacing (mm where the scan says so); each mean has
    a patient-bootstrap CI."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, views = [], []
    items = case_items(table, None)
    for rec, row in zip(Predictor.of(bundle, device, 4).predict(items), table.itertuples(index=False)):
        if rec["error"]:
            raise DataError(f"case {rec['case_id']}: {rec['error']}")
        ref_np, pred = reference_labels(load_scan(row.mask_path)[0].numpy(), len(bundle.classes)), rec["mask"].labels
        if pred.shape != ref_np.shape:
            raise DataError(f"case {rec['case_id']}: mask grid {ref_np.shape} differs from the image grid {pred.shape}; "
                            "run `medtl manifest check` and give each image the mask drawn on it")
        rows.append({"case_id": rec["case_id"],
                     **case_metrics(pred, ref_np, rec["mask"].spacing[: pred.ndim], bundle.classes)})
        views.append((row.image_path, ref_np > 0, pred > 0))
    per_case = pd.DataFrame(rows)
    per_case.to_csv(out_dir / "per_case.csv", index=False)
    patients = table["patient_id"].astype(str).to_numpy() if "patient_id" in table else None
    metrics = summarise(rows, patients, cfg.bootstrap, cfg.ci, cfg.seed)
    files = [out_dir / "per_case.csv", *([_overlays(per_case, views, out_dir)] if cfg.figures else [])]
    notes = [f"{int(metrics['hd95_mm_undefined'])} case(s) with one empty mask: distances undefined"] if metrics["hd95_mm_undefined"] else []
    subgroups = [c for c in bundle.spec.data.subgroups if c in table]
    metrics.update(subgroup_summaries(table, rows, patients, subgroups, cfg.min_subgroup_size, cfg.bootstrap, cfg.ci,
                                      cfg.seed, notes))
    # patients stay in memory, for the paired comparison's patient bootstrap; per_case.csv never holds them
    ev = Evaluation(metrics, notes, files, per_case if patients is None else per_case.assign(patient_id=patients))
    ev.files += _write_seg_report(ev, out_dir)
    return ev


def _overlays(per_case: pd.DataFrame, views: list, out_dir: Path) -> Path:
    order = np.argsort(per_case["dice"].to_numpy())
    picks = [("worst", order[0]), ("median", order[len(order) // 2]), ("best", order[-1])]
    images = [load_scan(views[i][0])[0].numpy() for _, i in picks]
    titles = [f"{name}: {per_case['case_id'][i]} Dice {per_case['dice'][i]:.2f}" for name, i in picks]
    return plots.overlay_plot(images, [views[i][1] for _, i in picks], [views[i][2] for _, i in picks], titles,
                              out_dir / "overlays.png")


def _write_seg_report(ev: Evaluation, out_dir: Path) -> list[Path]:
    import json
    import math

    m = ev.metrics
    (out_dir / "metrics.json").write_text(json.dumps({k: None if math.isnan(v) else v for k, v in m.items()}, indent=1))
    lines = ["# Segmentation evaluation", "", f"Cases: {int(m['n'])}", "",
             "| metric | mean [95% CI] | median | IQR |", "| --- | --- | --- | --- |"]
    names = class_names(m)
    for key in ("dice", "iou", "hd95_mm", "asd_mm"):
        label = f"{key} (mean of the classes)" if names else key
        lines.append(f"| {label} | {fmt(m, key + '_mean')} | {m[key + '_median']:.3f} | {m[key + '_iqr']:.3f} |")
    for name in names:
        for key in ("dice", "hd95_mm"):
            k = f"{key}_{name}"
            lines.append(f"| {key} {name} | {fmt(m, k + '_mean')} | {m[k + '_median']:.3f} | {m[k + '_iqr']:.3f} |")
    sub = sorted({k.rsplit("_", 1)[0] for k in m if k.startswith("subgroup_") and k.endswith("_n")})
    if sub:
        lines += ["", "| subgroup | n | Dice [95% CI] | HD95 mm [95% CI] |", "| --- | --- | --- | --- |"]
        lines += [f"| {s.removeprefix('subgroup_')} | {int(m[s + '_n'])} | " + (
            f"{fmt(m, s + '_dice_mean')} | {fmt(m, s + '_hd95_mm_mean')} |" if s + "_dice_mean" in m
            else "too small | too small |") for s in sub]
    lines += ["", "Empty masks: both empty → Dice 1, distances 0; one empty → Dice 0, distances undefined."]
    lines += [f"- {n}" for n in ev.notes]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return [out_dir / "metrics.json", out_dir / "report.md"]


__all__ = ["evaluate_bundle", "evaluate_table", "select_split", "predict_logits", "write_report"]
