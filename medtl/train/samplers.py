"""Samplers: class-balanced draws with replacement, and their distributed counterpart."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler


def balanced_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> WeightedRandomSampler:
    """Each class is drawn equally often in expectation (weights 1 / n_class, with replacement)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples or len(labels),
                                 replacement=True, generator=gen)


class ShardedSampler(Sampler[int]):
    """Splits any base sampler's indices across DDP ranks (rank r takes every world-th index)."""

    def __init__(self, base: Sampler[int], rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, rank, world

    def __iter__(self):
        idx = list(self.base)
        idx += idx[: (-len(idx)) % self.world]  # pad so every rank takes the same number of steps
        return iter(idx[self.rank :: self.world])

    def __len__(self) -> int:
        return -(-len(self.base) // self.world)  # type: ignore[arg-type]
