"""How many labelled cases does a new site need before the model's probabilities hold there?

The demo's fine-tuned model (config unchanged, ``train.seed`` 0) meets the official test films as a new site.
They are split once, class-stratified (seed 0), into an evaluation half and a pool; from the pool, ``--draws``
random samples of each size are labelled, and on each the model is recalibrated two ways: a temperature and
threshold alone (what validation chose at training, chosen again), and ``medtl.recalibration.recalibrate``
(calibration slope and intercept, then the threshold); every variant is evaluated on the same evaluation half,
and a slope and intercept fitted on that half itself is printed for reference (in-sample, not a result). The baseline is the
model as trained: validation's temperature and threshold, the evaluation half's prevalence estimated by EM from
its unlabelled scores. Weights never change, so AUROC does not either; what moves is calibration and the
operating point.

    python bench/site_recalibration.py [--sizes 25,50,100,200] [--draws 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from medtl.config import EvaluateConfig, load_config
from medtl.data.manifest import rows_of_split
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.evaluate.calibration import calibrate
from medtl.evaluate.report import evaluate_classification
from medtl.evaluate.run import predict_logits
from medtl.recalibration import recalibrate
from medtl.steps import fit_model, strategy_variant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="25,50,100,200", help="labelled site cases per recalibration")
    ap.add_argument("--draws", type=int, default=5, help="random samples per size")
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        cfg = load_config(CONFIG, [f"data.manifest={manifest}", "train.seed=0", f"train.out_dir={tmp}/runs",
                                   "tracking.enabled=false", "evaluate.figures=false", "evaluate.gradcam=0"])
        result = fit_model(strategy_variant(cfg, "fine_tune"))
        bundle = result.bundle
        test = rows_of_split(result.prepared.table, "test").reset_index(drop=True)
        rng = np.random.default_rng(0)
        half = np.concatenate([rng.permutation(idx)[: len(idx) // 2] for idx in test.groupby("label").indices.values()])
        evaluation, pool = test.iloc[np.sort(half)].reset_index(drop=True), test.drop(index=half).reset_index(drop=True)

        def measure(b, prevalence, name: str) -> dict[str, float]:
            logits, _ = predict_logits(b, evaluation, torch.device("cpu"), 64)  # recalibration moves the output bias
            ev_cfg = EvaluateConfig(bootstrap=0, prevalence=prevalence, figures=False, gradcam=0)
            m = evaluate_classification(evaluation, logits, b.classes, b.threshold, b.temperature, ev_cfg,
                                        Path(tmp) / name, source_prior=b.extra.get("source_prior"),
                                        source_rates=b.extra.get("source_call_rates")).metrics
            return {"ece": m.get("ece_prior_adjusted", m["ece_calibrated"]), "sens": m["sensitivity"],
                    "spec": m["specificity"], "auroc": m["auroc"], "T": b.temperature}

        base = measure(bundle, "em", "base")
        best = copy.deepcopy(bundle)
        recalibrate(best, evaluation, device="cpu")  # fitted on the very cases it is measured on: a reference, not a result
        reference = measure(best, None, "reference")
        print(f"evaluation half: {len(evaluation)} films ({int((evaluation['label'] == 'pneumonia').sum())} pneumonia); "
              f"pool: {len(pool)}; test AUROC {base['auroc']:.3f} for every row (the weights never change)")
        print("\n| labelled site cases | recalibration | temperature | ECE on the evaluation half | sensitivity | specificity |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| none | validation's temperature and threshold, EM prevalence | {base['T']:.2f} | {base['ece']:.3f} | "
              f"{base['sens']:.3f} | {base['spec']:.3f} |")
        for n in map(int, args.sizes.split(",")):
            for how in ("temperature", "slope and intercept"):
                rows = []
                for draw in range(args.draws):
                    sample = pool.sample(n=n, random_state=draw)
                    if sample["label"].nunique() < 2:
                        continue
                    site = copy.deepcopy(bundle)  # recalibration moves the output bias: each draw starts afresh
                    if how == "temperature":
                        sample_logits, _ = predict_logits(bundle, sample, torch.device("cpu"), 64)
                        chosen = calibrate(sample_logits, (sample["label"] == "pneumonia").to_numpy().astype(int), "youden")
                        site.temperature, site.threshold = chosen.temperature, chosen.threshold
                        site.extra.update(source_prior=chosen.source_prior, source_call_rates=chosen.call_rates)
                        site.extra.pop("target_prior", None)
                    else:
                        recalibrate(site, sample, device="cpu")
                    rows.append(measure(site, None, f"n{n}_{draw}"))
                cols = {k: [r[k] for r in rows] for k in ("T", "ece", "sens", "spec")}
                print(f"| {n} ({len(rows)} draws) | {how} | " + " | ".join(
                    f"{statistics.mean(v):.{2 if k == 'T' else 3}f} ({min(v):.{2 if k == 'T' else 3}f}-{max(v):.{2 if k == 'T' else 3}f})"
                    for k, v in cols.items()) + " |", flush=True)
        print(f"| all {len(evaluation)} of the evaluation half itself (in-sample, for reference) | slope and intercept | "
              f"{reference['T']:.2f} | {reference['ece']:.3f} | {reference['sens']:.3f} | {reference['spec']:.3f} |")


if __name__ == "__main__":
    main()
