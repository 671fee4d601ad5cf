"""ImageNet-pretrained vs random init at the same budget on the shipped PneumoniaMNIST films: fine-tunes
EfficientNet-Lite0 both ways and prints both test AUROCs.   python bench/pretrained_vs_scratch.py [--epochs 3]"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                            limit={"train": args.train_limit} if args.train_limit else None)
        base = load_config(CONFIG, [f"data.manifest={m}", *([f"train.epochs={args.epochs}"] if args.epochs else []),
                                                             f"data.image_size=[{args.size},{args.size}]",
                                                             f"train.out_dir={tmp}/runs", "tracking.enabled=false",
                                                             "evaluate.bootstrap=200"])
        for strategy in ("fine_tune", "scratch"):
            result = fit_model(strategy_variant(base, strategy))
            ev = evaluate_step(result, NullTracker())
            print(f"{strategy:>10} ({'imagenet' if strategy != 'scratch' else 'none'}): test AUROC "
                  f"{ev.metrics['auroc']:.3f} [{ev.metrics['auroc_ci_low']:.3f}, {ev.metrics['auroc_ci_high']:.3f}]")


if __name__ == "__main__":
    main()
