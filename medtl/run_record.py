"""What a run records about itself besides its results: the config keys it applied (MLflow params) and what
produced it (tags: medtl's version and commit, task, backbone, strategy)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from medtl import __version__
from medtl.config import Config, flatten


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except OSError:
        return None


def applied_params(cfg: Config) -> dict[str, Any]:
    """The config keys this run used, flattened: sections and settings that change nothing here are left out
    (the whole resolved config stays an artifact). A 2D X-ray run gets no CT window, a run without domain
    adaptation no ``adaptation.*``, cross-entropy no focal settings, a training run no ``score.*``."""
    flat = flatten(cfg.to_dict())
    d, t = cfg.data, cfg.train
    drop = {"score.", "study.", "tracking."}
    if cfg.adaptation.method == "none":
        drop.add("adaptation.")
    skip = set()
    if d.modality != "ct":
        skip.add("data.ct_window")
    if d.spatial_dims == 2:
        skip |= {"data.orientation", "data.spacing"}
    if d.cache != "disk":
        skip.add("data.cache_dir")
    if t.loss not in ("focal", "dice_focal"):
        skip |= {"train.focal_gamma", "train.focal_alpha"}
    if t.class_weights != "effective_number":
        skip.add("train.effective_number_beta")
    if d.task == "classification":
        skip |= {"train.include_background", "train.pos_neg_ratio", "train.patch_size"}
    else:
        skip |= {"train.sampler", "train.threshold_rule", "train.target_sensitivity", "train.class_weights"}
    if t.threshold_rule != "sensitivity":
        skip.add("train.target_sensitivity")
    if cfg.transfer.strategy in ("scratch", "feature_extraction"):
        skip |= {k for k in flat if k.startswith("transfer.") and k not in ("transfer.strategy", "transfer.head")}
    if cfg.transfer.strategy != "feature_extraction":
        skip.add("transfer.head")
    else:
        skip |= {"train.mixup_alpha", "train.ema_epochs"}  # the head is fitted on fixed features: nothing is mixed
    return {k: v for k, v in flat.items() if k not in skip and not any(k.startswith(p) for p in drop) and v is not None}


def run_tags(cfg: Config, extra: dict[str, Any]) -> dict[str, str]:
    tags = {"medtl.version": __version__, "medtl.git_commit": git_commit(), "task": cfg.data.task,
            "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "transfer.strategy": cfg.transfer.strategy}
    tags.update({k: v for k, v in extra.items() if v is not None})
    return {k: str(v) for k, v in tags.items() if v is not None}
