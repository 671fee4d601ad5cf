"""The fit loop: the task and its objective say what is computed, this says how (device, precision,
accumulation, clipping, schedule, early stopping, atomic checkpoints, resume)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.config import TrainConfig
from medtl.errors import ConfigError, DivergedError, Interrupted
from medtl.faults import fault_point
from medtl.log import logger, make_progress, progress_enabled
from medtl.train.progress import training_curves
from medtl.models.transfer import TransferSchedule
from medtl.observe import Tracker
from medtl.tasks import Objective, Task
from medtl.train.averaging import WeightAverage
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
    """Everything the loop needs; built once by ``medtl.train.run``. The task gives targets and its metric
    name, the objective the loss (the task's own, or with an adaptation term), ``validate`` the metrics."""

    model: nn.Module
    schedule: TransferSchedule
    task: Task
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any
    validate: Callable[[], dict[str, float]]
    """Validation metrics of the model as it stands ({} without a validation split)."""
    cfg: TrainConfig
    rt: Runtime
    tracker: Tracker
    on_epoch: Callable[[int], None]
    """Reseeds data order and augmentation for an epoch, so a resumed run replays the same epochs."""
    save: Callable[[Path, dict[str, Any] | None], None]
    """Writes a self-describing checkpoint (with training state when given) atomically."""
    average: WeightAverage | None = None
    """The moving average of the weights that is validated and kept as ``best.pt`` (``train.ema_epochs``)."""

    def averaged(self) -> AbstractContextManager[None]:
        """The weights to validate and keep: the moving average where there is one, else the model's own."""
        return self.average.applied() if self.average else nullcontext()


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


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last and x.ndim in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    return x


@contextmanager
def one_value_per_channel(batch_size: int, x: torch.Tensor) -> Iterator[None]:
    """A batch of one case whose features shrink to one pixel meets a BatchNorm with nothing to normalise over; torch
    says so in its own words, which name no setting."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise ConfigError(f"train.batch_size {batch_size}: a training batch of one case at input size "
                          f"{list(x.shape[2:])} leaves a BatchNorm layer one value per channel; use train.batch_size 2 "
                          "or more, or a larger data.image_size") from None


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
            x, y = to_device(batch["image"], rt), loop.task.target(batch, rt.device)
            with rt.autocast(), one_value_per_channel(cfg.batch_size, x):
                loss, info = loop.objective(loop.model, x, y, (epoch + step / total) / cfg.epochs)
            for k, v in info.items():
                extra.setdefault(k, []).append(v)
            (loss / cfg.grad_accum).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == total:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
                loop.optimizer.step()
                loop.optimizer.zero_grad(set_to_none=True)
                loop.lr_scheduler.step()
                if loop.average:
                    loop.average.update()
            loss_sum += loss.detach().float()  # summed on the device: no host sync inside the step
            steps += 1
            seen += x.shape[0]
            if show and (steps % 10 == 0 or steps == total):
                rate = seen / max(1e-9, time.perf_counter() - start)
                progress.update(task_id, completed=steps, info=f"loss {float(loss_sum) / steps:.4f}  {rate:.1f} img/s")
    return {"train_loss": float(loss_sum) / steps if steps else float("nan"),
            "images_per_s": seen / max(1e-9, time.perf_counter() - start),
            "lr": float(next(g["lr"] for g in reversed(loop.optimizer.param_groups) if g.get("name") != "domain")),
            **{k: float(np.mean(v)) for k, v in extra.items()}}


def monitored(metrics: dict[str, float], key: str) -> float:
    """The task's validation metric (AUROC, Dice); minus the validation (or training) loss when it is undefined."""
    if key in metrics and not math.isnan(metrics[key]):
        return metrics[key]
    return -metrics.get("val_loss", metrics.get("train_loss", 0.0))


def train_state(loop: Loop, state: FitState) -> dict[str, Any]:
    return {
        "optimizer": loop.optimizer.state_dict(), "lr_scheduler": loop.lr_scheduler.state_dict(),
        "epoch": state.epoch, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "history": state.history, "frozen_upto": loop.schedule.frozen_upto,
        "stopped_early": state.stopped_early,
        "rng": rng_state(), "average": loop.average.state_dict() if loop.average else None,
    }


def restore(loop: Loop, saved: dict[str, Any]) -> FitState:
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    loop.schedule.frozen_upto = saved["frozen_upto"]
    loop.schedule.apply()
    set_rng_state(saved["rng"])
    if loop.average and saved.get("average"):
        loop.average.load_state_dict(saved["average"])
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
            metrics = train_one_epoch(loop, epoch)
            if not math.isfinite(metrics["train_loss"]):
                raise DivergedError(f"training loss {metrics['train_loss']}")
            with loop.averaged():
                metrics = {**metrics, **loop.validate()}
            metrics["epoch_s"] = time.perf_counter() - started
        except KeyboardInterrupt as stop:
            if rt.is_main:
                loop.save(ckpt_dir / "interrupted.pt", None)
            if state.epoch == 0:  # no last.pt yet: "--resume" would only say there is nothing to resume
                raise Interrupted(f" in epoch {epoch + 1}, before its checkpoint: nothing of this training to resume; run "
                                  "it again without --resume", stop) from None
            raise
        except DivergedError as err:
            kept = f"; the best epoch before it is kept in {ckpt_dir / 'best.pt'}" if (ckpt_dir / "best.pt").is_file() else ""
            raise DivergedError(f"training diverged in epoch {epoch + 1} ({err}): lower train.lr (now {cfg.lr:g}){kept}") from None
        score = monitored(metrics, loop.task.monitor)
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
                with loop.averaged():
                    loop.save(ckpt_dir / "best.pt", None)
            loop.save(ckpt_dir / "last.pt", train_state(loop, state))
            logger.info("epoch %d: %s%s", epoch + 1, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                        "  (best)" if improved else "")
            if progress_enabled():  # refreshed while a person watches; train_step writes the final one
                loop.tracker.log_artifact(training_curves(state.history, ckpt_dir.parent / "progress.png", svg=False))
        fault_point("after_epoch", epoch + 1)  # every rank: a test can kill rank 1 alone
    return state
