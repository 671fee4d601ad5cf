"""ImageNet-pretrained vs random init at the same budget on the shipped PneumoniaMNIST films: fine-tunes
the demo's backbone both ways, for each seed, and prints test AUROC and ECE (after temperature and prior shift),
then their mean and SD over seeds: how much of a difference one seed makes.

    python bench/pretrained_vs_scratch.py [--epochs 3] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from medtl.config import load_config
from medtl.demo import CONFIG, NPZ
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.observe import NullTracker
from medtl.steps import evaluate_step, fit_model, strategy_variant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo config's")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    ap.add_argument("--seeds", type=int, default=1, help="train.seed 0, 1, ... for both strategies")
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"fine_tune": [], "scratch": []}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        for seed in range(args.seeds):
            base = load_config(CONFIG, [f"data.manifest={manifest}", *([f"train.epochs={args.epochs}"] if args.epochs else []),
                                        f"data.image_size=[{args.size},{args.size}]", f"train.seed={seed}",
                                        f"train.out_dir={tmp}/runs-{seed}", "tracking.enabled=false", "evaluate.bootstrap=200"])
            for strategy in results:
                ev = evaluate_step(fit_model(strategy_variant(base, strategy)), NullTracker())
                m = ev.metrics
                ece = m.get("ece_prior_adjusted", m["ece_calibrated"])
                results[strategy].append((m["auroc"], ece))
                print(f"seed {seed} {strategy:>10} ({'imagenet' if strategy != 'scratch' else 'none'}): test AUROC "
                      f"{m['auroc']:.3f} [{m['auroc_ci_low']:.3f}, {m['auroc_ci_high']:.3f}], ECE {ece:.3f}", flush=True)
    if args.seeds > 1:
        for strategy, rows in results.items():
            auroc, ece = [r[0] for r in rows], [r[1] for r in rows]
            print(f"{strategy:>10}: test AUROC {statistics.mean(auroc):.3f} ± {statistics.stdev(auroc):.3f}, "
                  f"ECE {statistics.mean(ece):.3f} ± {statistics.stdev(ece):.3f} (mean ± SD over {args.seeds} seeds)")


if __name__ == "__main__":
    main()
