"""End-to-end pipelines, installed with the package and registered by name; a researcher's own ``.py``
file (with a ``run(cfg, ...)`` function) loads by path. Each pipeline composes the steps in
``medtl.steps`` and returns a dict (``summary`` is printed, ``registered`` names a registered model)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from medtl.errors import ConfigError, MedtlError

REGISTERED = ("diagnosis", "segmentation", "compare", "crossval", "label_efficiency", "adaptation", "batch_score")


def load_pipeline(name: str) -> ModuleType:
    """A registered pipeline by name, or a pipeline file by its path."""
    if name in REGISTERED:
        return importlib.import_module(f"medtl.pipelines.{name}")
    path = Path(name)
    if path.suffix != ".py" or not path.is_file():
        raise MedtlError(f"pipeline {name!r} not found; use one of {', '.join(REGISTERED)}, or the path of a .py file")
    spec = importlib.util.spec_from_file_location(f"medtl_user_pipeline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not callable(getattr(module, "run", None)):
        raise MedtlError(f"{path}: a pipeline file needs a function run(cfg, ...)")
    return module


def task_pipeline(cfg: Any) -> ModuleType:
    """The pipeline that trains one model for the config's task: what compare, crossval and the studies nest."""
    return load_pipeline("segmentation" if cfg.data.task == "segmentation" else "diagnosis")


def require_task(cfg: Any, task: str, pipeline: str) -> None:
    """Refuse a config written for the other task rather than train what it says under this pipeline's name."""
    if cfg.data.task != task:
        other = "segmentation" if cfg.data.task == "segmentation" else "diagnosis"
        raise ConfigError(f"data.task is {cfg.data.task} but the {pipeline} pipeline is for {task}; "
                          f"run `medtl run {other}` with this config, or set data.task: {task}")


def accepts(run: Callable[..., Any], option: str) -> bool:
    """Whether a pipeline's ``run`` takes a keyword such as ``resume`` or ``folds``."""
    return option in inspect.signature(run).parameters
