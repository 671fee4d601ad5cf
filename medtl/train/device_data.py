"""Training batches served from tensors that live on the compute device.

On a GPU the plain loop is starved by its input pipeline: MONAI's CPU transforms feed ~870 images/s at
224 px while the card trains faster than that. When the preprocessed training split fits in device memory,
medtl decodes and resizes it once, keeps it there, and draws batches by index, with flips and intensity
jitter done on the device. The sampling order is the one the DataLoader would use (the same sampler), so
with augmentation off the batches, and so the training, are those of the plain path."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from medtl.train.acquisition import AcquisitionAugment


class DeviceAugment:
    """Random flip along the first spatial axis (where anatomy allows), the acquisition changes when asked for, and
    intensity scale/shift per image, drawn from a device generator that ``reseed`` resets each epoch (resume replays
    the same epochs)."""

    def __init__(self, device: torch.device, flip: bool, scale: float = 0.1, shift: float = 0.05, prob: float = 0.5,
                 acquisition: AcquisitionAugment | None = None) -> None:
        self.flip, self.scale, self.shift, self.prob, self.acquisition = flip, scale, shift, prob, acquisition
        self.generator = torch.Generator(device=device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _draw(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, dims = x.shape[0], [1] * (x.ndim - 1)
        if self.flip:
            flip = (self._draw(n, x.device) < self.prob).view(n, *dims)
            x = torch.where(flip, x.flip(2), x)
            if mask is not None:
                mask = torch.where(flip, mask.flip(2), mask)
        if self.acquisition is not None:
            x, mask = self.acquisition(x, mask, self._draw, self.generator)
        factor = 1 + self.scale * (2 * self._draw(n, x.device) - 1) * (self._draw(n, x.device) < self.prob)
        offset = self.shift * (2 * self._draw(n, x.device) - 1) * (self._draw(n, x.device) < self.prob)
        return x * factor.view(n, *dims) + offset.view(n, *dims), mask


def lone_last_batch(n: int, batch_size: int) -> bool:
    """Whether an epoch of ``n`` training cases ends in a batch of one, which a training step skips: BatchNorm
    cannot normalise one value per channel (a 3D encoder's 1x1x1 bottleneck), and one case is no batch statistic."""
    return n > 1 and batch_size > 1 and n % batch_size == 1


class DeviceLoader:
    """An iterable of batches like a DataLoader's (``image`` and ``label`` or ``mask``), sliced from
    device-resident tensors in the order ``sampler`` gives."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, target_key: str, batch_size: int,
                 sampler: Sampler[int] | Sequence[int], augment: DeviceAugment | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.images, self.targets, self.key = images, targets, target_key
        self.batch_size, self.sampler, self.augment, self.generator = batch_size, sampler, augment, generator

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return math.ceil(n / self.batch_size) - lone_last_batch(n, self.batch_size)

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.reseed(seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.generator is not None:  # a DataLoader draws its workers' base seed first: keep the sampler in step
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        if lone_last_batch(len(order), self.batch_size):
            order = order[:-1]
        for chunk in order.split(self.batch_size):
            idx = chunk.to(self.images.device, non_blocking=True)
            x, y = self.images.index_select(0, idx), self.targets.index_select(0, idx)
            if self.augment is not None:
                x, mask = self.augment(x, y if self.key == "mask" else None)
                y = mask if self.key == "mask" else y
            yield {"image": x, self.key: y}


def fits_on_device(n: int, item_shape: Sequence[int], device: torch.device, share: float = 0.4) -> bool:
    """Whether n float32 images of ``item_shape`` take less than ``share`` of the device's free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return n * math.prod(item_shape) * 4 < share * free
