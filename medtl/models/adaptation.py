"""Domain adaptation, the third transfer technique: a model trained on one site's scanner made to work on
another's, whose labels are scarce or absent.

- AdaBN (Li et al. 2016): BatchNorm running statistics re-estimated on target images; no weight changes.
- Deep CORAL (Sun & Saenko 2016): penalty on the distance between source and target feature covariances.
- DANN (Ganin et al. 2016): a domain classifier on the features behind a gradient-reversal layer, its
  coefficient ramped from 0 to 1 over training as 2 / (1 + exp(-10 p)) - 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by -coeff backward."""
    return _ReverseGrad.apply(x, coeff)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||C_s - C_t||_F^2 / (4 d^2) with unbiased feature covariances C."""
    d = source.shape[1]

    def cov(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        xm = x - x.mean(0, keepdim=True)
        return xm.T @ xm / max(1, x.shape[0] - 1)

    return ((cov(source) - cov(target)) ** 2).sum() / (4 * d * d)


def dann_coefficient(progress: float) -> float:
    """The reversal ramp of Ganin et al.: 0 at the start of training, close to 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    def __init__(self, feature_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class Adapter(nn.Module):
    """The extra training term of CORAL or DANN, computed from source and target backbone features."""

    def __init__(self, method: str, feature_dim: int, weight: float = 1.0) -> None:
        super().__init__()
        self.method, self.weight = method, weight
        self.domain = DomainClassifier(feature_dim) if method == "dann" else None

    def forward(self, source: torch.Tensor, target: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        if self.method == "coral":
            loss = coral_loss(source, target)
            return self.weight * loss, {"coral_loss": float(loss.detach())}
        coeff = dann_coefficient(progress)
        feats = grad_reverse(torch.cat([source, target]).float(), coeff)
        logits = self.domain(feats)  # type: ignore[misc]
        labels = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(logits.device)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        acc = float(((logits.detach() > 0).float() == labels).float().mean())
        return self.weight * loss, {"domain_loss": float(loss.detach()), "domain_accuracy": acc, "grl_coefficient": coeff}


@torch.no_grad()
def adabn(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, keep: Iterable[nn.Module] = ()) -> int:
    """Re-estimates the running mean/var of every BatchNorm that learned them on the source data (cumulative
    average over the target batches); weights are untouched. BatchNorms inside ``keep`` — stages frozen during
    fine-tuning, which normalise with their ImageNet statistics — stay as they are: the layers after them were
    trained on features normalised that way, and the first adapted layer absorbs the shift. Returns the
    number of images seen (0 when no BatchNorm is left to adapt: the batches are not read)."""
    kept = {id(m) for k in keep for m in k.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept]
    if not norms:
        return 0
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in norms:
        m.train()
    seen = 0
    for x in batches:
        model(x.to(device))
        seen += len(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return seen
