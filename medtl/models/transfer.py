"""Transfer strategies: which stages train, at what learning rate, and when they unfreeze.

``feature_extraction`` freezes the whole backbone; ``fine_tune`` freezes stages up to ``freeze_until``
(their BatchNorm kept in eval mode so running statistics do not move), optionally unfreezing one more
stage every ``gradual_unfreeze`` epochs, with ``layer_lr_decay`` giving each earlier stage lr × decay;
``full`` and ``scratch`` train everything (scratch is built with ``pretrained: none``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medtl.config import TransferConfig
from medtl.models.registry import BackboneSpec, check_stage


@dataclass
class StageGroup:
    name: str
    modules: list[nn.Module]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]


def stage_groups(model: nn.Module, spec: BackboneSpec) -> list[StageGroup]:
    """Backbone stages in input-to-output order, then everything else (head, decoder) as 'head'."""
    backbone = model.backbone  # type: ignore[attr-defined]
    groups, claimed = [], set()
    for name, prefixes in spec.stages:
        mods = [backbone.get_submodule(p) for p in prefixes]
        groups.append(StageGroup(name, mods))
        claimed.update(id(p) for m in mods for p in m.parameters())
    rest = [p for p in backbone.parameters() if id(p) not in claimed]
    head_mods = [m for n, m in model.named_children() if n != "backbone"]
    if rest:
        holder = nn.Module()
        holder.params = nn.ParameterList(rest)
        groups.append(StageGroup("backbone_other", [holder]))
    groups.append(StageGroup("head", head_mods))
    return groups


class TransferSchedule:
    """Applies a strategy to a model: freezing now, unfreezing at epoch boundaries, per-stage lrs."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, cfg: TransferConfig, base_lr: float) -> None:
        self.model, self.cfg, self.base_lr = model, cfg, base_lr
        self.groups = stage_groups(model, spec)
        backbone_names = [g.name for g in self.groups if g.name != "head"]
        if cfg.strategy == "feature_extraction":
            self.frozen_upto = len(backbone_names)
        elif cfg.strategy == "fine_tune" and cfg.freeze_until:
            check_stage(spec, cfg.freeze_until)
            self.frozen_upto = [n for n, _ in spec.stages].index(cfg.freeze_until) + 1
        else:
            self.frozen_upto = 0
        self.initial_frozen = self.frozen_upto
        self.apply()

    def lr_for(self, index: int) -> float:
        """Head at base lr; stage i (counting back from the head) at base × decay^i."""
        depth = len(self.groups) - 1 - index
        return self.base_lr * (self.cfg.layer_lr_decay ** depth)

    def param_groups(self) -> list[dict]:
        """Optimizer groups for every stage (frozen ones included, so unfreezing needs no new optimizer)."""
        return [{"params": g.parameters(), "lr": self.lr_for(i), "initial_lr": self.lr_for(i), "name": g.name}
                for i, g in enumerate(self.groups) if g.parameters()]

    def apply(self) -> None:
        for i, group in enumerate(self.groups):
            frozen = i < self.frozen_upto
            for p in group.parameters():
                p.requires_grad_(not frozen)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for g in self.groups[: self.frozen_upto] for m in g.modules]

    def train_mode(self) -> None:
        """model.train() with frozen stages' BatchNorm (and dropout) kept in eval mode."""
        self.model.train()
        for module in self.frozen_modules():
            module.eval()

    def on_epoch_start(self, epoch: int) -> bool:
        """Gradual unfreezing: one more stage (from the top) every N epochs. True when something changed."""
        n = self.cfg.gradual_unfreeze
        if self.cfg.strategy != "fine_tune" or not n or epoch == 0:
            return False
        target = max(0, self.initial_frozen - epoch // n)
        if target < self.frozen_upto:
            self.frozen_upto = target
            self.apply()
            return True
        return False

    def summary(self) -> list[dict]:
        """Per stage: trainable parameters, total, lr — printed and logged at the start of training."""
        rows = []
        for i, g in enumerate(self.groups):
            params = g.parameters()
            rows.append({"stage": g.name, "params": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad),
                         "lr": self.lr_for(i) if i >= self.frozen_upto else 0.0})
        return rows


def frozen_at_end(model: nn.Module, spec: BackboneSpec, summary: list[dict]) -> list[nn.Module]:
    """The modules of the stages a training run left frozen, read from its per-stage summary (lr 0):
    their BatchNorm statistics are still ImageNet's, not the training data's."""
    frozen = {row["stage"] for row in summary if row["stage"] != "head" and row["lr"] == 0.0}
    return [m for g in stage_groups(model, spec) if g.name in frozen for m in g.modules]
