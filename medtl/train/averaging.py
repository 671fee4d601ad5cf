"""An exponential moving average of the weights (``train.ema_epochs``): the model that is validated, kept as
``best.pt`` and registered is the average of the weights the last epoch or so of steps visited, not the last step's.

Averaging iterates smooths the step-to-step noise that makes one seed's (or one CPU's) model differ from another's,
and tends to give better-calibrated models (Morales-Brotons et al. 2024, "Exponential moving average of weights in
deep learning: dynamics and benefits"). The horizon is set in epochs so that it means the same on 472 films as on
4,708; the average is debiased, so the starting weights (a random head) count only as the first step does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The debiased exponential moving average of a model's floating-point weights and BatchNorm statistics."""

    def __init__(self, model: nn.Module, horizon_steps: float) -> None:
        self.decay = 1.0 - 1.0 / max(1.0, horizon_steps)
        state = model.state_dict()  # detached views of the live tensors: the optimizer updates them in place
        self.names = [k for k, v in state.items() if v.is_floating_point()]
        self.live = [state[k] for k in self.names]
        self.shadow = [t.detach().clone() for t in self.live]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        """After each optimizer step: the weights of steps 1..t, step s weighted decay**(t-s), renormalised."""
        self.steps += 1
        kept = self.decay * (1 - self.decay ** (self.steps - 1)) / (1 - self.decay ** self.steps)
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - kept)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block (to validate or save it) and its own weights after."""
        if self.steps == 0:
            yield
            return
        own = [t.clone() for t in self.live]
        with torch.no_grad():
            torch._foreach_copy_(self.live, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, own)

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "shadow": dict(zip(self.names, (t.cpu() for t in self.shadow)))}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        self.steps = int(saved["steps"])  # type: ignore[arg-type]
        shadow = saved["shadow"]
        with torch.no_grad():
            for name, t in zip(self.names, self.shadow):
                t.copy_(shadow[name])  # type: ignore[index]
