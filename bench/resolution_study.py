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

import tempfile
from functools import partial
from pathlib import Path

from backbone_study import Trained, report_test, study_arguments, train, train_arms

BACKBONE = "efficientnet-lite2"


def main() -> None:
    ap = study_arguments(seeds=2)
    ap.add_argument("--sizes", default="48,96,128", help="input sizes in px; the first is the paired reference")
    args = ap.parse_args()
    seeds, sizes = range(args.seeds), [int(s) for s in args.sizes.split(",")]
    arms = {px: partial(_train_arm, px=px) for px in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_arms(arms, seeds, args.train_limit, Path(tmp), label=lambda px: f"{px} px")
        print("\ntest split, opened now:", flush=True)
        report_test(runs, seeds, sizes[0], args.bootstrap, Path(tmp) / "test", label=lambda px: f"{px} px")


def _train_arm(manifest: Path, seed: int, out: Path, px: int) -> Trained:
    return train(manifest, BACKBONE, px, seed, out)


if __name__ == "__main__":
    main()
