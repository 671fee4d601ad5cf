"""Training: config → checked data → pretrained model + transfer strategy → fit → the best weights, with
their validation predictions. Calibration and the decision threshold are chosen after this, in
``medtl.evaluate``, and ``model.pt`` is written once they are (``medtl.steps``)."""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from torch import nn

from medtl.config import Config, dump_config
from medtl.data.manifest import Manifest, read_manifest, rows_of_split
from medtl.errors import ConfigError, ManifestError, MedtlError, RunExists
from medtl.files import one_writer
from medtl.log import logger
from medtl.models.checkpoint import InferenceSpec, ModelBundle, read_checkpoint, save_model, unwrap
from medtl.models.predictor import Predictor
from medtl.models.registry import build_model
from medtl.models.transfer import TransferSchedule
from medtl.observe import NullTracker, Tracker
from medtl.train import features
from medtl.train.data import PreparedData, device_loader, make_loader, prepare_cases, preflight, train_label_counts
from medtl.train.averaging import WeightAverage
from medtl.train.loop import FitState, Loop, fit, make_optimizer, restore, to_device, warmup_cosine
from medtl.train.losses import build_loss
from medtl.train.runtime import Runtime, make_runtime, peer_lost, seed_everything
from medtl.tasks import DomainAdapted, Mixup, Objective, Task, make_task


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    bundle: ModelBundle
    prepared: PreparedData
    history: list[dict[str, float]]
    class_weights: list[float] | None
    val: dict[str, Any] | None
    """The best model's uncalibrated validation logits, labels and case ids (classification)."""
    weights_sha256: str | None
    summary: list[dict] = field(default_factory=list)
    target: Manifest | None = None
    """The adaptation target's manifest (read once: training, AdaBN and the target evaluation share it)."""


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
    (``resume="changed"`` accepts a changed config or manifest and records the change). Writes checkpoints,
    not ``model.pt``: that comes after calibration (``medtl.steps.fit_model`` for training alone)."""
    rank0 = int(os.environ.get("RANK", "0")) == 0  # the other ranks of a distributed run share rank 0's folder
    with one_writer(run_dir(cfg), "add --set name=NEW for a separate run") if rank0 else nullcontext():
        run = _set_up(cfg, resume, tracker or NullTracker())
        try:
            if cfg.transfer.strategy == "feature_extraction" and run.task.calibrated:
                state = _feature_extraction(run)
            else:
                state = _fit(run, bool(resume))
                unwrap(run.model).load_state_dict(read_checkpoint(run.ckpt_dir / "best.pt")["state_dict"])
        except RuntimeError as err:
            if (lost := peer_lost(err)) is None:
                raise
            raise lost from err
        return _finish(run, state)


@dataclass
class Setup:
    """What one training run is made of, built once by ``_set_up``; the fitting steps read it."""

    cfg: Config
    rt: Runtime
    tracker: Tracker
    out_dir: Path
    prepared: PreparedData
    model: nn.Module
    schedule: TransferSchedule
    task: Task
    weights: np.ndarray | None
    bundle: ModelBundle
    validation: "Validation"
    target: Manifest | None

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def _set_up(cfg: Config, resume: bool | str, tracker: Tracker) -> Setup:
    """Checks before anything is read, then the split cases, the pretrained model, its transfer schedule,
    the task with its loss, and the validation cases."""
    manifest = preflight(cfg.data, cfg.train)
    target = _target_manifest(cfg, manifest)
    rt = make_runtime(cfg.train, cfg.data.spatial_dims)
    tracker = tracker if rt.is_main else NullTracker()
    out_dir = run_dir(cfg)
    last = out_dir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise MedtlError(f"--resume: no checkpoint at {last}; start without --resume")
    if not resume and last.is_file():
        raise RunExists(f"{out_dir} already holds a run; add --resume to continue it or --set name=NEW for a new one",
                        out_dir)
    kept = next((p for p in (out_dir / "model.pt", out_dir / "checkpoints" / "best.pt") if p.is_file()), None)
    if not resume and kept:  # a feature extraction keeps no last.pt: its model would be replaced unasked
        raise MedtlError(f"{out_dir} already holds a run ({kept.name}) that --resume cannot continue; add --set name=NEW for a "
                         "new one, or move that folder away to train it again")
    if resume:
        check_resume(cfg, last, manifest.digest(), allow_changes=resume == "changed")
    set_determinism(cfg.train.seed)
    seed_everything(cfg.train.seed)
    prepared = prepare_cases(cfg.data, cfg.train.seed, manifest, out_dir)
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
    built = build_model(cfg.model, cfg.data.task, cfg.data.spatial_dims, len(prepared.classes), cfg.data.image_size)
    model = built.model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last if cfg.data.spatial_dims == 2 else torch.channels_last_3d)
    schedule = TransferSchedule(model, built.spec, cfg.transfer, cfg.train.lr)
    counts = train_label_counts(prepared.table, prepared.classes) if cfg.data.task == "classification" else None
    loss_fn, weights = build_loss(cfg.train, cfg.data.task, counts, prepared.classes)
    _report_start(cfg, schedule, prepared, weights, counts, tracker)
    spec = InferenceSpec.from_config(cfg)
    spec = replace(spec, data=spec.data.model_copy(update={"views": prepared.views}))  # the films' views when unset
    bundle = ModelBundle(model, cfg, prepared.classes, extra={"weights_sha256": built.weights_sha256, "backbone": built.spec.name,
                                                               "manifest_sha256": manifest.digest()}, spec=spec)
    task = make_task(cfg.data.task, loss_fn.to(rt.device), cfg.data.skip_bad_cases)
    return Setup(cfg, rt, tracker, out_dir, prepared, model, schedule, task, weights, bundle,
                 Validation(bundle.spec, prepared, task, model, rt, cfg.train.batch_size), target)


def _target_manifest(cfg: Config, source: Manifest) -> Manifest | None:
    """The new site's cases for domain adaptation, read with the training manifest: before any scan or weight."""
    if cfg.adaptation.target_manifest is None:
        return None
    try:
        target = read_manifest(cfg.adaptation.target_manifest, cfg.data.data_root)
    except ManifestError as err:
        raise ConfigError(f"adaptation.target_manifest: {err}") from None
    if target.path.resolve() == source.path.resolve():
        logger.warning("adaptation.target_manifest is the training manifest: adapting to the training cases themselves "
                       "changes little; give a manifest of the new site's scans")
    return target


