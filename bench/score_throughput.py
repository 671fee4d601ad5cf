"""Scoring throughput and memory: medtl's scorer (batched, streaming, rows flushed as they complete) vs a
plain per-file loop (read → transform → model → write, one case at a time), on the same model and cases,
at N and 10×N cases. Each runs in its own process; start-up and model loading are excluded from cases/s,
peak RSS is the whole process.   python bench/score_throughput.py --n 100"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNNER = r"""
import json, resource, sys, time, csv
import pandas as pd, torch
from pathlib import Path
from medtl.models.checkpoint import load_bundle
model, manifest, out, mode = sys.argv[1:5]
bundle = load_bundle(model)
table = pd.read_csv(manifest); root = Path(manifest).parent
start = time.perf_counter()
if mode == "medtl":
    from medtl.scoring import score
    score(bundle, [{"case_id": r.case_id, "image": str(root / r.image)} for r in table.itertuples()], Path(out), batch_size=32)
else:
    from medtl.data.transforms import build_transforms
    t = build_transforms(bundle.config.data, False, bundle.config.model.in_channels)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        for r in table.itertuples():
            x = t({"case_id": r.case_id, "image": str(root / r.image)})["image"][None]
            with torch.no_grad():
                p = torch.softmax(bundle.model(x) / bundle.temperature, 1)[0]
            w.writerow([r.case_id, *p.tolist()])
            fh.flush()
rate = len(table) / (time.perf_counter() - start)
print(json.dumps({"rate": rate, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(model: str, manifest: Path, out: Path, mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", RUNNER, model, str(manifest), str(out), mode],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    from medtl.config import load_config
    from medtl.data.synthetic import make_classification_set
    from medtl.steps import fit_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_classification_set(tmp / "train", n=40, kind="png", size=(args.size, args.size))
        cfg = load_config(None, [f"data.manifest={small}", "data.classes=[normal,lesion]",
                                 f"data.image_size=[{args.size},{args.size}]", "train.epochs=1",
                                 f"train.out_dir={tmp / 'runs'}", "tracking.enabled=false"])
        model = str(fit_model(cfg).model_path)
        print(f"EfficientNet-Lite0, {args.size}x{args.size} PNG inputs")
        for n in (args.n, 10 * args.n):
            m = make_classification_set(tmp / f"s{n}", n=n, kind="png", size=(args.size, args.size), seed=n)
            ours = measure(model, m, tmp / f"o{n}.csv", "medtl")
            plain = measure(model, m, tmp / f"p{n}.csv", "plain")
            print(f"N={n:5d}: medtl {ours['rate']:7.1f} cases/s, peak RSS {ours['rss_mb']:5.0f} MB | plain loop "
                  f"{plain['rate']:7.1f} cases/s, peak RSS {plain['rss_mb']:5.0f} MB | speed ratio {ours['rate'] / plain['rate']:.2f}x")


if __name__ == "__main__":
    main()
