"""A temperature fitted under simulated drift (Tomani et al. 2021; ``evaluate.drift_calibration``) against the plain
validation temperature, on the demo's full-data fine-tune, per seed. The protocol (docs/studies.md, twenty-second
session) was committed with this script before any of its test figures existed; both temperatures are kept from one
trained model, so only the temperature (and the threshold chosen on validation at it) differs.

For each seed it prints, at each temperature:
- validation films (in domain): ECE, as the model is calibrated there;
- the validation films under ``medtl manifest shift``'s scanner-like change (labels of validation films only);
- the 624 test films: AUROC (a temperature cannot change it), ECE after temperature and after the EM prior shift,
  and the calibration slope.

    python bench/drift_calibration_study.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtl.config import load_config
from medtl.data.datasets import case_items
from medtl.data.manifest import read_manifest, rows_of_split
from medtl.data.shift import Shift, make_shifted_domain
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.drift_calibration import drift_temperature
from medtl.evaluate.calibration import calibrate, ece_binary
from medtl.models.checkpoint import unwrap
from medtl.models.predictor import Predictor
from medtl.observe import NullTracker
from medtl.probability import probabilities
from medtl.steps import evaluate_step, fit_model


def logits_of(predictor: Predictor, items: list[dict]) -> np.ndarray:
    return np.stack([r["logits"] for r in predictor.predict(items)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES)
        table = pd.read_csv(manifest)
        table[table["split"] == "val"].to_csv(Path(tmp) / "pm" / "val.csv", index=False)
        shifted = make_shifted_domain(Path(tmp) / "pm" / "val.csv", Path(tmp) / "shifted", Shift(), seed=0)
        for seed in range(args.seeds):
            cfg = load_config(CONFIG, [f"data.manifest={manifest}", f"train.seed={seed}", f"train.out_dir={tmp}/runs-{seed}",
                                       "tracking.enabled=false", "evaluate.bootstrap=200", "evaluate.typicality=false"])
            result = fit_model(cfg)
            bundle, rows = result.bundle, []
            predictor = Predictor(unwrap(bundle.model), bundle.spec, torch.device("cpu"), cache=True)
            val = case_items(rows_of_split(result.prepared.table, "val"), bundle.classes)
            y_val = np.array([it["label"] for it in val])
            val_logits = logits_of(predictor, val)
            moved = case_items(read_manifest(shifted).table, bundle.classes)
            moved_logits = logits_of(Predictor(unwrap(bundle.model), bundle.spec, torch.device("cpu")), moved)
            y_moved = np.array([it["label"] for it in moved])
            drift = drift_temperature(predictor, val, cfg.evaluate.seed)
            for name, temperature in (("plain", None), ("drift", drift.temperature if drift else None)):
                if name == "drift" and drift is None:
                    print(f"seed {seed}: no drift temperature")
                    continue
                chosen = calibrate(val_logits, y_val, cfg.train.threshold_rule, cfg.train.target_sensitivity,
                                   temperature=temperature)
                bundle.temperature, bundle.threshold = chosen.temperature, chosen.threshold
                bundle.extra.pop("target_prior", None)  # each evaluation estimates its own prevalence
                m = evaluate_step(result, NullTracker()).metrics
                rows.append((name, chosen.temperature,
                             ece_binary(y_val, probabilities(val_logits, chosen.temperature)[:, 1])[0],
                             ece_binary(y_moved, probabilities(moved_logits, chosen.temperature)[:, 1])[0],
                             m["auroc"], m["ece_calibrated"], m.get("ece_prior_adjusted", float("nan")),
                             m.get("calibration_slope_calibrated", float("nan"))))
            extra = f", strongest noise sigma {drift.strongest_noise:.3f}" if drift else ""
            print(f"seed {seed}{extra}")
            print("  temperature | T | val ECE | shifted val ECE | test AUROC | test ECE after T | after prior shift | test slope")
            for r in rows:
                print(f"  {r[0]:>5} | {r[1]:.3f} | " + " | ".join(f"{v:.3f}" for v in r[2:]), flush=True)
    print(f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
