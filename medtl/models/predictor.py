"""Predictions from a model: the stored preprocessing, temperature-scaled probabilities, sliding windows
and the inverse to the source grid for segmentation. A bad case becomes an error record, never the end of
the batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, get_args

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import DataLoader, Dataset

from medtl.config_sections import Device
from medtl.data.transforms import build_transforms, find_data_error
from medtl.errors import ConfigError
from medtl.models.checkpoint import InferenceSpec, ModelBundle
from medtl.tasks import make_task
from medtl.typicality import Typicality, layers_for


class SafeCases(Dataset):
    """Applies the inference transforms; a failing case yields its error message instead of raising.
    With ``memo`` (a dict kept by the caller) each case is read and preprocessed once: the chain is
    deterministic, so validation epochs after the first reuse it."""

    def __init__(self, items: list[dict[str, Any]], transform: Any, memo: dict[str, Any] | None = None) -> None:
        self.items, self.transform, self.memo = items, transform, memo

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        key = self.items[i]["case_id"]
        if self.memo is not None and key in self.memo:
            return self.memo[key]
        out = self._read(self.items[i])
        if self.memo is not None and out["error"] is None:
            self.memo[key] = out
        return out

    def _read(self, item: dict[str, Any]) -> dict[str, Any]:
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
    if requested not in get_args(Device):
        raise ConfigError(f"device {requested!r}: use {', '.join(get_args(Device)[:-1])} or {get_args(Device)[-1]}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda': no GPU is visible here; use auto or cpu")
    return torch.device("cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu")


class Predictor:
    """The one way a prediction is made — validation during training, ``medtl evaluate``, ``medtl score``,
    the pyfunc, Spark, Grad-CAM: the spec's inference transforms, the model, and the task's post-processing
    (the one softmax with the bundle's calibration; sliding windows and the inverse to the source grid).

    Built from a bundle (``Predictor.of``), or around a model being trained and its spec (validation:
    uncalibrated, temperature 1, ``cache=True`` keeping the preprocessed cases between epochs)."""

    def __init__(self, model: torch.nn.Module, spec: InferenceSpec, device: torch.device, temperature: float = 1.0,
                 log_prior_ratio: np.ndarray | None = None, batch_size: int = 16, num_workers: int = 0,
                 cache: bool = False, typicality: Typicality | None = None, keep_features: bool = False) -> None:
        self.model, self.spec, self.device = model, spec, device
        self.typicality, self.keep_features = typicality, keep_features
        self.typicality_layers = typicality.layers if typicality is not None else layers_for(spec.model.backbone)
        self.temperature, self.log_prior_ratio = temperature, log_prior_ratio
        self.batch_size, self.num_workers = batch_size, num_workers
        self.memo: dict[str, Any] | None = {} if cache else None
        self.perturb: Callable[[torch.Tensor], torch.Tensor] | None = None
        """Applied to each preprocessed batch before the model: the noise drift calibration fits under."""
        self.task = make_task(spec.task)
        self.transform = build_transforms(spec.data, train=False, in_channels=spec.model.in_channels,
                                          keep_meta=self.task.keeps_geometry)

    @classmethod
    def of(cls, bundle: ModelBundle, device: torch.device, batch_size: int = 16, num_workers: int = 0,
           keep_features: bool = False) -> "Predictor":
        """``keep_features``: each record also holds the features typicality is fitted on."""
        return cls(bundle.model.to(device), bundle.spec, device, bundle.temperature, bundle.log_prior_ratio,
                   batch_size, num_workers, typicality=Typicality.from_payload(bundle.extra.get("typicality")),
                   keep_features=keep_features)

    def predict(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yields one record per case, in order: case_id, error (or None), and either logits and probs
        (classification) or ``mask``, a SourceMask on the scan's own grid (segmentation)."""
        loader = DataLoader(SafeCases(items, self.transform, self.memo), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=_collate, pin_memory=self.device.type == "cuda")
        self.model.eval()  # the fit loop puts it back in its transfer strategy's training mode each epoch
        for batch in loader:
            good = [r for r in batch if r["error"] is None]
            outputs = self._outputs(good) if good else {}
            for r in batch:
                yield {"case_id": r["case_id"], "error": r["error"], "affine": r["affine"], **outputs.get(r["case_id"], {})}

    def mirrored(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spatial: bool,
                 first: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(x)`` (or ``first``, where the caller has it), averaged with the answer for x's left-right
        mirror when the spec asks for it (``evaluate.tta``); an answer that is an image is mirrored back first."""
        out = forward(x) if first is None else first
        if not self.spec.tta:
            return out
        other = forward(x.flip(2))
        return (out + (other.flip(2) if spatial else other)) / 2

    @torch.no_grad()
    def _outputs(self, good: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        x = torch.stack([r["image"] for r in good]).to(self.device, non_blocking=True)
        if self.perturb is not None:
            x = self.perturb(x)
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.task.outputs(self, x, good)
