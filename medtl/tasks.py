"""What a task means: its training target and loss, its validation metrics, and what a prediction is (the
post-processing the ``Predictor`` applies). The fit loop and the predictor hold a task and never ask which
one it is; domain adaptation is an objective wrapping the task's.

Validation goes through the same ``Predictor`` as evaluation and scoring, so a validation Dice is measured
on each scan's own grid, as the final evaluation measures it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medtl.data.datasets import case_items
from medtl.errors import DataError, DivergedError
from medtl.log import logger
from medtl.probability import probabilities

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict[str, float]]]
"""(model, images, targets, progress through training in [0, 1]) → (loss, extra numbers to log)."""


class Task:
    """Shared by both tasks: the loss on the model's output, and bad validation cases handled one way."""

    monitor = ""
    """The validation metric that picks the best epoch."""
    calibrated = False
    """Whether its probabilities get a temperature and a decision threshold after training."""
    keeps_geometry = False
    """Whether predictions go back to each scan's own grid (the inference chain keeps what it did)."""

    def __init__(self, loss_fn: nn.Module | None = None, skip_bad_cases: bool = False) -> None:
        self.loss_fn, self.skip_bad_cases = loss_fn, skip_bad_cases

    def target(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(model(x).float(), y), {}  # type: ignore[misc]

    def items(self, table: pd.DataFrame, classes: list[str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def outputs(self, predictor: Any, x: torch.Tensor, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """One batch through ``predictor.model`` → a record per case id."""
        raise NotImplementedError

    def validation_metrics(self, records: list[dict[str, Any]], items: list[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def readable(self, records: Iterable[dict[str, Any]], items: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        """(record, item) pairs of the cases that could be read; an unreadable one ends validation with its
        name, or is left out with a warning when bad cases are skipped."""
        pairs = []
        for rec, item in zip(records, items):
            if rec["error"]:
                if not self.skip_bad_cases:
                    raise DataError(f"case {rec['case_id']}: {rec['error']}")
                logger.warning("validation case %s left out: %s", rec["case_id"], rec["error"])
                continue
            pairs.append((rec, item))
        return pairs


class Classification(Task):
    monitor = "val_auroc"
    calibrated = True

    def target(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        return batch["label"].long().to(device, non_blocking=True)

    def items(self, table: pd.DataFrame, classes: list[str]) -> list[dict[str, Any]]:
        return case_items(table, classes)

    def outputs(self, predictor: Any, x: torch.Tensor, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Logits and probabilities through the one softmax, with the predictor's temperature and prior shift; the
        features typicality measures, or the typicality they give, where the predictor asks for them."""
        from medtl.models.checkpoint import unwrap
        from medtl.typicality import stage_statistics

        records: list[dict[str, Any]] = [{} for _ in cases]
        if predictor.keep_features or predictor.typicality is not None:
            core = unwrap(predictor.model)  # hooks on the plain module: a compiled graph need not call them
            with stage_statistics(core, predictor.typicality_layers) as seen:
                out = core(x)
            out = predictor.mirrored(core, x, spatial=False, first=out)  # the mirror's features are not the scan's
            feats = torch.cat(seen).cpu().numpy()
            if predictor.keep_features:
                for rec, f in zip(records, feats):
                    rec["features"] = f
            if predictor.typicality is not None:
                for rec, p in zip(records, predictor.typicality.p_values(feats)):
                    rec["typicality"] = float(p)
        else:
            out = predictor.mirrored(predictor.model, x, spatial=False)
        logits = out.float().cpu().numpy()
        probs = probabilities(logits, predictor.temperature, predictor.log_prior_ratio)
        return {r["case_id"]: {"logits": lg, "probs": pr, **rec} for r, lg, pr, rec in zip(cases, logits, probs, records)}

    def validation_metrics(self, records: list[dict[str, Any]], items: list[dict[str, Any]]) -> dict[str, float]:
        """Unweighted cross-entropy and AUROC (one-vs-rest macro for more than two classes) of the
        uncalibrated validation predictions."""
        pairs = self.readable(records, items)
        logits = np.stack([r["logits"] for r, _ in pairs])
        probs = np.stack([r["probs"] for r, _ in pairs])
        y = np.array([it["label"] for _, it in pairs])
        if not np.isfinite(logits).all():
            raise DivergedError("validation outputs are not finite")
        loss = float(nn.functional.cross_entropy(torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(y)))
        auroc = float("nan")
        if len(np.unique(y)) > 1:
            auroc = float(roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2 else
                          roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))
        return {"val_loss": loss, "val_auroc": auroc}


class Segmentation(Task):
    monitor = "val_dice"
    keeps_geometry = True

    def __init__(self, loss_fn: nn.Module | None = None, skip_bad_cases: bool = False) -> None:
        super().__init__(loss_fn, skip_bad_cases)
        self._references: dict[str, np.ndarray] = {}
        self.n_classes = 2
        """Background included; set by ``items``, which is given the classes."""

    def target(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        return batch["mask"].to(device, non_blocking=True).round()

    def items(self, table: pd.DataFrame, classes: list[str]) -> list[dict[str, Any]]:
        self.n_classes = max(len(classes or []), 2)
        return case_items(table, None, with_mask=True)

    def outputs(self, predictor: Any, x: torch.Tensor, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Class probabilities over sliding windows of the patch size, taken back to each scan's own grid
        (linear on probabilities, argmax there): a ``SourceMask`` per case."""
        from monai.inferers import sliding_window_inference

        from medtl.data.inverse import to_source_grid

        roi = predictor.spec.patch_size or list(x.shape[2:])
        probs = predictor.mirrored(lambda v: torch.softmax(sliding_window_inference(v, roi, 4, predictor.model,
                                                                                    overlap=0.25).float(), 1),
                                   x, spatial=True).cpu()
        return {r["case_id"]: {"mask": to_source_grid(predictor.transform, r["meta_image"], p)} for r, p in zip(cases, probs)}

    def validation_metrics(self, records: list[dict[str, Any]], items: list[dict[str, Any]]) -> dict[str, float]:
        """Mean Dice over cases, each on its scan's own grid, as evaluation's headline Dice (both masks empty: Dice 1;
        several foreground classes: the mean of theirs)."""
        from medtl.evaluate.segmentation import mean_dice

        dice = []
        for rec, item in self.readable(records, items):
            pred, ref = rec["mask"].labels, self._reference(item)
            if pred.shape != ref.shape:
                raise DataError(f"case {rec['case_id']}: mask grid {ref.shape} differs from the image grid {pred.shape}; "
                                "run `medtl manifest check` and give each image the mask drawn on it")
            dice.append(mean_dice(pred, ref, self.n_classes))
        return {"val_dice": float(np.mean(dice)) if dice else float("nan")}

    def _reference(self, item: dict[str, Any]) -> np.ndarray:
        if item["case_id"] not in self._references:
            from medtl.data.readers import load_scan
            from medtl.evaluate.segmentation import reference_labels

            mask = load_scan(item["mask"])[0].numpy()
            self._references[item["case_id"]] = reference_labels(mask, self.n_classes)
        return self._references[item["case_id"]]


def make_task(task: str, loss_fn: nn.Module | None = None, skip_bad_cases: bool = False) -> Task:
    return (Segmentation if task == "segmentation" else Classification)(loss_fn, skip_bad_cases)


class DomainAdapted:
    """The task's loss on source features plus an adaptation term (CORAL or DANN) on source and target
    features: an objective like the task's own, so the loop does not know adaptation exists."""

    def __init__(self, loss_fn: nn.Module, adapter: nn.Module, next_target: Callable[[], torch.Tensor],
                 to_device: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.loss_fn, self.adapter, self.next_target, self.to_device = loss_fn, adapter, next_target, to_device

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        from medtl.models.checkpoint import unwrap

        core = unwrap(model)
        fs, ft = core.features(x), core.features(self.to_device(self.next_target()))
        task = self.loss_fn(core.head(fs).float(), y)
        extra, info = self.adapter(fs, ft, progress)
        return task + extra, {"task_loss": float(task.detach()), **info}


class Mixup:
    """Classification on convex mixes of pairs of cases, the loss mixed with the same weight (Zhang et al. 2018):
    a regulariser that keeps the network from growing confident between classes. Like the task's own objective,
    so the loop does not know it exists; the weight and pairing come from torch's seeded generator."""

    def __init__(self, loss_fn: nn.Module, alpha: float) -> None:
        a = torch.tensor(float(alpha))
        self.loss_fn, self.beta = loss_fn, torch.distributions.Beta(a, a)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        lam = float(self.beta.sample())
        pair = torch.randperm(x.shape[0]).to(x.device)
        logits = model(lam * x + (1.0 - lam) * x[pair]).float()
        return lam * self.loss_fn(logits, y) + (1.0 - lam) * self.loss_fn(logits, y[pair]), {}
