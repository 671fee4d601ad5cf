"""From model space back to the scan's own voxel grid: the one inverse every segmentation output takes.

The inference chain keeps MONAI's record of what it did to each image (reorientation, resampling, crop,
resize). Class probabilities predicted on the model's grid go back through the exact inverse of that record
(MONAI ``Invertd``), interpolated linearly, and only then become labels by argmax: a voxel index means
nothing without its affine, and this way each label lands on the voxel it was predicted for, in any
orientation the scan was stored in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd


@dataclass
class SourceMask:
    """A label mask on the source grid with the source affine (RAS world coordinates, mm)."""

    labels: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:-1, :-1] ** 2).sum(0)))

    @property
    def pixel_mm2(self) -> float:
        """The area (mm²) of a pixel of a film, or of a slice: the parallelogram of the first two axes."""
        axes = self.affine[:-1, :2]
        return float(abs(np.linalg.det(axes)) if len(axes) == 2 else np.linalg.norm(np.cross(axes[:, 0], axes[:, 1])))

    @property
    def voxel_ml(self) -> float:
        return abs(float(np.linalg.det(self.affine[:-1, :-1]))) / 1000.0 if self.affine.shape[0] == 4 else float("nan")


def to_source_grid(transform: Compose, image: MetaTensor, probs: torch.Tensor) -> SourceMask:
    """``probs`` (classes, *model grid) for ``image`` (the MetaTensor the inference chain produced) →
    labels on the grid the scan was loaded on, with its affine."""
    pred = MetaTensor(probs.float().cpu(), meta=dict(image.meta), applied_operations=list(image.applied_operations))
    out = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False,
                  to_tensor=True)({"image": image, "pred": pred})["pred"]
    affine = np.asarray(out.affine if isinstance(out, MetaTensor) else image.meta["original_affine"], dtype=float)
    return SourceMask(torch.as_tensor(out).argmax(0).numpy().astype(np.uint8), affine)
