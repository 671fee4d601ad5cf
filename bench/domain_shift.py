"""Source-only vs AdaBN, Deep CORAL and DANN on the same source data (shipped PneumoniaMNIST films) and a
generated scanner-like target domain; prints source and target test AUROC and ECE for each method and seed,
then the target AUROC's mean and SD over seeds (one seed of a 2-epoch run is not enough to rank the methods).

    python bench/domain_shift.py [--epochs 2] [--size 48] [--train-limit 2000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from medtl.config import load_config
from medtl.data.shift import Shift, make_shifted_domain
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.evaluate.report import fmt
from medtl.pipelines import load_pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=1, help="train.seed 0, 1, ... for every method")
    args = ap.parse_args()
    adaptation = load_pipeline("adaptation")
    methods = ("none", "adabn", "coral", "dann")
    with tempfile.TemporaryDirectory() as tmp:
        src = import_medmnist(REPO / "medtl/resources/pneumoniamnist.npz", Path(tmp) / "src", PNEUMONIA_CLASSES,
                              limit={"train": args.train_limit})
        tgt = make_shifted_domain(src, Path(tmp) / "tgt", Shift(), seed=0)
        rows, target_auroc = [], {m: [] for m in methods}
        for seed in range(args.seeds):
            for method in methods:
                cfg = load_config(REPO / "configs" / "pneumonia_adaptation.yaml", [
                    f"data.manifest={src}", f"adaptation.target_manifest={tgt}", f"adaptation.method={method}",
                    f"train.epochs={args.epochs}", f"data.image_size=[{args.size},{args.size}]", f"train.out_dir={tmp}/runs",
                    f"train.seed={seed}", f"name=adapt-{method}-{seed}", "tracking.enabled=false", "evaluate.bootstrap=200"])
                out = adaptation.run(cfg)
                s, t = out["source"].metrics, out["target"].metrics
                target_auroc[method].append(t["auroc"])
                rows.append(f"| {method} | {seed} | {fmt(s, 'auroc')} | {fmt(s, 'ece_calibrated')} | {fmt(t, 'auroc')} "
                            f"| {fmt(t, 'ece_calibrated')} |")
    print("| method | seed | source test AUROC | source ECE | target test AUROC | target ECE |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if args.seeds > 1:
        print("\n| method | target test AUROC, mean ± SD over seeds |\n| --- | --- |")
        for method, values in target_auroc.items():
            print(f"| {method} | {statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} |")


if __name__ == "__main__":
    main()
