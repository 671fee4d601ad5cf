"""Inference with a model bundle: the stored preprocessing, temperature-scaled probabilities, sliding
windows for segmentation. Shared by evaluation and scoring; a bad case becomes an error record, never
the end of the batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from torch.utils.data import DataLoader, Dataset

from medtl.data.inverse import to_source_grid
from medtl.data.transforms import build_transforms, find_data_error
from medtl.models.checkpoint import ModelBundle
from medtl.probability import probabilities


class SafeCases(Dataset):
    """Applies the inference transforms; a failing case yields its error message instead of raising."""

    def __init__(self, items: list[dict[str, Any]], transform: Any) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        try:
            out = self.transform(dict(item))
            image = out["image"]
            affine = getattr(image, "affine", None)
            plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            return {"case_id": item["case_id"], "image": plain, "error": None, "meta_image": image,
                    "affine": None if affine is None else np.asarray(affine)}
        except Exception as exc:  # noqa: BLE001 - any reader or transform failure is this case's problem
            err = find_data_error(exc)
            message = str(err) if err else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return {"case_id": item["case_id"], "image": None, "error": message.removeprefix(f"case {item['case_id']}: "),
                    "affine": None, "meta_image": None}


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def device_for(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def iter_predictions(bundle: ModelBundle, items: list[dict[str, Any]], device: torch.device, batch_size: int = 16,
                     num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """Yields one record per case, in order: case_id, error (or None), and either logits and probs
    (classification) or ``mask``, a SourceMask on the scan's own grid (segmentation)."""
    cfg = bundle.config
    seg = bundle.task == "segmentation"
    transform = build_transforms(cfg.data, train=False, in_channels=cfg.model.in_channels, keep_meta=seg)
    loader = DataLoader(SafeCases(items, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    model = bundle.model.to(device).eval()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    for batch in loader:
        good = [r for r in batch if r["error"] is None]
        outputs: dict[str, Any] = {}
        if good:
            x = torch.stack([r["image"] for r in good]).to(device, non_blocking=True)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if bundle.task == "classification":
                    logits = model(x).float().cpu().numpy()
                    probs = probabilities(logits, bundle.temperature, bundle.log_prior_ratio)
                    outputs = {r["case_id"]: {"logits": lg, "probs": pr} for r, lg, pr in zip(good, logits, probs)}
                else:
                    roi = cfg.train.patch_size or list(x.shape[2:])
                    probs = torch.softmax(sliding_window_inference(x, roi, 4, model, overlap=0.25).float(), 1).cpu()
                    outputs = {r["case_id"]: {"mask": to_source_grid(transform, r["meta_image"], p)} for r, p in zip(good, probs)}
        for r in batch:
            yield {"case_id": r["case_id"], "error": r["error"], "affine": r["affine"], **outputs.get(r["case_id"], {})}
