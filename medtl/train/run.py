"""``medtl train``: config → checked data → pretrained model + transfer strategy → fit → threshold → model.pt."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch import nn

from medtl.config import Config, dump_config
from medtl.data.manifest import rows_of_split
from medtl.errors import MedtlError
from medtl.log import logger
from medtl.models.checkpoint import ModelBundle, read_checkpoint, save_model, unwrap
from medtl.models.registry import build_model
from medtl.models.transfer import TransferSchedule
from medtl.observe import NullTracker, Tracker
from medtl.probability import probabilities
from medtl.train import features
from medtl.train.data import PreparedData, device_loader, make_loader, prepare_cases, preflight, train_label_counts
from medtl.train.loop import FitState, Loop, fit, make_optimizer, predict_loader, restore, warmup_cosine
from medtl.train.losses import build_loss
from medtl.train.runtime import Runtime, make_runtime, seed_everything
from medtl.train.threshold import choose_threshold


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    bundle: ModelBundle
    prepared: PreparedData
    history: list[dict[str, float]]
    class_weights: list[float] | None
    threshold: float
    val: dict[str, Any] | None
    weights_sha256: str | None
    summary: list[dict] = field(default_factory=list)


def run_dir(cfg: Config) -> Path:
    return Path(cfg.train.out_dir) / cfg.name


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """Flat keys whose values differ between two resolved configs: {key: [before, after]}."""
    from medtl.config import flatten

    a, b = flatten(before), flatten(after)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(cfg: Config, last: Path, manifest_digest: str, allow_changes: bool) -> None:
    """Resume means the same run: the config and the manifest must be those the checkpoint was trained with.

    With ``allow_changes`` a change is accepted and recorded in ``config_changes.json``, and the earlier
    config is kept beside the new one, so the run folder still says what each epoch used."""
    saved = read_checkpoint(last)
    changes = config_changes(saved["config"], cfg.to_dict())
    old_digest = saved.get("extra", {}).get("manifest_sha256")
    if old_digest and old_digest != manifest_digest:
        changes["manifest (sha256)"] = [old_digest[:12], manifest_digest[:12]]
    if not changes:
        return
    listed = "; ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in changes.items())
    if not allow_changes:
        raise MedtlError(f"--resume: this run was trained with another config or manifest ({listed}); rerun with the "
                         "same ones, or use --resume-changed to continue anyway (the change is recorded)")
    out_dir = last.parent.parent
    epoch = int(saved.get("train_state", {}).get("epoch", 0))
    record = out_dir / "config_changes.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"after_epoch": epoch, "changes": changes})
    record.write_text(json.dumps(history, indent=1, default=str))
    if (out_dir / "config.yaml").is_file():
        (out_dir / "config.yaml").replace(out_dir / f"config.until_epoch{epoch}.yaml")
    logger.warning("resuming with changes after epoch %d: %s (recorded in %s)", epoch, listed, record.name)


def train(cfg: Config, resume: bool | str = False, tracker: Tracker | None = None) -> TrainResult:
    """Trains as configured; with ``resume`` continues from ``last.pt`` of the same run folder
    (``resume="changed"`` accepts a changed config or manifest and records the change)."""
    tracker = tracker or NullTracker()
    manifest = preflight(cfg)
    rt = make_runtime(cfg.train, cfg.data.spatial_dims)
    if not rt.is_main:
        tracker = NullTracker()
    out_dir = run_dir(cfg)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if resume and not last.is_file():
        raise MedtlError(f"--resume: no checkpoint at {last}; start without --resume")
    if not resume and last.is_file():
        raise MedtlError(f"{out_dir} already holds a run; add --resume to continue it or set name=... for a new one")
    if resume:
        check_resume(cfg, last, manifest.digest(), allow_changes=resume == "changed")
    set_determinism(cfg.train.seed)
    seed_everything(cfg.train.seed)
    prepared = prepare_cases(cfg, manifest, out_dir)
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
    seg = cfg.data.task == "segmentation"
    n_out = len(prepared.classes)
    built = build_model(cfg.model, cfg.data.task, cfg.data.spatial_dims, n_out, cfg.data.image_size)
    model = built.model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last if cfg.data.spatial_dims == 2 else torch.channels_last_3d)
    schedule = TransferSchedule(model, built.spec, cfg.transfer, cfg.train.lr)
    counts = None if seg else train_label_counts(prepared.table, prepared.classes)
    loss_fn, weights = build_loss(cfg.train, cfg.data.task, counts, prepared.classes)
    loss_fn = loss_fn.to(rt.device)
    _report_start(cfg, schedule, prepared, weights, counts, tracker, built.weights_sha256)
    bundle = ModelBundle(model, cfg, prepared.classes, extra={"weights_sha256": built.weights_sha256, "backbone": built.spec.name,
                                                               "manifest_sha256": manifest.digest()})
    if cfg.transfer.strategy == "feature_extraction" and not seg:
        history = features.fit_head(cfg, model, prepared, rt, weights, tracker)
        state = FitState(epoch=cfg.train.epochs, history=history)
        if rt.is_main:
            save_model(bundle, ckpt_dir / "best.pt")
    else:
        state = _fit(cfg, model, schedule, loss_fn, prepared, rt, tracker, bundle, ckpt_dir, resume)
        best = read_checkpoint(ckpt_dir / "best.pt")
        unwrap(model).load_state_dict(best["state_dict"])
    return _finish(cfg, model, bundle, prepared, rt, state, weights, built.weights_sha256, out_dir, tracker, schedule)


def _fit(cfg: Config, model: nn.Module, schedule: TransferSchedule, loss_fn: nn.Module, prepared: PreparedData,
         rt: Runtime, tracker: Tracker, bundle: ModelBundle, ckpt_dir: Path, resume: bool) -> FitState:
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_loader = device_loader(cfg, prepared, rt, generator) or make_loader(cfg, prepared, "train", True, rt, generator)
    if train_loader is None:
        raise MedtlError("no case in the train split; check the manifest's split column")
    val_loader = make_loader(cfg, prepared, "val", False, rt)
    wrapped: nn.Module = model
    if rt.distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    adapter, next_target = _adaptation(cfg, prepared, rt, model)
    optimizer = make_optimizer(schedule, cfg.train, fused=rt.device.type == "cuda")
    if adapter is not None:
        optimizer.add_param_group({"params": list(adapter.parameters()), "lr": cfg.train.lr, "initial_lr": cfg.train.lr,
                                   "name": "domain"})
    steps = len(train_loader) if cfg.train.max_steps_per_epoch is None else min(len(train_loader), cfg.train.max_steps_per_epoch)
    per_epoch = math.ceil(steps / cfg.train.grad_accum)
    lr_sched = warmup_cosine(optimizer, per_epoch * cfg.train.epochs, int(per_epoch * cfg.train.warmup_epochs))
    dataset = getattr(getattr(train_loader, "dataset", None), "inner", train_loader)

    def on_epoch(epoch: int) -> None:
        generator.manual_seed(cfg.train.seed * 1000 + epoch)
        if hasattr(dataset, "transform") and hasattr(dataset.transform, "set_random_state"):
            dataset.transform.set_random_state(seed=cfg.train.seed * 1000 + epoch)
        if hasattr(dataset, "reseed"):
            dataset.reseed(cfg.train.seed * 1000 + epoch)

    def save(path: Path, train_state: dict[str, Any] | None) -> None:
        save_model(bundle, path, train_state)

    loop = Loop(wrapped, schedule, loss_fn, optimizer, lr_sched, train_loader, val_loader, cfg.train, rt,
                cfg.data.task, tracker, on_epoch, save, cfg.train.patch_size, adapter, next_target)
    state = None
    if resume:
        saved = read_checkpoint(ckpt_dir / "last.pt")
        unwrap(model).load_state_dict(saved["state_dict"])
        state = restore(loop, saved["train_state"])
        logger.info("resuming after epoch %d of %d", state.epoch, cfg.train.epochs)
    return fit(loop, ckpt_dir, state)


def target_loader(cfg: Config, rt: Runtime, train: bool = True):
    """Images of the target domain (labels, if any, are ignored here: they serve evaluation only)."""
    from medtl.data.datasets import GuardedDataset, case_items, make_dataset
    from medtl.data.manifest import read_manifest
    from medtl.data.transforms import build_transforms

    if cfg.adaptation.target_manifest is None:
        raise MedtlError(f"adaptation.method {cfg.adaptation.method} needs adaptation.target_manifest")
    target = read_manifest(cfg.adaptation.target_manifest, cfg.data.data_root)
    table = target.table
    if "split" in table and (table["split"] == "train").any():
        table = rows_of_split(table, "train")
    items = case_items(table, None)
    ds = GuardedDataset(make_dataset(items, build_transforms(cfg.data, train, cfg.model.in_channels), cfg.data, "target"))
    gen = torch.Generator().manual_seed(cfg.train.seed + 7)
    return torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, generator=gen, drop_last=len(ds) > cfg.train.batch_size)


def _adaptation(cfg: Config, prepared: PreparedData, rt: Runtime, model: nn.Module):
    if cfg.adaptation.method not in ("coral", "dann"):
        return None, None
    from medtl.models.adaptation import Adapter

    loader = target_loader(cfg, rt)
    state = {"it": iter(loader)}

    def next_target() -> torch.Tensor:
        try:
            return next(state["it"])["image"]
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])["image"]

    feature_dim = unwrap(model).head[1].in_features
    return Adapter(cfg.adaptation.method, feature_dim, cfg.adaptation.weight).to(rt.device), next_target


def _report_start(cfg: Config, schedule: TransferSchedule, prepared: PreparedData, weights: np.ndarray | None,
                  counts: np.ndarray | None, tracker: Tracker, sha: str | None) -> None:
    rows = schedule.summary()
    lines = [f"  {r['stage']:<16} {r['trainable']:>10,d} / {r['params']:>10,d} trainable  lr {r['lr']:.2e}" for r in rows]
    logger.info("transfer strategy %s, per stage:\n%s", cfg.transfer.strategy, "\n".join(lines))
    if counts is not None:
        logger.info("train class counts: %s", dict(zip(prepared.classes, counts.tolist())))
    if weights is not None:
        logger.info("class weights: %s", {c: round(float(w), 4) for c, w in zip(prepared.classes, weights)})
    tracker.log_table(rows, "transfer_stages.json")


def _finish(cfg: Config, model: nn.Module, bundle: ModelBundle, prepared: PreparedData, rt: Runtime, state: FitState,
            weights: np.ndarray | None, sha: str | None, out_dir: Path, tracker: Tracker,
            schedule: TransferSchedule) -> TrainResult:
    """Threshold on validation (binary classification), then the self-describing model.pt."""
    threshold, val = 0.5, None
    val_loader = make_loader(cfg, prepared, "val", False, rt)
    if val_loader is not None and cfg.data.task == "classification":
        val = predict_loader(unwrap(model), val_loader, rt, cfg.data.task)
        if len(prepared.classes) == 2:
            probs = probabilities(val["logits"].numpy())[:, 1]
            threshold = choose_threshold(val["labels"].numpy(), probs, cfg.train.threshold_rule, cfg.train.target_sensitivity)
    bundle.threshold = threshold
    model_path = out_dir / "model.pt"
    if rt.is_main:
        save_model(bundle, model_path)
        summary = {"classes": prepared.classes, "class_weights": None if weights is None else [float(w) for w in weights],
                   "threshold": threshold, "threshold_rule": cfg.train.threshold_rule, "best_epoch": state.best_epoch,
                   "epochs_completed": state.epoch, "stopped_early": state.stopped_early, "skipped_cases": prepared.skipped,
                   "weights_sha256": sha, "history": state.history}
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
        logger.debug("threshold on uncalibrated validation probabilities (%s): %.4f", cfg.train.threshold_rule, threshold)
    return TrainResult(out_dir, model_path, bundle, prepared, state.history,
                       None if weights is None else [float(w) for w in weights], threshold, val, sha, schedule.summary())
