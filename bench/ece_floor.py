"""What ECE would a model with exactly right probabilities show on the demo's 624 test films?

Binned ECE is biased upwards in small samples: in every bin the observed frequency scatters around the true rate,
and the absolute gaps only add up. This script keeps the model's own calibrated test probabilities, draws labels from
them (so by construction each probability is exactly right), and measures medtl's ECE (15 equal-width bins, as in
the reports). The result is the floor under #16's target of ECE <= 0.03. No test label is read, and nothing is
chosen from the result.

    medtl demo                      # writes demo_out/runs/*/evaluation_test/predictions.csv
    python bench/ece_floor.py [--predictions PATH] [--draws 2000] [--seed 0]

The output gives the floor's median and 95% range, and the share of draws at or below 0.03. It does the same
for larger test sets (probabilities drawn from the same ones), to show how the floor falls as the sample grows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.evaluate.calibration import ece_binary

DEFAULT = Path("demo_out/runs/demo-fine_tune/evaluation_test/predictions.csv")


def floor(p: np.ndarray, draws: int, rng: np.random.Generator, bins: int = 15) -> np.ndarray:
    """ECE of ``draws`` label sets drawn from ``p`` itself: calibrated by construction."""
    return np.array([ece_binary(rng.random(len(p)) < p, p, bins)[0] for _ in range(draws)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", type=Path, default=DEFAULT)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.predictions.is_file():
        raise SystemExit(f"{args.predictions}: not found; run `medtl demo` first, or give --predictions PATH")
    table = pd.read_csv(args.predictions)
    positive = [c for c in table.columns if c.startswith("prob_")][-1]
    p = table[positive].to_numpy(dtype=float)
    rng = np.random.default_rng(args.seed)
    print(f"{args.predictions}: {len(p)} cases, {positive} (after temperature scaling), {args.draws} label draws, "
          f"seed {args.seed}")
    print("cases | ECE of exactly right probabilities: median [2.5%, 97.5%] | share of draws <= 0.03")
    for n in (len(p) // 2, len(p), 2 * len(p), 5000, 20000):
        sample = p if n == len(p) else rng.choice(p, n, replace=n > len(p))
        e = floor(sample, args.draws, rng)
        lo, mid, hi = np.quantile(e, [0.025, 0.5, 0.975])
        print(f"{n:>6,} | {mid:.4f} [{lo:.4f}, {hi:.4f}] | {np.mean(e <= 0.03):.1%}")


if __name__ == "__main__":
    main()
