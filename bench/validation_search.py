"""How the demo's training settings were chosen, with the test split sealed until the choice is made.

Fine-tunes the demo's backbone (EfficientNet-Lite0 when this search ran) on the shipped PneumoniaMNIST films
once per setting and seed, scores each on validation (NLL after temperature, AUROC), picks the setting with the
lowest mean validation NLL, and only then prints the test figures: the chosen setting's first, then every
setting's, with the Spearman rank correlation between validation and test across settings (does validation rank
models the way the separately collected test split does?).

    python bench/validation_search.py [--seeds 2] [--settings base,lr4_ep5_nw]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from medtl.config import load_config
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.evaluate.calibration import calibration_metrics
from medtl.observe import NullTracker
from medtl.probability import probabilities
from medtl.steps import evaluate_step, fit_model, strategy_variant

BASE = ["train.epochs=3", "train.lr=0.002", "train.class_weights=inverse_frequency"]
"""The demo's settings, pinned so that the search reproduces if the demo's config changes."""

SETTINGS: dict[str, list[str]] = {
    "base": [],
    "px64": ["data.image_size=[64,64]"],
    "ep5": ["train.epochs=5"],
    "nw": ["train.class_weights=none"],
    "bs32": ["train.batch_size=32", "train.lr=0.001"],
    "fb1": ["transfer.freeze_until=block1"],
    "lr4": ["train.lr=0.004"],
    "lr4_ep5": ["train.lr=0.004", "train.epochs=5"],
    "lr4_nw": ["train.lr=0.004", "train.class_weights=none"],
    "lr4_fb1": ["train.lr=0.004", "transfer.freeze_until=block1"],
    "lr8": ["train.lr=0.008"],
    "lr8_nw": ["train.lr=0.008", "train.class_weights=none"],
    "lr4_ep5_nw": ["train.lr=0.004", "train.epochs=5", "train.class_weights=none"],
    "lr8_ep5_nw": ["train.lr=0.008", "train.epochs=5", "train.class_weights=none"],
}


def validation_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> tuple[float, float]:
    """NLL of the temperature-scaled validation probabilities (medtl's one softmax and NLL), and AUROC."""
    from sklearn.metrics import roc_auc_score

    probs = probabilities(logits, temperature)
    return calibration_metrics(labels, probs)["nll"], float(roc_auc_score(labels, probs[:, 1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2, help="train.seed 0, 1, ... for every setting")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    args = ap.parse_args()
    names = args.settings.split(",")
    val: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    sealed: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        for name in names:
            for seed in range(args.seeds):
                cfg = load_config(CONFIG, [f"data.manifest={manifest}", f"train.seed={seed}", f"train.out_dir={tmp}/{name}-{seed}",
                                           "tracking.enabled=false", "evaluate.bootstrap=0", "evaluate.figures=false",
                                           "evaluate.gradcam=0", *BASE, *SETTINGS[name]])
                result = fit_model(strategy_variant(cfg, "fine_tune"))
                nll, auroc = validation_scores(np.asarray(result.val["logits"], float),
                                               np.asarray(result.val["labels"]).astype(int), result.bundle.temperature or 1.0)
                val[name].append((nll, auroc))
                print(f"{name} seed {seed}: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f}", flush=True)
                ev = evaluate_step(result, NullTracker())
                sealed[name].append(ev.metrics)  # not printed until the choice below is made
    mean_nll = {n: statistics.mean(v[0] for v in val[n]) for n in names}
    chosen = min(names, key=mean_nll.__getitem__)
    print(f"\nchosen on validation: {chosen} ({' '.join(SETTINGS[chosen]) or 'the base settings'}), NLL {mean_nll[chosen]:.4f}")
    _print_test(chosen, sealed[chosen])
    print("\n| setting | validation NLL after T | validation AUROC | test AUROC (per seed) | test ECE after prior shift |")
    print("| --- | --- | --- | --- | --- |")
    for n in sorted(names, key=mean_nll.__getitem__):
        aurocs = [m["auroc"] for m in sealed[n]]
        ece = statistics.mean(m.get("ece_prior_adjusted", m["ece_calibrated"]) for m in sealed[n])
        print(f"| {n} | {mean_nll[n]:.4f} | {statistics.mean(v[1] for v in val[n]):.4f} | {statistics.mean(aurocs):.3f} "
              f"({', '.join(f'{a:.3f}' for a in aurocs)}) | {ece:.3f} |")
    if len(names) > 2:
        from scipy.stats import spearmanr

        test_auroc = [statistics.mean(m["auroc"] for m in sealed[n]) for n in names]
        test_ece = [statistics.mean(m.get("ece_prior_adjusted", m["ece_calibrated"]) for m in sealed[n]) for n in names]
        for what, score in (("NLL", [-mean_nll[n] for n in names]),
                            ("AUROC", [statistics.mean(v[1] for v in val[n]) for n in names])):
            for target, values in (("test AUROC", test_auroc), ("test ECE after prior shift", test_ece)):
                rho = spearmanr(score, values)
                print(f"Spearman across settings, validation {what} (better = higher) vs {target}: "
                      f"{rho.statistic:+.2f} (p = {rho.pvalue:.2g})")


def _print_test(name: str, metrics: list[dict[str, float]]) -> None:
    for seed, m in enumerate(metrics):
        print(f"  seed {seed}: test AUROC {m['auroc']:.3f}, ECE after temperature {m['ece_calibrated']:.3f}, "
              f"after prior shift {m.get('ece_prior_adjusted', float('nan')):.3f}")


if __name__ == "__main__":
    main()
