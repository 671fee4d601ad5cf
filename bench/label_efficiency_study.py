"""The label-efficiency study at full size on the shipped PneumoniaMNIST films (official splits): scratch,
feature extraction and fine-tuning of the demo's ImageNet backbone on nested, class-stratified subsets of the
training split (1, 2, 5, 10, 25 and 100 %, three seeds up to 10 %), every model tested on the same 624 test
films; prints the learning-curve table, the paired fine_tune − scratch difference at every size, and the
wall time. Everything is chosen on validation; the test split is only measured.

    python bench/label_efficiency_study.py                 # the full study (the README's table)
    python bench/label_efficiency_study.py --quick         # two sizes, one seed, one epoch: does it run
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from medtl.config import load_config
from medtl.demo import CONFIG, NPZ
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.log import setup_logging
from medtl.pipelines import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo config's")
    ap.add_argument("--size", type=int, default=None, help="default: the demo config's")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="copy the learning curve (PNG, SVG, CSV) and the paired table here")
    args = ap.parse_args()
    setup_logging("WARNING")  # the CLI's quiet: medtl's warnings, not MLflow's or MONAI's chatter
    study = (["study.fractions=[0.05,1.0]", "study.seeds=1", "train.epochs=1"] if args.quick else
             [f"study.seeds={args.seeds}", *([f"train.epochs={args.epochs}"] if args.epochs else [])])
    with tempfile.TemporaryDirectory() as tmp:
        m = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                            limit={"train": 600} if args.quick else None)
        cfg = load_config(CONFIG, [
            f"data.manifest={m}", *([f"data.image_size=[{args.size},{args.size}]"] if args.size else []), f"train.out_dir={tmp}/runs",
            "tracking.enabled=false", "evaluate.figures=false", "evaluate.gradcam=0", "name=study", *study])
        start = time.perf_counter()
        out = load_pipeline("label_efficiency").run(cfg)
        minutes = (time.perf_counter() - start) / 60
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in (Path(cfg.train.out_dir) / cfg.name).glob("*"):
                if f.name.startswith(("learning_curve", "paired_by_size")):
                    shutil.copy2(f, args.keep / f.name)
    print(f"PneumoniaMNIST, {cfg.data.image_size[0]} px, {cfg.model.backbone}, {cfg.train.epochs} epoch(s), seed base {cfg.train.seed}, "
          f"{os.cpu_count()} CPU cores, {minutes:.1f} min")
    print(out["summary"])


if __name__ == "__main__":
    main()