def _fit_head(run: Setup, head: str) -> None:
    """The head fitted on the frozen backbone's features of the training cases (no augmentation)."""
    cfg = run.cfg
    loader = make_loader(cfg.data, cfg.train, cfg.model.in_channels, run.prepared, "train", False, run.rt)
    features.fit_head(run.model, loader, head, cfg.train, run.weights, run.rt)


def _feature_extraction(run: Setup) -> FitState:
    """Feature extraction: the head fitted once, validated like any epoch."""
    _fit_head(run, run.cfg.transfer.head)
    state = FitState(epoch=run.cfg.train.epochs, history=[{"epoch": 1, **run.validation()}])
    run.tracker.log_metrics({k: v for k, v in state.history[0].items() if k != "epoch" and not math.isnan(v)}, step=1)
    if run.rt.is_main:
        save_model(run.bundle, run.ckpt_dir / "best.pt")
    return state


class Validation:
    """The validation split through the one ``Predictor`` (each case preprocessed once, kept between
    epochs): the metrics the task defines, on the model as it stands."""

    def __init__(self, spec: InferenceSpec, prepared: PreparedData, task: Task, model: nn.Module, rt: Runtime,
                 batch_size: int = 16) -> None:
        part = rows_of_split(prepared.table, "val")
        self.task = task
        self.items = task.items(part, prepared.classes) if not part.empty else []
        self.predictor = Predictor(unwrap(model), spec, rt.device, batch_size=batch_size, cache=True)
        self.records: list[dict[str, Any]] = []

    def __call__(self) -> dict[str, float]:
        if not self.items:
            return {}
        self.records = list(self.predictor.predict(self.items))
        return self.task.validation_metrics(self.records, self.items)

    def predictions(self) -> dict[str, Any] | None:
        """Logits, labels and case ids of the last pass (classification), for calibration."""
        pairs = self.task.readable(self.records, self.items) if self.records and "label" in self.items[0] else []
        if not pairs:
            return None
        return {"logits": np.stack([r["logits"] for r, _ in pairs]), "labels": np.array([it["label"] for _, it in pairs]),
                "case_ids": [r["case_id"] for r, _ in pairs]}


