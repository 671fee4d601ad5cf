"""Source-only vs AdaBN, Deep CORAL and DANN on the same source data (shipped PneumoniaMNIST films) and a
generated scanner-like target domain; prints source and target test AUROC and ECE for each method.

    python bench/domain_shift.py [--epochs 2] [--size 48] [--train-limit 2000]
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    adaptation = load_pipeline("adaptation")
    with tempfile.TemporaryDirectory() as tmp:
        src = import_medmnist(REPO / "medtl/resources/pneumoniamnist.npz", Path(tmp) / "src", PNEUMONIA_CLASSES,
                              limit={"train": args.train_limit})
        tgt = make_shifted_domain(src, Path(tmp) / "tgt", Shift(), seed=0)
        rows = []
        for method in ("none", "adabn", "coral", "dann"):
            cfg = load_config(REPO / "configs" / "pneumonia_adaptation.yaml", [
                f"data.manifest={src}", f"adaptation.target_manifest={tgt}", f"adaptation.method={method}",
                f"train.epochs={args.epochs}", f"data.image_size=[{args.size},{args.size}]", f"train.out_dir={tmp}/runs",
                f"name=adapt-{method}", "tracking.enabled=false", "evaluate.bootstrap=200"])
            out = adaptation.run(cfg)
            s, t = out["source"].metrics, out["target"].metrics
            rows.append(f"| {method} | {fmt(s, 'auroc')} | {fmt(s, 'ece_calibrated')} | {fmt(t, 'auroc')} | {fmt(t, 'ece_calibrated')} |")
    print("| method | source test AUROC | source ECE | target test AUROC | target ECE |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
