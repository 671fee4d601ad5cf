"""Scoring throughput and memory: `medtl score` (batched, streaming) vs a plain per-file loop (read →
transform → model → write, one case at a time), on the same model and cases, at N and 10×N cases.
Prints cases/s, peak RSS and the ratios.   python bench/score_throughput.py --n 200"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN = r"""
import sys, csv, time, torch, pandas as pd
from medtl.models.checkpoint import load_bundle
from medtl.data.transforms import build_transforms
b = load_bundle(sys.argv[1]); t = build_transforms(b.config.data, False, b.config.model.in_channels)
table = pd.read_csv(sys.argv[2]); root = __import__("pathlib").Path(sys.argv[2]).parent
start = time.perf_counter()
with open(sys.argv[3], "w", newline="") as fh:
    w = csv.writer(fh)
    for r in table.itertuples():
        x = t({"case_id": r.case_id, "image": str(root / r.image)})["image"][None]
        with torch.no_grad():
            p = torch.softmax(b.model(x) / b.temperature, 1)[0]
        w.writerow([r.case_id, *p.tolist()])
print(len(table) / (time.perf_counter() - start))
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    from medtl.config import load_config
    from medtl.data.synthetic import make_classification_set
    from medtl.train.run import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_classification_set(tmp / "train", n=40, kind="png", size=(64, 64))
        cfg = load_config(None, [f"data.manifest={small}", "data.classes=[normal,lesion]", "data.image_size=[64,64]",
                                 "train.epochs=1", f"train.out_dir={tmp / 'runs'}", "tracking.enabled=false"])
        model = str(train(cfg).model_path)
        for n in (args.n, 10 * args.n):
            m = make_classification_set(tmp / f"s{n}", n=n, kind="png", size=(64, 64), seed=n)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "medtl.cli", "score", "--model", model, "--manifest", str(m),
                            "--out", str(tmp / f"o{n}.csv"), "--no-track", "--batch-size", "32"], check=True,
                           capture_output=True)
            ours = n / (time.perf_counter() - t0)
            rss_ours = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            plain_rate = float(subprocess.run([sys.executable, "-c", PLAIN, model, str(m), str(tmp / f"p{n}.csv")],
                                              capture_output=True, text=True, check=True).stdout.strip())
            print(f"N={n:5d}: medtl score {ours:7.1f} cases/s (whole command, start-up included; "
                  f"peak RSS of children so far {rss_ours:.0f} MB) | plain loop {plain_rate:7.1f} cases/s "
                  f"(loop only) | ratio {ours / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
