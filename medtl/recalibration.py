"""A model for a new site: its calibration slope, intercept and decision threshold chosen again on a labelled
sample of that site's cases; the weights stay as trained but for the output bias.

A temperature fitted on the training hospital's validation split does not carry to films collected elsewhere:
on PneumoniaMNIST's separately collected test films the demo's model stays overconfident after temperature and
an EM-estimated prevalence, and neither a deep ensemble nor feature alignment to the unlabelled films brings its
ECE near 0.03 (README, docs/studies.md). A calibration slope and intercept fitted on about a hundred of the new site's labelled
cases halve it there (``bench/site_recalibration.py``); a temperature alone does not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtl.errors import ManifestError, MedtlError, ModelError
from medtl.evaluate.calibration import Calibration, at_bound, calibrate
from medtl.log import logger
from medtl.models.checkpoint import ModelBundle

def site_labels(bundle: ModelBundle, table: pd.DataFrame) -> np.ndarray:
    """The class index of every case; a missing or unknown label, or a class absent from the sample, is an
    error naming it (no calibration or threshold can be chosen without both classes)."""
    labels = table["label"] if "label" in table else pd.Series([None] * len(table), dtype=object)
    unlabelled = np.flatnonzero(labels.isna().to_numpy())
    if unlabelled.size:
        raise ManifestError(f"case {table['case_id'].iloc[unlabelled[0]]}: no label; recalibration needs the label of "
                            "every case in the site's sample")
    index = {c: i for i, c in enumerate(bundle.classes)}
    unknown = sorted(set(labels.astype(str)) - set(index))
    if unknown:
        raise ManifestError(f"label {unknown[0]!r} is not one of the model's classes ({', '.join(bundle.classes)})")
    y = labels.astype(str).map(index).to_numpy().astype(int)
    counts = np.bincount(y, minlength=len(bundle.classes))
    if (counts == 0).any():
        missing = bundle.classes[int(np.flatnonzero(counts == 0)[0])]
        raise ManifestError(f"no case of class {missing!r} in the site's sample: recalibration needs cases of every class")
    return y


def recalibrate(bundle: ModelBundle, table: pd.DataFrame, rule: str = "youden", target_sensitivity: float = 0.9,
                device: str = "auto") -> Calibration:
    """Chooses on ``table`` (a random sample of the new site's labelled cases, paths resolved) the model's
    calibration at that site and sets it on ``bundle``; returns what was chosen.

    Binary: calibration slope and intercept (``logistic_recalibration``). The intercept goes into the bias of
    the output layer, so the model's logits carry it wherever they are read (evaluation, scoring, the pyfunc,
    Spark) and the slope is then the temperature ``calibrate`` finds on them, with the threshold on the
    resulting probabilities and the sample's class mix as the prior they are calibrated under (a later
    ``score --prevalence`` shifts from it). Multi-class: a temperature and the class mix, as at validation."""
    from medtl.evaluate.calibration import logistic_recalibration
    from medtl.evaluate.run import predict_logits
    from medtl.models.checkpoint import unwrap
    from medtl.models.predictor import device_for

    if bundle.task != "classification":
        raise MedtlError(f"recalibration is for classification models; this one is a {bundle.task} model")
    table = table.reset_index(drop=True)
    y = site_labels(bundle, table)  # every label checked before any case is read
    logits, kept = predict_logits(bundle, table, device_for(device))
    if len(kept) != len(table):  # the model's config skips unreadable cases
        table, y = kept, site_labels(bundle, kept)
    fitted: dict[str, float] = {}
    if len(bundle.classes) == 2:
        from sklearn.metrics import roc_auc_score

        auroc = float(roc_auc_score(y, logits[:, 1] - logits[:, 0]))
        if auroc <= 0.5:
            raise MedtlError(f"on the site's {len(y)} cases the model does not separate the classes (AUROC {auroc:.2f}): "
                             "recalibration cannot rescue it; do not use this model at this site")
        slope, intercept = logistic_recalibration(logits, y)
        fitted = {"slope": slope, "intercept": intercept}
        if at_bound(slope):
            logger.warning("calibration slope %.2f is at its bound: the %d cases %s; label more cases of the site", slope,
                           len(y), "are separated perfectly" if slope > 1 else "are barely told apart by the model")
        shift = intercept / slope  # in logit units before the temperature
        with torch.no_grad():
            unwrap(bundle.model).head[-1].bias[1] += shift
        logits = logits.astype(np.float64)
        logits[:, 1] += shift
    chosen = calibrate(logits, y, rule, target_sensitivity, cases="cases of the site", classes=bundle.classes)
    bundle.extra.pop("target_prior", None)
    bundle.temperature, bundle.threshold = chosen.temperature, chosen.threshold
    bundle.extra.pop("calibration_caveat", None)
    if chosen.caveat:
        bundle.extra["calibration_caveat"] = chosen.caveat
    bundle.extra["source_prior"] = [float(v) for v in chosen.source_prior]
    bundle.extra.pop("source_call_rates", None)
    if chosen.call_rates is not None:
        bundle.extra["source_call_rates"] = chosen.call_rates
    ids = "\n".join(sorted(table["case_id"].astype(str)))
    bundle.extra["recalibrated_on"] = {"cases": int(len(y)), "per_class": np.bincount(y, minlength=len(bundle.classes)).tolist(),
                                       "case_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(), "threshold_rule": rule,
                                       **fitted}
    return chosen


def recalibrate_model(model_ref: str, manifest: Path, out: Path, split: str | None = None, rule: str = "youden",
                      target_sensitivity: float = 0.9, device: str = "auto",
                      splits: Path | None = None) -> tuple[ModelBundle, tuple[float, float]]:
    """``medtl recalibrate``: loads the model, recalibrates it on the manifest's cases (one split, or all) and
    writes the site's ``model.pt``; returns it with the temperature and threshold it had before."""
    from medtl.data.manifest import read_manifest
    from medtl.evaluate.run import select_split
    from medtl.models.checkpoint import save_model
    from medtl.models.loader import load_any_model

    if not 0 < target_sensitivity <= 1:
        raise ModelError(f"--target-sensitivity {target_sensitivity:g}: give the sensitivity to keep, above 0 and at most 1 "
                         "(e.g. 0.9)")
    source = Path(model_ref)
    source = source / "model.pt" if source.is_dir() else source
    if source.exists() and Path(out).resolve() == source.resolve():
        raise ModelError(f"--out {out}: that is the model being recalibrated; write the site's model to a new file "
                         "(e.g. site_a.pt), so the model as trained is kept")
    bundle = load_any_model(model_ref)
    before = (bundle.temperature, bundle.threshold)
    table = select_split(read_manifest(manifest, bundle.spec.data.data_root).table, split, splits)
    recalibrate(bundle, table, rule, target_sensitivity, device)
    save_model(bundle, out)
    return bundle, before
