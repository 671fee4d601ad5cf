"""Losses made for calibration, and a pretrained-plus-scratch ensemble: do they carry to the test films?

Protocol, fixed before any of its test figures was seen (thirteenth session). Earlier studies found the demo's
fine-tuned model confidently wrong on about a tenth of the test normals, with seed ensembles sharing those
mistakes. Two training changes are known to curb overconfidence, including under dataset shift: focal loss
(Mukhoti et al. 2020, gamma 3, their FL-3) and mixup (Zhang et al. 2018; Thulasidasan et al. 2019, alpha 0.2).
Arms, each the demo's config (Lite2, 48 px, 3 epochs, inverse-frequency class weights) with one change, on all
4,708 training films, ``train.seed`` 0, 1, 2:

- ``fine_tune``: the demo's fine-tune, unchanged;
- ``focal``: ``train.loss=focal``, ``train.focal_gamma=3``;
- ``mixup``: ``train.mixup_alpha=0.2``;
- ``scratch``: the demo's scratch baseline (random init);
- ``fine_tune + scratch``: the mean of the two models' probabilities, same seed (descriptive only: it is not a
  fine-tuned model, so it cannot be the demo's; it asks whether networks started from different places share
  their mistakes on the test films the way seeds of one recipe do).

The choice, made and printed before the test split is opened: ``focal`` or ``mixup``, whichever has the lower
mean validation NLL after temperature, replaces the demo's loss only if that NLL is below ``fine_tune``'s and its
mean validation AUROC is no lower, and ``medtl demo`` with it then runs within 10 minutes. Then, whatever they
show: every model's test AUROC with CI, specificity, ECE after temperature and after the prior shift (EM's
prevalence from the unlabelled test scores), and each arm's paired test difference against ``fine_tune`` of the
same seed.

    python bench/calibration_levers.py [--seeds 3] [--bootstrap 1000] [--train-limit N]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from backbone_study import Trained, report_test, study_arguments, train_arms
from ensemble_study import ensemble_logits
from medtl.config import load_config
from medtl.data.manifest import rows_of_split
from medtl.demo import CONFIG
from medtl.evaluate.run import predict_logits
from medtl.steps import fit_model, strategy_variant

ARMS: dict[str, tuple[str, list[str]]] = {
    "fine_tune": ("fine_tune", []),
    "focal": ("fine_tune", ["train.loss=focal", "train.focal_gamma=3"]),
    "mixup": ("fine_tune", ["train.mixup_alpha=0.2"]),
    "scratch": ("scratch", []),
}
CANDIDATES = ("focal", "mixup")
ENSEMBLE = "fine_tune + scratch"


def train(manifest: Path, strategy: str, overrides: list[str], seed: int, out: Path) -> Trained:
    cfg = load_config(CONFIG, [f"data.manifest={manifest}", *overrides, f"train.seed={seed}", f"train.out_dir={out}",
                               "tracking.enabled=false", "evaluate.figures=false", "evaluate.gradcam=0"])
    start = time.perf_counter()
    result = fit_model(strategy_variant(cfg, strategy))
    minutes = (time.perf_counter() - start) / 60
    logits, table = predict_logits(result.bundle, rows_of_split(result.prepared.table, "test"), torch.device("cpu"), 64)
    return Trained(np.asarray(result.val["logits"], float), np.asarray(result.val["labels"]).astype(int), logits, table,
                   minutes)


def arm_trainers(arms: dict[str, tuple[str, list[str]]]) -> dict[str, Callable[[Path, int, Path], Trained]]:
    """Each arm's (strategy, overrides) as the trainer ``train_arms`` calls with the manifest, seed and folder."""
    return {arm: partial(_train_arm, strategy=strategy, overrides=overrides) for arm, (strategy, overrides) in arms.items()}


def _train_arm(manifest: Path, seed: int, out: Path, strategy: str, overrides: list[str]) -> Trained:
    return train(manifest, strategy, overrides, seed, out)


def ensemble(a: Trained, b: Trained) -> Trained:
    return Trained(ensemble_logits([a.val_logits, b.val_logits]), a.val_labels,
                   ensemble_logits([a.test_logits, b.test_logits]), a.test_table, a.minutes + b.minutes)


def choose_recipe(runs: dict[tuple[str, int], Trained], seeds: range, candidates: tuple[str, ...],
                  baseline: str = "fine_tune") -> str:
    """The candidate of lowest mean validation NLL after temperature, if that beats the baseline's without a lower
    mean validation AUROC; else the baseline: the rule every sealed recipe study here applies."""
    mean = {arm: np.mean([runs[arm, s].validation() for s in seeds], axis=0) for arm in (baseline, *candidates)}
    best = min(candidates, key=lambda a: mean[a][0])
    return best if mean[best][0] < mean[baseline][0] and mean[best][1] >= mean[baseline][1] else baseline


def sealed_study(arms: dict[str, tuple[str, list[str]]], candidates: tuple[str, ...], bases: tuple[str, ...] = ("fine_tune",)) -> None:
    """Every arm with every seed, validation's choice printed, then the test split opened: with one base every arm
    paired with it, with several each base's own arms (those whose name starts with it)."""
    args = study_arguments(seeds=3).parse_args()
    seeds = range(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_arms(arm_trainers(arms), seeds, args.train_limit, Path(tmp))
        print(f"\nchosen on validation: {choose_recipe(runs, seeds, candidates, bases[0])}\n\ntest split, opened now:",
              flush=True)
        for base in bases:
            own = runs if len(bases) == 1 else {k: v for k, v in runs.items() if k[0].startswith(base)}
            report_test(own, seeds, base, args.bootstrap, Path(tmp) / "test")


def main() -> None:
    args = study_arguments(seeds=3).parse_args()
    seeds = range(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_arms(arm_trainers(ARMS), seeds, args.train_limit, Path(tmp))
        for seed in seeds:
            runs[ENSEMBLE, seed] = ensemble(runs["fine_tune", seed], runs["scratch", seed])
            nll, auroc = runs[ENSEMBLE, seed].validation()
            print(f"{ENSEMBLE}, seed {seed}: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f}", flush=True)
        nll, auroc = np.mean([runs[ENSEMBLE, s].validation() for s in seeds], axis=0)
        print(f"{ENSEMBLE}, mean over seeds: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f}")
        print(f"\nchosen on validation: {choose_recipe(runs, seeds, CANDIDATES)}\n\ntest split, opened now:", flush=True)
        report_test(runs, seeds, "fine_tune", args.bootstrap, Path(tmp) / "test")


if __name__ == "__main__":
    main()
