"""Does the same seed train the same weights in every new process on this machine?

The twenty-eighth session saw the demo's full-data fine-tune train other weights in 1 fresh process of 12 (README,
"The result"). This script trains the demo's fine-tune for a few steps in N new processes, one after another, each
with `train.seed` 0 and the demo's config, and records after every optimizer step a digest of each trained tensor.
It prints how many distinct final weights the processes reached and, for each process unlike the first, the first
step and the tensors at which it parted. Nothing is evaluated; no test film is read.

    python bench/same_seed_processes.py [--processes 12] [--steps 40]

Each process takes about a minute on 2 cores (most of it decoding the films).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:12]


def child(manifest: Path, steps: int, out: Path) -> None:
    """Train with a hook on the optimizer that records each trained tensor's digest after every step."""
    import medtl.train.loop as loop_module
    from medtl.config import load_config
    from medtl.demo import CONFIG
    from medtl.train.run import train

    record: list[dict[str, str]] = []
    plain_epoch = loop_module.train_one_epoch

    def epoch(loop, index):  # type: ignore[no-untyped-def]
        names = {id(p): n for n, p in loop.model.named_parameters()}
        plain_step = loop.optimizer.step

        def step(*args, **kwargs):  # type: ignore[no-untyped-def]
            done = plain_step(*args, **kwargs)
            record.append({names[id(p)]: digest(p) for g in loop.optimizer.param_groups for p in g["params"]
                           if p.grad is not None})
            return done
        loop.optimizer.step = step
        return plain_epoch(loop, index)

    loop_module.train_one_epoch = epoch
    with tempfile.TemporaryDirectory() as runs:
        cfg = load_config(CONFIG, [f"data.manifest={manifest}", f"train.out_dir={runs}", "train.epochs=1",
                                   f"train.max_steps_per_epoch={steps}", "tracking.enabled=false"])
        train(cfg)
    out.write_text(json.dumps(record))


def parting(first: list[dict[str, str]], other: list[dict[str, str]]) -> str:
    for step, (a, b) in enumerate(zip(first, other), start=1):
        differ = [name for name in a if a[name] != b.get(name)]
        if differ:
            return f"step {step}: {len(differ)} of {len(a)} tensors, first {differ[0]}"
    return "no step differs" if len(first) == len(other) else "a different number of steps"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=12)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.steps, Path(args.child[1]))
    from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
    from medtl.demo import NPZ

    work = Path(tempfile.mkdtemp(prefix="medtl-same-seed-"))
    manifest = import_medmnist(NPZ, work / "films", PNEUMONIA_CLASSES)
    records = []
    for k in range(args.processes):
        out = work / f"process{k}.json"
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", str(manifest), str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records.append(json.loads(out.read_text()))
        final = hashlib.sha256(json.dumps(records[-1][-1], sort_keys=True).encode()).hexdigest()[:12]
        print(f"process {k + 1}: final weights {final}" + ("" if k == 0 else f"; {parting(records[0], records[-1])}"),
              flush=True)
    finals = Counter(hashlib.sha256(json.dumps(r[-1], sort_keys=True).encode()).hexdigest()[:12] for r in records)
    print(f"{len(finals)} distinct final weights in {args.processes} processes: "
          + ", ".join(f"{h} x{n}" for h, n in finals.most_common()))
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
