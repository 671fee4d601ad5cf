"""Deep CORAL onto the official test films, a real collection shift, against the demo's model as trained.

Protocol, fixed before any of its test figures was seen (ninth session). The PneumoniaMNIST test films were
collected apart from the training pool, and every model of the demo is overconfident on them in the same way
(bench/ensemble_study.py). The demo's config unchanged, ``train.seed`` 0 .. S-1, twice per seed: source only,
and Deep CORAL (``adaptation.weight`` 0.3, the setting with which CORAL led ``bench/domain_shift.py``) drawing
batches of the 624 test films *without their labels* as its target. Temperature and threshold come from the
validation split for both; EM estimates the test prevalence from the unlabelled test scores. Printed for every
seed, whatever it shows: validation NLL and AUROC first, then test AUROC and ECE after the prior shift for
both, and the paired test difference (CORAL minus source only: ΔAUROC with its patient-bootstrap CI and
DeLong's p, ΔECE).

    python bench/real_shift.py [--seeds 3] [--bootstrap 1000]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.config import load_config
from medtl.data.sources import PNEUMONIA_CLASSES, import_medmnist
from medtl.demo import CONFIG, NPZ
from medtl.evaluate.paired import compare_predictions
from medtl.evaluate.report import fmt
from medtl.pipelines import load_pipeline

from backbone_study import study_arguments
from ensemble_study import validation_line


def main() -> None:
    args = study_arguments(seeds=3).parse_args()
    adaptation = load_pipeline("adaptation")
    sealed = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = import_medmnist(NPZ, Path(tmp) / "pm", PNEUMONIA_CLASSES,
                                   limit={"train": args.train_limit} if args.train_limit else None)
        table = pd.read_csv(manifest)
        target = manifest.parent / "test_films.csv"  # same folder: the image paths resolve as in the manifest
        table[table["split"] == "test"].to_csv(target, index=False)
        for seed in range(args.seeds):
            outs = {}
            for method in ("none", "coral"):
                cfg = load_config(CONFIG, [
                    f"data.manifest={manifest}", f"train.seed={seed}", f"train.out_dir={tmp}/runs", f"name=real-{method}-{seed}",
                    f"adaptation.method={method}", f"adaptation.target_manifest={target}", "adaptation.weight=0.3",
                    "tracking.enabled=false", f"evaluate.bootstrap={args.bootstrap}", "evaluate.figures=false",
                    "evaluate.gradcam=0"])
                out = adaptation.run(cfg)
                val = out["result"].val
                print(validation_line(f"seed {seed}, {method}", np.asarray(val["logits"], float),
                                      np.asarray(val["labels"]).astype(int)), flush=True)
                outs[method] = out["source"]  # the source manifest's test split: the same 624 films as the target
            sealed.append(outs)
    print("\ntest split, opened now:")
    for seed, outs in enumerate(sealed):
        for method, ev in outs.items():
            m = ev.metrics
            print(f"seed {seed}, {method}: test AUROC {fmt(m, 'auroc')}, specificity {m['specificity']:.3f}, ECE after "
                  f"temperature {m['ece_calibrated']:.3f}, after prior shift {fmt(m, 'ece_prior_adjusted')} "
                  f"(prevalence {m.get('prevalence_used', float('nan')):.3f})")
        d = compare_predictions(outs["coral"].predictions, outs["none"].predictions, ("coral", "none"), args.bootstrap).metrics
        print(f"seed {seed}, coral - none: dAUROC {d['delta_auroc']:+.3f} [{d['delta_auroc_ci_low']:+.3f}, "
              f"{d['delta_auroc_ci_high']:+.3f}] (DeLong p = {d['delong_p']:.2g}), dECE {d['delta_ece']:+.3f}", flush=True)


if __name__ == "__main__":
    main()