def _fit(run: Setup, resume: bool) -> FitState:
    cfg, rt, model = run.cfg, run.rt, run.model
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_loader = (device_loader(cfg.data, cfg.train, cfg.model.in_channels, run.prepared, rt, generator)
                    or make_loader(cfg.data, cfg.train, cfg.model.in_channels, run.prepared, "train", True, rt, generator))
    if train_loader is None:
        raise MedtlError("no case in the train split; check the manifest's split column")
    if cfg.transfer.probes_first and not resume:
        _fit_head(run, "logistic")  # before DDP, which hands every rank the first rank's weights
        logger.info("head initialised by a logistic probe on the frozen features (LP-FT)")
    wrapped: nn.Module = model
    if rt.distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    adapter, objective = _objective(cfg, rt, model, run.task, run.target)
    optimizer = make_optimizer(run.schedule, cfg.train, fused=rt.device.type == "cuda")
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
        save_model(run.bundle, path, train_state)

    average = WeightAverage(model, cfg.train.ema_epochs * per_epoch) if cfg.train.ema_epochs else None
    loop = Loop(model=wrapped, schedule=run.schedule, task=run.task, objective=objective, optimizer=optimizer,
                lr_scheduler=lr_sched, train_loader=train_loader, validate=run.validation, cfg=cfg.train, rt=rt,
                tracker=run.tracker, on_epoch=on_epoch, save=save, average=average)
    state = None
    if resume:
        saved = read_checkpoint(run.ckpt_dir / "last.pt")
        unwrap(model).load_state_dict(saved["state_dict"])
        state = restore(loop, saved["train_state"])
        logger.info("resuming after epoch %d of %d", state.epoch, cfg.train.epochs)
    return fit(loop, run.ckpt_dir, state)


def target_loader(cfg: Config, table: pd.DataFrame, train: bool = True):
    """Images of the target domain (labels, if any, are ignored here: they serve evaluation only)."""
    from medtl.data.datasets import GuardedDataset, case_items, make_dataset
    from medtl.data.transforms import build_transforms

    if "split" in table and (table["split"] == "train").any():
        table = rows_of_split(table, "train")
    items = case_items(table, None)
    ds = GuardedDataset(make_dataset(items, build_transforms(cfg.data, train, cfg.model.in_channels), cfg.data, "target"))
    gen = torch.Generator().manual_seed(cfg.train.seed + 7)
    # training draws full shuffled batches; AdaBN (train=False) sees every image once
    return torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=train, generator=gen,
                                       drop_last=train and len(ds) > cfg.train.batch_size)


def _objective(cfg: Config, rt: Runtime, model: nn.Module, task: Task,
               target: Manifest | None) -> tuple[nn.Module | None, Objective]:
    """What training minimises: the task's own loss (on mixed cases with ``train.mixup_alpha``), or the task's loss
    plus CORAL or DANN on source and target features, with the adaptation module whose parameters join the
    optimizer (None without one)."""
    if cfg.adaptation.method not in ("coral", "dann"):
        return None, Mixup(task.loss_fn, cfg.train.mixup_alpha) if cfg.train.mixup_alpha else task.objective
    from medtl.models.adaptation import Adapter

    if target is None:
        raise MedtlError(f"adaptation.method {cfg.adaptation.method} needs adaptation.target_manifest")
    loader = target_loader(cfg, target.table)
    state = {"it": iter(loader)}

    def next_target() -> torch.Tensor:
        try:
            return next(state["it"])["image"]
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])["image"]

    feature_dim = unwrap(model).head[1].in_features
    adapter = Adapter(cfg.adaptation.method, feature_dim, cfg.adaptation.weight).to(rt.device)
    return adapter, DomainAdapted(task.loss_fn, adapter, next_target, lambda x: to_device(x, rt))  # type: ignore[arg-type]


def _report_start(cfg: Config, schedule: TransferSchedule, prepared: PreparedData, weights: np.ndarray | None,
                  counts: np.ndarray | None, tracker: Tracker) -> None:
    rows = schedule.summary()
    lines = [f"  {r['stage']:<16} {r['trainable']:>10,d} / {r['params']:>10,d} trainable  lr {r['lr']:.2e}" for r in rows]
    logger.info("transfer strategy %s, per stage:\n%s", cfg.transfer.strategy, "\n".join(lines))
    if counts is not None:
        logger.info("train class counts: %s", dict(zip(prepared.classes, counts.tolist())))
    if weights is not None:
        logger.info("class weights: %s", {c: round(float(w), 4) for c, w in zip(prepared.classes, weights)})
    tracker.log_table(rows, "transfer_stages.json")


def _finish(run: Setup, state: FitState) -> TrainResult:
    """The best weights' validation predictions (for calibration) and the training summary."""
    val = None
    if run.task.calibrated:
        run.validation()  # the best weights, once more: calibration fits on these predictions
        val = run.validation.predictions()
    class_weights = None if run.weights is None else [float(w) for w in run.weights]
    sha = run.bundle.extra.get("weights_sha256")
    if run.rt.is_main:
        summary = {"classes": run.prepared.classes, "class_weights": class_weights, "best_epoch": state.best_epoch,
                   "epochs_completed": state.epoch, "stopped_early": state.stopped_early,
                   "skipped_cases": run.prepared.skipped, "weights_sha256": sha, "history": state.history}
        (run.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return TrainResult(run.out_dir, run.out_dir / "model.pt", run.bundle, run.prepared, state.history, class_weights,
                       val, sha, run.schedule.summary(), run.target)
