"""The fit loop: the model says what is computed, this says how (device, precision, accumulation,
clipping, schedule, early stopping, atomic checkpoints, resume)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from medtl.config import TrainConfig
from medtl.faults import fault_point
from medtl.log import logger, make_progress, progress_enabled
from medtl.train.progress import training_curves
from medtl.models.transfer import TransferSchedule
from medtl.observe import Tracker
from medtl.probability import probabilities
from medtl.train.runtime import Runtime, rng_state, set_rng_state


@dataclass
class FitState:
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Loop:
    """Everything the loop needs; built once by ``medtl.train.run``."""

    model: nn.Module
    schedule: TransferSchedule
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    val_loader: DataLoader | None
    cfg: TrainConfig
    rt: Runtime
    task: str
    tracker: Tracker
    on_epoch: Callable[[int], None]
    """Reseeds data order and augmentation for an epoch, so a resumed run replays the same epochs."""
    save: Callable[[Path, dict[str, Any] | None], None]
    """Writes a self-describing checkpoint (with training state when given) atomically."""
    patch_size: list[int] | None = None
    adapter: nn.Module | None = None
    """Domain adaptation term (CORAL or DANN) on source and target features; None trains on source only."""
    next_target: Callable[[], torch.Tensor] | None = None


def make_optimizer(schedule: TransferSchedule, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (fused into one kernel per step on a GPU) or Nesterov SGD over the strategy's parameter groups."""
    groups = schedule.param_groups()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last and x.ndim in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    return x


def _target(batch: dict[str, Any], task: str, rt: Runtime) -> torch.Tensor:
    if task == "classification":
        return batch["label"].long().to(rt.device, non_blocking=True)
    return batch["mask"].to(rt.device, non_blocking=True).round()


def train_one_epoch(loop: Loop, epoch: int) -> dict[str, float]:
    cfg, rt = loop.cfg, loop.rt
    loop.schedule.train_mode()
    total = len(loop.train_loader) if cfg.max_steps_per_epoch is None else min(len(loop.train_loader), cfg.max_steps_per_epoch)
    loss_sum, steps, seen, start = torch.zeros((), device=rt.device), 0, 0, time.perf_counter()
    extra: dict[str, list[float]] = {}
    show = progress_enabled()
    with make_progress() as progress:
        task_id = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=total, info="")
        loop.optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(loop.train_loader):
            if step >= total:
                break
            x, y = _to_device(batch["image"], rt), _target(batch, loop.task, rt)
            with rt.autocast():
                if loop.adapter is None:
                    loss = loop.loss_fn(loop.model(x).float(), y)
                else:
                    loss, info = _adapted_loss(loop, x, y, (epoch + step / total) / cfg.epochs)
                    for k, v in info.items():
                        extra.setdefault(k, []).append(v)
            (loss / cfg.grad_accum).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == total:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
                loop.optimizer.step()
                loop.optimizer.zero_grad(set_to_none=True)
                loop.lr_scheduler.step()
            loss_sum += loss.detach().float()  # summed on the device: no host sync inside the step
            steps += 1
            seen += x.shape[0]
            if show and (steps % 10 == 0 or steps == total):
                rate = seen / max(1e-9, time.perf_counter() - start)
                progress.update(task_id, completed=steps, info=f"loss {float(loss_sum) / steps:.4f}  {rate:.1f} img/s")
    return {"train_loss": float(loss_sum) / steps if steps else float("nan"),
            "images_per_s": seen / max(1e-9, time.perf_counter() - start),
            "lr": float(loop.optimizer.param_groups[-1 if loop.adapter is None else -2]["lr"]),
            **{k: float(np.mean(v)) for k, v in extra.items()}}


