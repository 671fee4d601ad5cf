"""What typicality flags: a trained classifier's test films as they are, and the same films as exports go wrong
(inverted grey levels, rotated, flipped upside down, another scanner's response) or as no film at all (noise).
For each set: the share of films marked unlike the training films, beside the model's AUROC on them, so a reader
sees both whether the model still works and whether typicality said so. Nothing here chooses anything.

    python bench/typicality_shift.py --model demo_out/runs/demo-fine_tune/model.pt \\
        --manifest demo_out/pneumoniamnist/manifest.csv
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

from medtl.data.manifest import read_manifest, rows_of_split
from medtl.data.shift import Shift, apply_shift
from medtl.models.checkpoint import load_bundle
from medtl.models.predictor import Predictor, device_for
from medtl.typicality import LEVEL

VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "as exported": lambda x, rng: x,
    "grey levels inverted (MONOCHROME1 read as 2)": lambda x, rng: 1.0 - x,
    "rotated 90°": lambda x, rng: np.rot90(x),
    "upside down": lambda x, rng: x[::-1],
    "another scanner (medtl's default Shift)": lambda x, rng: apply_shift(x, Shift(), rng),
    "uniform noise, no film": lambda x, rng: rng.random(x.shape),
}


def measure(model: Path, manifest: Path, split: str, seed: int) -> pd.DataFrame:
    bundle = load_bundle(model)
    if "typicality" not in bundle.extra:
        raise SystemExit(f"{model}: this model measures no typicality (trained before it, or with too few cases)")
    table = rows_of_split(read_manifest(manifest).table, split)
    positive = bundle.classes[1]
    y = (table["label"] == positive).to_numpy()
    predictor = Predictor.of(bundle, device_for("auto"), batch_size=64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in VARIANTS.items():
            rng = np.random.default_rng(seed)
            folder = Path(tmp) / str(len(rows))
            folder.mkdir()
            items = []
            for case, path in zip(table["case_id"], table["image_path"]):
                film = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
                out = folder / f"{case}.png"
                Image.fromarray((np.clip(change(film, rng), 0, 1) * 255).round().astype(np.uint8)).save(out)
                items.append({"case_id": str(case), "image": str(out)})
            recs = list(predictor.predict(items))
            p = np.array([r["probs"][1] for r in recs])
            typ = np.array([r["typicality"] for r in recs])
            rows.append({"films": name, "n": len(recs), "unlike training": f"{np.mean(typ <= LEVEL):.1%}",
                         "median typicality": f"{np.median(typ):.3f}", f"AUROC ({positive})": f"{roc_auc_score(y, p):.3f}"})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    table = measure(args.model, args.manifest, args.split, args.seed)
    print("| " + " | ".join(table.columns) + " |\n|" + " --- |" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
