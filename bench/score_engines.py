"""Scoring throughput on Spark and Ray vs one process: the same registered model and the same N cases scored by
``medtl score`` (single process), by ``medtl score --engine spark`` on local[1] and local[2], and by
``medtl score --engine ray`` on a Ray started on this machine (one worker). Prints cases/s for the whole command
(start-up included) and as each engine reports it (scoring only), the ratio, and each run's peak resident memory
(driver + JVM or Ray's processes + Python workers, from /proc).

    python bench/score_engines.py --n 1000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from medtl.data.synthetic import make_classification_set


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak resident MB, and the cases/s the command itself reports (scoring, start-up excluded)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    proc.wait()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {proc.stderr.read()[-2000:]}")
    reported = re.findall(r"([\d.]+) cases/s", proc.stdout.read())
    return time.perf_counter() - start, peak[0], float(reported[-1]) if reported else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "medtl")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_classification_set(tmp / "d", n=max(40, args.n), kind="png", size=(64, 64), split=True)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MEDTL_PROGRESS": "0", "MEDTL_LOG_LEVEL": "WARNING"}
        sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[64,64]", "train.epochs=1",
                "train.max_steps_per_epoch=2", "evaluate.bootstrap=10", "evaluate.gradcam=0", f"train.out_dir={tmp / 'runs'}",
                "tracking.registered_model=bench", "tracking.gate_min_auroc_ci_low=null", "tracking.gate_max_ece=null"]
        trained = subprocess.run([exe, "run", "diagnosis", *[x for s in sets for x in ("--set", s)]], env=env,
                                 capture_output=True, text=True, cwd=tmp)
        if trained.returncode != 0:
            raise SystemExit(f"training the benchmark's model failed: {trained.stderr[-2000:]}")
        cases = pd.read_csv(m)[["case_id", "image"]].head(args.n)
        cases.to_csv(m.parent / "cases.csv", index=False)
        model = ["--model", "models:/bench@candidate", "--manifest", str(m.parent / "cases.csv")]
        rows = []
        for name, extra, out in (("medtl score (1 process)", ["--no-track"], "one.csv"),
                                 ("spark local[1]", ["--engine", "spark", "--spark-master", "local[1]"], "s1.parquet"),
                                 ("spark local[2]", ["--engine", "spark", "--spark-master", "local[2]"], "s2.parquet"),
                                 ("ray, 1 worker", ["--engine", "ray", "--ray-workers", "1"], "r1.parquet")):
            seconds, rss, scoring = timed([exe, "score", *model, "--out", str(tmp / out), *extra], env)
            rows.append((name, len(cases) / seconds, scoring, rss))
    base = rows[0][1]
    print(f"{len(cases)} cases, 64 px PNG, EfficientNet-Lite0, {os.cpu_count()} CPU cores")
    print(f"{'engine':<26} {'cases/s (whole command)':>24} {'ratio':>7} {'cases/s (scoring only)':>23} {'peak RSS MB':>12}")
    for name, rate, scoring, rss in rows:
        print(f"{name:<26} {rate:>24.1f} {rate / base:>6.2f}x {scoring:>23.1f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