def _adapted_loss(loop: Loop, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Task loss on source features plus the adaptation term on source and target features."""
    from medtl.models.checkpoint import unwrap

    core = unwrap(loop.model)
    xt = _to_device(loop.next_target(), loop.rt)  # type: ignore[misc]
    fs, ft = core.features(x), core.features(xt)
    task = loop.loss_fn(core.head(fs).float(), y)
    extra, info = loop.adapter(fs, ft, progress)  # type: ignore[misc]
    return task + extra, {"task_loss": float(task.detach()), **info}


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, rt: Runtime, task: str,
                   roi_size: list[int] | None = None) -> dict[str, Any]:
    """Logits (classification) or argmax masks with targets (segmentation), plus case ids."""
    model.eval()
    logits, labels, cases, dice = [], [], [], DiceMetric(include_background=False, reduction="mean")
    for batch in loader:
        x = _to_device(batch["image"], rt)
        cases += list(batch["case_id"])
        with rt.autocast():
            if task == "classification":
                logits.append(model(x).float().cpu())
                labels.append(batch["label"].long())
                continue
            out = sliding_window_inference(x, roi_size or list(x.shape[2:]), 4, model, overlap=0.25)
        n = out.shape[1]
        pred = nn.functional.one_hot(out.float().argmax(1), n).movedim(-1, 1)
        gt = nn.functional.one_hot(batch["mask"].to(rt.device).round().long()[:, 0], n).movedim(-1, 1)
        dice(pred, gt)
    if task == "classification":
        return {"logits": torch.cat(logits), "labels": torch.cat(labels), "case_ids": cases}
    return {"dice": float(dice.aggregate().item()), "case_ids": cases}


def validate(loop: Loop) -> dict[str, float]:
    if loop.val_loader is None:
        return {}
    out = predict_loader(loop.model, loop.val_loader, loop.rt, loop.task, loop.patch_size)
    if loop.task != "classification":
        return {"val_dice": out["dice"]}
    logits, labels = out["logits"], out["labels"]
    val_loss = float(nn.functional.cross_entropy(logits, labels))
    probs = probabilities(logits.numpy())
    y = labels.numpy()
    auroc = float("nan")
    if len(np.unique(y)) > 1:
        auroc = float(roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2 else
                      roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))
    return {"val_loss": val_loss, "val_auroc": auroc}


def monitored(metrics: dict[str, float]) -> float:
    """AUROC (classification) or Dice (segmentation); minus the validation loss when AUROC is undefined."""
    for key in ("val_auroc", "val_dice"):
        if key in metrics and not math.isnan(metrics[key]):
            return metrics[key]
    return -metrics.get("val_loss", metrics.get("train_loss", 0.0))


def train_state(loop: Loop, state: FitState) -> dict[str, Any]:
    return {
        "optimizer": loop.optimizer.state_dict(), "lr_scheduler": loop.lr_scheduler.state_dict(),
        "epoch": state.epoch, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "history": state.history, "frozen_upto": loop.schedule.frozen_upto,
        "stopped_early": state.stopped_early,
        "rng": rng_state(),
    }


def restore(loop: Loop, saved: dict[str, Any]) -> FitState:
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    loop.schedule.frozen_upto = saved["frozen_upto"]
    loop.schedule.apply()
    set_rng_state(saved["rng"])
    return FitState(saved["epoch"], saved["best_metric"], saved["best_epoch"], saved["bad_epochs"],
                    list(saved["history"]), saved.get("stopped_early", False))


def fit(loop: Loop, ckpt_dir: Path, state: FitState | None = None) -> FitState:
    """Trains from ``state.epoch`` to the end or early stop; ``last.pt`` after every epoch, ``best.pt`` on improvement."""
    state = state or FitState()
    rt, cfg = loop.rt, loop.cfg
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch
        loop.on_epoch(epoch)
        if loop.schedule.on_epoch_start(epoch):
            logger.info("epoch %d: unfroze stage %s", epoch + 1, loop.schedule.groups[loop.schedule.frozen_upto].name)
        started = time.perf_counter()
        try:
            metrics = {**train_one_epoch(loop, epoch), **validate(loop)}
            metrics["epoch_s"] = time.perf_counter() - started
        except KeyboardInterrupt:
            if rt.is_main:
                loop.save(ckpt_dir / "interrupted.pt", None)
            raise
        score = monitored(metrics)
        improved = score > state.best_metric
        state.history.append({"epoch": epoch + 1, **metrics})
        state.epoch = epoch + 1
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        else:
            state.bad_epochs += 1
        if cfg.early_stopping_patience and state.bad_epochs >= cfg.early_stopping_patience:
            state.stopped_early = True
        if rt.is_main:
            loop.tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=epoch + 1)
            if improved:
                loop.save(ckpt_dir / "best.pt", None)
            loop.save(ckpt_dir / "last.pt", train_state(loop, state))
            logger.info("epoch %d: %s%s", epoch + 1, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                        "  (best)" if improved else "")
            if progress_enabled():  # refreshed while a person watches; train_step writes the final one
                loop.tracker.log_artifact(training_curves(state.history, ckpt_dir.parent / "progress.png", svg=False))
        fault_point("after_epoch", epoch + 1)  # every rank: a test can kill rank 1 alone
    return state
