"""One way to name a model, for every command: a medtl ``model.pt``, a run folder (its ``model.pt``), an
MLflow model folder, ``runs:/RUN/model`` or ``models:/NAME@ALIAS``."""

from __future__ import annotations

from pathlib import Path

from medtl.errors import MedtlError
from medtl.models.checkpoint import ModelBundle, load_bundle


def load_any_model(ref: str) -> ModelBundle:
    """The model ``ref`` names, with its calibration, threshold and inference settings."""
    path = Path(ref)
    if path.suffix == ".pt":
        return load_bundle(path)
    if path.is_file():
        raise MedtlError(f"--model {ref}: a file but not a medtl model (model.pt); give a model.pt, a run folder, "
                         "runs:/RUN/model or models:/NAME@ALIAS")
    if path.is_dir() and not (path / "MLmodel").is_file():
        if (path / "model.pt").is_file():  # a run folder: its model.pt is the model
            return load_bundle(path / "model.pt")
        raise MedtlError(f"--model {ref}: a folder with neither model.pt (a medtl run folder) nor MLmodel (an MLflow "
                         "model); give a model.pt, a run folder, runs:/RUN/model or models:/NAME@ALIAS")
    if ":" not in ref and not path.exists():  # not a URI MLflow resolves either
        raise MedtlError(f"--model {ref}: no such file or folder; give a model.pt, a run folder, runs:/RUN/model or "
                         "models:/NAME@ALIAS")
    from medtl.mlflow_model import load_registered_bundle

    return load_registered_bundle(ref)
