"""A deep ensemble of the demo's fine-tuned model, the test split sealed until validation has spoken.

Protocol, fixed before any of its test figures was seen (ninth session): fine-tune the demo's model (then
EfficientNet-Lite0) with its config unchanged, ``train.seed`` 0 .. K-1; the ensemble averages the members'
softmax probabilities (Lakshminarayanan et al. 2017; the method Ovadia et al. 2019 found best calibrated under
dataset shift), takes their log as its logits, and gets one temperature and one decision threshold from
validation like any medtl model, then the prior shift with EM's prevalence on the unlabelled test scores. The
primary ensemble is the first three members (what the demo's budget could afford), the secondary all K.
Validation figures (NLL after temperature, AUROC) are printed first for every member and both ensembles; the
test figures after them, all of them, whatever they show.

    python bench/ensemble_study.py [--members 5] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from medtl.config import EvaluateConfig, load_config
from medtl.data.manifest import rows_of_split
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.evaluate.calibration import calibrate, calibration_metrics
from medtl.evaluate.report import evaluate_classification
from medtl.evaluate.run import predict_logits
from medtl.probability import probabilities
from medtl.steps import fit_model, strategy_variant

PRIMARY = 3


def ensemble_logits(members: list[np.ndarray]) -> np.ndarray:
    """Log of the mean of the members' (untempered) softmax probabilities."""
    return np.log(np.mean([probabilities(m) for m in members], axis=0).clip(1e-12))


def validation_line(name: str, logits: np.ndarray, y: np.ndarray) -> str:
    from sklearn.metrics import roc_auc_score

    chosen = calibrate(logits, y, "youden")
    probs = probabilities(logits, chosen.temperature)
    return (f"{name}: validation NLL after temperature {calibration_metrics(y, probs)['nll']:.4f}, "
            f"AUROC {roc_auc_score(y, probs[:, 1]):.4f} (temperature {chosen.temperature:.2f})")


def test_line(name: str, val_logits: np.ndarray, y_val: np.ndarray, logits: np.ndarray, table, cfg: EvaluateConfig,
              out: Path) -> str:
    chosen = calibrate(val_logits, y_val, "youden")
    m = evaluate_classification(table, logits, PNEUMONIA_CLASSES, chosen.threshold, chosen.temperature, cfg, out,
                                source_prior=chosen.source_prior, source_rates=chosen.call_rates).metrics
    ci = lambda k: f"[{m.get(k + '_ci_low', float('nan')):.3f}, {m.get(k + '_ci_high', float('nan')):.3f}]"  # noqa: E731
    return (f"{name}: test AUROC {m['auroc']:.3f} {ci('auroc')}, sensitivity {m['sensitivity']:.3f}, specificity "
            f"{m['specificity']:.3f}, ECE {m['ece']:.3f} -> {m['ece_calibrated']:.3f} (temperature) -> "
            f"{m.get('ece_prior_adjusted', float('nan')):.3f} {ci('ece_prior_adjusted')} (prior shift, "
            f"prevalence {m.get('prevalence_used', float('nan')):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5, help="train.seed 0 .. members-1")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--train-limit", type=int, default=None, help="cap train films for a quicker run")
    args = ap.parse_args()
    val, test = [], []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        for seed in range(args.members):
            cfg = load_config(CONFIG, [f"data.manifest={manifest}", f"train.seed={seed}", f"train.out_dir={tmp}/m{seed}",
                                       "tracking.enabled=false", "evaluate.figures=false", "evaluate.gradcam=0"])
            result = fit_model(strategy_variant(cfg, "fine_tune"))
            table = rows_of_split(result.prepared.table, "test")
            logits, table = predict_logits(result.bundle, table, torch.device("cpu"), 64)
            val.append(np.asarray(result.val["logits"], float))
            test.append(logits)
            y_val = np.asarray(result.val["labels"]).astype(int)
            print(validation_line(f"member seed {seed}", val[-1], y_val), flush=True)
        groups = {f"ensemble of {PRIMARY} (primary)": slice(0, PRIMARY), f"ensemble of {args.members}": slice(0, args.members)}
        for name, part in groups.items():
            print(validation_line(name, ensemble_logits(val[part]), y_val), flush=True)
        ev_cfg = EvaluateConfig(bootstrap=args.bootstrap, prevalence="em", figures=False, gradcam=0)
        print("\ntest split, opened now:")
        for name, part in groups.items():
            print(test_line(name, ensemble_logits(val[part]), y_val, ensemble_logits(test[part]), table, ev_cfg,
                            Path(tmp) / name.replace(" ", "_")), flush=True)
        for seed in range(args.members):
            print(test_line(f"member seed {seed}", val[seed], y_val, test[seed], table, ev_cfg, Path(tmp) / f"t{seed}"))


if __name__ == "__main__":
    main()
