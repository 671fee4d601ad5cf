"""Self-describing checkpoints: weights plus everything needed to use them (the inference spec, classes,
threshold, temperature, priors), written atomically. Scoring and evaluation load models from here, never
from training. A model never carries the training config; only a resumable training checkpoint
(``last.pt``, with its optimiser state) keeps it, so that a resume can check it is the same run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from medtl import __version__
from medtl.config import Config, DataConfig, ModelConfig, build_config
from medtl.errors import ModelError
from medtl.files import write_atomically
from medtl.log import logger

FORMAT = "medtl-model/1"


@dataclass(frozen=True)
class InferenceSpec:
    """What turns a scan into model input and model output into a result: the data section (reading,
    intensity, geometry), the architecture, the sliding-window patch. Calibration lives beside it in the
    bundle (temperature, threshold, priors), chosen after training."""

    name: str
    task: str
    data: DataConfig
    model: ModelConfig
    patch_size: list[int] | None = None
    prevalence: float | str | None = None
    """The deployment prevalence setting evaluation applies by default (a number, "em", or None)."""
    tta: bool = False
    """Each prediction averages the scan and its left-right mirror (``evaluate.tta``)."""

    @classmethod
    def from_config(cls, cfg: Config) -> "InferenceSpec":
        return cls(cfg.name, cfg.data.task, cfg.data, cfg.model, cfg.train.patch_size, cfg.evaluate.prevalence,
                   cfg.evaluate.tta)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "data": self.data.model_dump(mode="json"),
                "model": self.model.model_dump(mode="json"), "patch_size": self.patch_size, "prevalence": self.prevalence,
                "tta": self.tta}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model", saved_by: str = "another version") -> "InferenceSpec":
        """The spec a model was saved with. A key this medtl does not know (the model came from another
        version) is left out with a warning rather than making a registered model unloadable."""
        sections = []
        for section, kind in (("data", DataConfig), ("model", ModelConfig)):
            values = dict(d[section])
            unknown = sorted(set(values) - set(kind.model_fields))
            if unknown:
                logger.warning("%s: %s.%s unknown to medtl %s (saved by medtl %s); left out", source, section,
                               f" and {section}.".join(unknown), __version__, saved_by)
            try:
                sections.append(kind(**{k: v for k, v in values.items() if k not in unknown}))
            except ValidationError as err:
                problem = err.errors()[0]
                key = ".".join([section, *(str(p) for p in problem["loc"])])
                raise ModelError(f"{source}: its saved {key} does not validate in medtl {__version__} "
                                 f"({problem['msg'].removeprefix('Value error, ')}); score it with medtl {saved_by}, "
                                 "which saved it, or retrain it") from None
        return cls(d["name"], d["task"], sections[0], sections[1], d.get("patch_size"), d.get("prevalence"),
                   bool(d.get("tta", False)))


@dataclass
class ModelBundle:
    """A model ready for inference and what it needs: the inference spec, class names and the calibration
    chosen on validation (threshold, temperature; ``extra`` holds the priors). ``config`` is the training
    config while the model is being trained (the steps after training read it), None once loaded."""

    model: nn.Module
    config: Config | None
    classes: list[str]
    threshold: float = 0.5
    temperature: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    spec: InferenceSpec = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.spec is None:
            if self.config is None:
                raise ValueError("a ModelBundle needs an inference spec or the config to make one")
            self.spec = InferenceSpec.from_config(self.config)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def log_prior_ratio(self) -> "Any":
        """Prior-shift correction when a deployment prevalence was chosen (``extra['target_prior']``)."""
        from medtl.probability import log_prior_ratio

        return log_prior_ratio(self.extra.get("source_prior"), self.extra.get("target_prior"))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save, written whole or not at all: a crash never leaves half a checkpoint."""
    write_atomically(path, lambda fh: _torch_save(obj, fh), binary=True)


def _torch_save(obj: Any, fh: Any) -> None:
    """torch.save, where a Ctrl-C mid-write stays an interrupt: torch's zip writer reports it as its own
    ``RuntimeError: unexpected pos``, which medtl printed as an unexpected error instead of saying how to resume."""
    try:
        torch.save(obj, fh)
    except RuntimeError as err:
        if isinstance(err.__context__, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (medtl.errors.Terminated)
            raise err.__context__ from None
        raise


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_payload(bundle: ModelBundle) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "medtl_version": __version__,
        "state_dict": {k: v.detach().cpu() for k, v in unwrap(bundle.model).state_dict().items()},
        "inference": bundle.spec.to_dict(),
        "classes": list(bundle.classes),
        "threshold": float(bundle.threshold),
        "temperature": float(bundle.temperature),
        "extra": bundle.extra,
    }


def bundle_digest(bundle: ModelBundle) -> str:
    """A short fingerprint of what decides a prediction: weights, classes, temperature and threshold.
    Two predictions files with the same digest came from the same model."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in unwrap(bundle.model).state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((list(bundle.classes), float(bundle.temperature), float(bundle.threshold),
                   bundle.extra.get("source_prior"), bundle.extra.get("target_prior"))).encode())
    if "typicality" in bundle.extra:  # it adds columns to what the model writes (a model without it keeps its digest)
        h.update(np.asarray(bundle.extra["typicality"]["calibration"], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def save_model(bundle: ModelBundle, path: Path, train_state: dict[str, Any] | None = None) -> None:
    payload = model_payload(bundle)
    if train_state is not None:  # a resumable training checkpoint: the config it was trained with, to check a resume
        payload["train_state"] = train_state
        payload["config"] = bundle.config.to_dict() if bundle.config is not None else None
    atomic_save(payload, Path(path))


def read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found; train a model first or give the right path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}); it may be truncated") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a medtl checkpoint (format {payload.get('format') if isinstance(payload, dict) else '?'})")
    return payload


def bundle_from_payload(payload: dict[str, Any], source: str = "model") -> ModelBundle:
    """Rebuilds the architecture with no pretrained download (weights come from the checkpoint)."""
    from medtl.models.registry import build_model

    if "inference" in payload:
        spec = InferenceSpec.from_dict(payload["inference"], source, payload.get("medtl_version", "another version"))
    else:  # written before models carried an inference spec
        spec = InferenceSpec.from_config(build_config(payload["config"], "checkpoint config"))
    model_cfg = spec.model.model_copy(update={"pretrained": "none", "weights": None})
    classes = payload["classes"]
    n_out = len(classes) if spec.task == "classification" else max(2, len(classes))
    built = build_model(model_cfg, spec.task, spec.data.spatial_dims, n_out, spec.data.image_size)
    built.model.load_state_dict(payload["state_dict"])
    built.model.eval()
    return ModelBundle(built.model, None, classes, payload.get("threshold", 0.5), payload.get("temperature", 1.0),
                       payload.get("extra", {}), spec)


def load_bundle(path: Path) -> ModelBundle:
    return bundle_from_payload(read_checkpoint(path), str(path))
