"""Random changes of how an image was acquired, done on the device: field of view (zoom and shift), intensity
response (gamma, contrast), resolution (blur) and noise, each drawn per image (BigAug, Zhang et al., IEEE TMI
2020). A model that has seen many scanners' looks leans less on its training site's; the DataLoader path gets the
same steps from MONAI (``medtl.data.transforms``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Draw = Callable[[int, torch.device], torch.Tensor]
"""Uniform draws in [0, 1), one per image, from the augmentation's seeded generator."""


class AcquisitionAugment:
    """Each change applies to an image with probability ``prob``; its strength is drawn uniformly up to the bound."""

    def __init__(self, prob: float = 0.5, gamma: float = 1.5, contrast: float = 0.3, blur_sigma: float = 1.0,
                 noise: float = 0.05, zoom: float = 0.1, shift: float = 0.05) -> None:
        self.prob, self.gamma, self.contrast, self.blur_sigma = prob, gamma, contrast, blur_sigma
        self.noise, self.zoom, self.shift = noise, zoom, shift

    @classmethod
    def at_strength(cls, strength: float) -> AcquisitionAugment:
        """Every bound scaled by ``strength`` (gamma's on a log scale); 1 gives the defaults."""
        return cls(gamma=1.5**strength, contrast=0.3 * strength, blur_sigma=1.0 * strength, noise=0.05 * strength,
                   zoom=0.1 * strength, shift=0.05 * strength)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None, draw: Draw,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = self._field_of_view(x, mask, draw)
        n, dims = x.shape[0], [1] * (x.ndim - 1)
        axes = tuple(range(1, x.ndim))
        lo, hi = x.amin(axes, keepdim=True), x.amax(axes, keepdim=True)
        span = (hi - lo).clamp_min(1e-6)
        g = torch.exp(math.log(self.gamma) * self._signed(n, x.device, draw)).view(n, *dims)
        x = lo + span * ((x - lo) / span).clamp(0, 1) ** g
        mean = x.mean(axes, keepdim=True)
        x = mean + (1 + self.contrast * self._signed(n, x.device, draw)).view(n, *dims) * (x - mean)
        x = _gaussian_blur(x, self.blur_sigma * self._strength(n, x.device, draw))
        std = self.noise * self._strength(n, x.device, draw).view(n, *dims) * span
        return x + std * torch.randn(x.shape, device=x.device, generator=generator), mask

    def _chosen(self, n: int, device: torch.device, draw: Draw) -> torch.Tensor:
        return (draw(n, device) < self.prob).float()

    def _signed(self, n: int, device: torch.device, draw: Draw) -> torch.Tensor:
        """A strength in [-1, 1) where the change applies, 0 elsewhere."""
        return (2 * draw(n, device) - 1) * self._chosen(n, device, draw)

    def _strength(self, n: int, device: torch.device, draw: Draw) -> torch.Tensor:
        return draw(n, device) * self._chosen(n, device, draw)

    def _field_of_view(self, x: torch.Tensor, mask: torch.Tensor | None,
                       draw: Draw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Zoom in or out by up to ``zoom`` and move by up to ``shift`` of the field, the edges repeated."""
        n, d = x.shape[0], x.ndim - 2
        scale = 1 + self.zoom * self._signed(n, x.device, draw)
        theta = torch.zeros(n, d, d + 1, device=x.device)
        theta[:, range(d), range(d)] = (1 / scale).unsqueeze(1)
        for axis in range(d):
            theta[:, axis, d] = 2 * self.shift * self._signed(n, x.device, draw)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if mask is not None:
            mask = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="border",
                                 align_corners=False).to(mask.dtype)
        return x, mask


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred with its own sigma (0 keeps it), one separable pass per spatial axis."""
    if not bool((sigma > 0).any()):
        return x
    n, c, d = x.shape[0], x.shape[1], x.ndim - 2
    radius = max(1, math.ceil(2 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-t**2 / (2 * sigma.clamp_min(1e-3).view(n, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per image and channel
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    out = x.reshape(1, n * c, *x.shape[2:])
    for axis in range(d):
        shape = [n * c, 1] + [1] * d
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis):2 * (d - 1 - axis) + 2] = [radius, radius]
        out = conv(F.pad(out, pad, mode="replicate"), kernel.view(shape), groups=n * c)
    return out.reshape(x.shape)
