"""How far does input size carry the demo's fine-tune? EfficientNet-Lite2 at 48, 96 and 128 px, test split sealed.

Protocol, fixed before any of its test figures was seen (eleventh session). MedMNIST v2 measured ResNets on the 28
px films upsampled to 224 px higher than at 28 px (ResNet-18 0.944 -> 0.956 test AUROC; ResNet-50 at 224 px 0.962),
and in the backbone study Lite2 at 64 px was above 48 px in every seed. This study asks how much more a larger input
buys with the demo's recipe otherwise unchanged (Lite2, 3 epochs, lr 0.002, stem and blocks 0-2 frozen, layer-wise
decay 0.8, inverse-frequency class weights, batch 64): 48 px (the demo's), 96 px and 128 px (the GPU config's size),
``train.seed`` 0 and 1. It is descriptive: 96 and 128 px cost several times the demo's fine-tuning time (2.2x and
3.9x, measured), so neither can enter the 10-minute demo, and no config changes on its result.

Printed in this order: every model's validation NLL after temperature and AUROC; then, the test split opened,
test AUROC with CI, specificity, ECE after temperature and after the prior shift (EM prevalence from the
unlabelled test scores), and per seed the paired test difference against 48 px (dAUROC with its bootstrap CI,
DeLong's p).

    python bench/resolution_study.py [--seeds 2] [--sizes 48,96,128] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from backbone_study import Trained, print_paired, print_test, test_evaluation, train
from medtl.config import EvaluateConfig
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import NPZ
from medtl.evaluate.paired import compare_predictions

BACKBONE = "efficientnet-lite2"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sizes", default="48,96,128", help="input sizes in px; the first is the paired reference")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    args = ap.parse_args()
    seeds, sizes = range(args.seeds), [int(s) for s in args.sizes.split(",")]
    runs: dict[tuple[int, int], Trained] = {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        for seed in seeds:
            for px in sizes:
                run = runs[px, seed] = train(manifest, BACKBONE, px, seed, Path(tmp) / f"{px}px-{seed}")
                nll, auroc = run.validation()
                print(f"{px} px, seed {seed}: validation NLL after temperature {nll:.4f}, AUROC {auroc:.4f} "
                      f"({run.minutes:.1f} min to fine-tune)", flush=True)
        print("\ntest split, opened now:", flush=True)
        cfg = EvaluateConfig(bootstrap=args.bootstrap, prevalence="em", figures=False, gradcam=0)
        evals = {key: test_evaluation(run, cfg, Path(tmp) / "test" / f"{key[0]}px-{key[1]}") for key, run in runs.items()}
        for (px, seed), ev in evals.items():
            print_test(f"{px} px, seed {seed}", ev.metrics)
        for px in sizes:
            m = [evals[px, s].metrics for s in seeds]
            print(f"{px} px, mean over seeds: test AUROC {np.mean([x['auroc'] for x in m]):.3f}, ECE after prior shift "
                  f"{np.mean([x.get('ece_prior_adjusted', np.nan) for x in m]):.3f}, fine-tuning "
                  f"{np.mean([runs[px, s].minutes for s in seeds]):.1f} min")
        for px in sizes[1:]:
            for seed in seeds:
                d = compare_predictions(evals[px, seed].predictions, evals[sizes[0], seed].predictions,
                                        (f"{px}px", f"{sizes[0]}px"), args.bootstrap).metrics
                print_paired(f"{px} px - {sizes[0]} px, seed {seed}", d)


if __name__ == "__main__":
    main()
