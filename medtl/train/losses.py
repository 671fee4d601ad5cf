"""Losses for imbalanced clinical data: class-weighted CE, focal loss, and MONAI's Dice+CE / Dice+Focal."""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from torch import nn

from medtl.config import TrainConfig
from medtl.errors import ConfigError


def class_weights(counts: np.ndarray, rule: str | dict[str, float], classes: list[str], beta: float = 0.999) -> np.ndarray | None:
    """Per-class loss weights, normalised to mean 1.

    ``inverse_frequency``: n / (k * n_c). ``effective_number`` (Cui et al. 2019): (1 - beta) / (1 - beta^n_c).
    A dict gives explicit weights by class name (unnamed classes get 1).
    """
    counts = np.asarray(counts, dtype=float)
    if isinstance(rule, dict):
        unknown = sorted(set(rule) - set(classes))
        if unknown:
            raise ConfigError(f"train.class_weights: {unknown[0]!r} is not a class; classes are {', '.join(classes)}")
        w = np.array([float(rule.get(c, 1.0)) for c in classes])
    elif rule == "none":
        return None
    elif rule == "inverse_frequency":
        w = counts.sum() / (len(counts) * np.maximum(counts, 1))
    elif rule == "effective_number":
        w = (1.0 - beta) / (1.0 - np.power(beta, np.maximum(counts, 1)))
    else:
        raise ConfigError(f"train.class_weights: unknown rule {rule!r}")
    return w / w.mean()


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): mean over samples of -alpha_y (1 - p_y)^gamma log p_y.

    ``alpha`` (binary convention: weight of class 1, 1 - alpha for class 0) or per-class ``weight``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        p = logp.exp()
        loss = -((1 - p) ** self.gamma) * logp
        if self.alpha is not None:
            loss = loss * torch.where(target == 1, self.alpha, 1 - self.alpha)
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def build_loss(cfg: TrainConfig, task: str, counts: np.ndarray | None, classes: list[str]) -> tuple[nn.Module, np.ndarray | None]:
    """The configured loss and the class weights it uses (None when unweighted)."""
    weights = class_weights(counts, cfg.class_weights, classes, cfg.effective_number_beta) if counts is not None else None
    w = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    if task == "classification":
        if cfg.loss == "ce":
            return nn.CrossEntropyLoss(weight=w), weights
        if cfg.loss == "focal":
            return FocalLoss(cfg.focal_gamma, cfg.focal_alpha, w), weights
        raise ConfigError(f"train.loss: {cfg.loss} is a segmentation loss; for classification use ce or focal")
    common = dict(to_onehot_y=True, softmax=True, include_background=cfg.include_background)
    if cfg.loss == "dice_ce":
        return DiceCELoss(**common, weight=w), weights
    if cfg.loss == "dice_focal":
        return DiceFocalLoss(**common, gamma=cfg.focal_gamma, weight=w), weights
    raise ConfigError(f"train.loss: {cfg.loss} is a classification loss; for segmentation use dice_ce or dice_focal")
