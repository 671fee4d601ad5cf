"""A reproducible, scanner-like domain shift: a target domain made from real images by a change of
intensity response (gamma, contrast), resolution (blur, down- and up-sampling) and noise."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from medtl.data.manifest import read_manifest
from medtl.errors import ManifestError


@dataclass(frozen=True)
class Shift:
    gamma: float = 1.6
    contrast: float = 0.7
    blur_sigma: float = 0.8
    noise_std: float = 0.04
    downsample: float = 0.6
    """Resolution factor: the image is resampled to this fraction of its size and back."""

    def __post_init__(self) -> None:
        """Each setting names the option it comes from (``medtl manifest shift``), so a bad one is one line."""
        for name, value, ok, rule in (("gamma", self.gamma, self.gamma > 0, "above 0"),
                                      ("contrast", self.contrast, self.contrast > 0, "above 0"),
                                      ("blur", self.blur_sigma, self.blur_sigma >= 0, "0 or more"),
                                      ("noise", self.noise_std, self.noise_std >= 0, "0 or more"),
                                      ("downsample", self.downsample, 0 < self.downsample <= 1, "in (0, 1]; 1 keeps the resolution")):
            if not ok:
                raise ManifestError(f"--{name} {value:g}: give a value {rule}")


def apply_shift(image: np.ndarray, shift: Shift, rng: np.random.Generator) -> np.ndarray:
    """Shifts one image with values in [0, 1]; returns values in [0, 1]."""
    x = np.clip(image.astype(np.float64), 0, 1) ** shift.gamma
    x = 0.5 + shift.contrast * (x - 0.5)
    if shift.downsample < 1:
        small = zoom(x, shift.downsample, order=1)
        x = zoom(small, np.array(x.shape) / np.array(small.shape), order=1)[: image.shape[0], : image.shape[1]]
    if shift.blur_sigma > 0:
        x = gaussian_filter(x, shift.blur_sigma)
    x = x + rng.normal(0, shift.noise_std, x.shape)
    return np.clip(x, 0, 1)


def make_shifted_domain(manifest: Path, out: Path, shift: Shift, seed: int = 0) -> Path:
    """Writes a shifted copy of every 2D image of ``manifest`` (PNG) with a manifest keeping labels and splits."""
    m = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    rows = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for row in m.table.itertuples(index=False):
        path = Path(row.image_path)
        if path.suffix.lower() != ".png":
            raise ManifestError(f"case {row.case_id}: the shift generator takes 2D PNG images; got {path.name}")
        img = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        shifted = (apply_shift(img, shift, rng) * 255).round().astype(np.uint8)
        rel = f"images/{row.case_id}.png"
        Image.fromarray(shifted).save(out / rel)
        rows.append({"case_id": row.case_id, "patient_id": row.patient_id, "image": rel,
                     **({"label": row.label} if "label" in m.table else {}), "split": row.split})
    table = pd.DataFrame(rows)
    table.to_csv(out / "manifest.csv", index=False)
    pd.Series(asdict(shift) | {"seed": seed}).to_json(out / "shift.json")
    return out / "manifest.csv"
