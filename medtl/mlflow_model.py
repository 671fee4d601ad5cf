"""The registered model: an MLflow pyfunc that carries medtl's self-describing checkpoint (weights,
preprocessing config, class names, temperature, threshold), its registration and aliases."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from medtl import __version__
from medtl.config import redact_uri
from medtl.errors import ModelError, TrackingError
from medtl.models.checkpoint import ModelBundle, load_bundle
from medtl.probability import decide_labels
from medtl.typicality import measures_typicality, unlike_training


class MedtlPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame with an 'image' column of paths, and optionally each film's 'view')`` → calibrated
    probabilities and the label at the stored threshold; unreadable cases get status 'error' and a reason."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["checkpoint"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from medtl.models.predictor import Predictor, device_for

        if "image" not in model_input:
            raise ModelError("input needs an 'image' column of file or series-folder paths")
        ids = model_input["case_id"].astype(str) if "case_id" in model_input else model_input.index.astype(str)
        root = served_root()
        items, refused = [], {}
        views = model_input["view"] if "view" in model_input else pd.Series("", index=model_input.index)
        for c, p, view in zip(ids, model_input["image"], views):
            if allowed_path(str(p), root):  # a view the film's header does not state, as its manifest does
                items.append({"case_id": c, "image": str(p)} | ({"view": view} if isinstance(view, str) and view else {}))
            else:
                refused[c] = {"case_id": c, "error": REFUSED, "affine": None}
        preds = {rec["case_id"]: rec for rec in Predictor.of(self.bundle, device_for("auto")).predict(items)}
        rows = [prediction_row(self.bundle, preds.get(c) or refused[c]) for c in ids]
        return pd.DataFrame(rows).drop(columns=["case_id"])


REFUSED = "path refused: not under the data root this model serves (MEDTL_DATA_ROOT)"


def served_root() -> Path | None:
    """The one folder a served or Spark-scored model may read (``MEDTL_DATA_ROOT``); None refuses every path."""
    import os

    root = os.environ.get("MEDTL_DATA_ROOT")
    return Path(root).resolve() if root else None


def allowed_path(ref: str, root: Path | None) -> bool:
    """True when ``ref`` (a file, a folder, or ``folder#series=UID``) resolves, links followed, inside ``root``.

    Whatever a client names, the answer for a refused path is the same, so a request cannot probe which
    files exist on the server."""
    from medtl.data.dicom import parse_series_ref

    if root is None:
        return False
    path, _ = parse_series_ref(ref)
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def prediction_row(bundle: ModelBundle, rec: dict[str, Any]) -> dict[str, Any]:
    """One output row: probability per class, the predicted label, status and error."""
    row: dict[str, Any] = {"case_id": rec["case_id"]}
    if bundle.task == "classification":
        probs = rec.get("probs")
        for i, c in enumerate(bundle.classes):
            row[f"prob_{c}"] = float(probs[i]) if probs is not None else float("nan")
        row["predicted"] = None if probs is None else decide_labels(probs, bundle.threshold, bundle.classes)[0]
        if measures_typicality(bundle):
            row["typicality"] = rec.get("typicality", float("nan"))
            row["unlike_training"] = unlike_training(row["typicality"])
    row["status"] = "error" if rec["error"] else "ok"
    row["error"] = rec["error"] or ""
    return row


def signature(bundle: ModelBundle) -> ModelSignature:
    outputs = [ColSpec("double", f"prob_{c}") for c in bundle.classes] if bundle.task == "classification" else []
    outputs += [ColSpec("string", "predicted")]
    if measures_typicality(bundle):
        outputs += [ColSpec("double", "typicality"), ColSpec("string", "unlike_training")]
    outputs += [ColSpec("string", "status"), ColSpec("string", "error")]
    return ModelSignature(inputs=Schema([ColSpec("string", "image"), ColSpec("string", "view", required=False)]),
                          outputs=Schema(outputs))


def log_pyfunc(bundle: ModelBundle, checkpoint: Path, name: str, run_id: str, epoch: int) -> tuple[str, str]:
    """Logs the model as ``name`` (the run's name: every logged model says which run made it) to run
    ``run_id`` as the output of ``epoch`` (MLflow links that step's metrics to it); returns its URI and
    MLflow model id."""
    import logging

    import torch

    # MLflow warns that a PythonModel instance is pickled; ours holds no state until load_context.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)

    with warnings.catch_warnings():  # images have no input example: the signature says what the model takes
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = mlflow.models.Model.log(  # pyfunc.log_model's own call, with the run named rather than taken as "active"
            artifact_path=None,
            name=name,
            run_id=run_id,
            step=epoch,
            flavor=mlflow.pyfunc,
            python_model=MedtlPyfunc(),
            artifacts={"checkpoint": str(checkpoint)},
            signature=signature(bundle),
            pip_requirements=[f"medtl=={__version__}", f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"classes": bundle.classes, "threshold": bundle.threshold, "temperature": bundle.temperature,
                      "task": bundle.task},
        )
    return info.model_uri, info.model_id


def register(model_uri: str, name: str, alias: str, card: str = "", tags: dict[str, Any] | None = None,
             gates: dict[str, float | None] | None = None) -> int:
    """Registers a version under ``name`` with its model card (description) and tags, points ``alias`` at it,
    and records the promotion gates on the registered model; returns the version number."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Successfully registered model ..." itself
        version = mlflow.register_model(model_uri, name)
    client = mlflow.MlflowClient()
    if card:
        client.update_model_version(name, version.version, description=card)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version.version, key, str(value))
    for key, value in (gates or {}).items():
        client.set_registered_model_tag(name, f"gate.{key}", "none" if value is None else str(value))
    client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def promote(name: str, version: int, alias: str, uri: str | None = None, force: bool = False) -> list[str]:
    """Points ``alias`` at a version that passes the model's gates; ``force`` overrides and records who forced
    what (returns the failures that were forced)."""
    import getpass
    from datetime import datetime, timezone

    from medtl.config_sections import alias_problem
    from medtl.model_card import gate_failures

    problem = alias_problem(alias)
    if problem:
        raise TrackingError(problem)
    client = mlflow.MlflowClient(uri)
    try:
        mv = client.get_model_version(name, str(version))
        gates = client.get_registered_model(name).tags
    except Exception:  # noqa: BLE001
        raise TrackingError(f"model {name} has no version {version}; `medtl models list {name}` lists its versions") from None

    def gate(key: str) -> float | None:
        value = gates.get(f"gate.{key}")
        return None if value in (None, "none") else float(value)

    failures = gate_failures(mv.tags, gate("min_auroc_ci_low"), gate("max_ece"))
    if failures and not force:
        raise TrackingError(f"{name} version {version} not promoted to @{alias}: {'; '.join(failures)}; "
                            "retrain or recalibrate, or pass --force (recorded on the version)")
    if failures:
        client.set_model_version_tag(name, str(version), f"forced.{alias}",
                                     f"{getpass.getuser()} at {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
                                     + "; ".join(failures))
    client.set_registered_model_alias(name, alias, str(version))
    return failures


def model_versions(uri: str, name: str | None = None) -> pd.DataFrame:
    """Every version of the registered models (or of ``name``), newest first, with its aliases and the test
    figures its model card tagged it with: what a person chooses a champion from."""
    from datetime import datetime, timezone

    from medtl.model_card import tagged_auroc

    client = mlflow.MlflowClient(uri)
    if name is not None:
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MLflow raises RestException or MlflowException for a missing model
            raise TrackingError(f"no registered model {name!r} in {redact_uri(uri)}; `medtl models list` shows those "
                                "there are") from None
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model in names:
        aliases: dict[str, list[str]] = {}
        for alias, v in client.get_registered_model(model).aliases.items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model}'"):
            t = mv.tags
            key, auroc, low, high = tagged_auroc(t)
            rows.append({
                "model": model, "version": int(mv.version), "aliases": ", ".join(sorted(aliases.get(str(mv.version), []))),
                "test AUROC [95% CI]": _three(auroc) + (f" [{_three(low)}, {_three(high)}]" if auroc and high else "")
                + (" (macro)" if key == "test_auroc_macro" else ""),
                "ECE after T": _three(t.get("test_ece_calibrated")), "test Dice": _three(t.get("test_dice_mean")),
                "dataset": t.get("dataset_sha256", ""),
                "registered": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
            })
    table = pd.DataFrame(rows)
    return table.sort_values(["model", "version"], ascending=[True, False]) if len(table) else table


def _three(tag: str | None) -> str:
    return f"{float(tag):.3f}" if tag else ""


def load_registered_bundle(uri: str) -> ModelBundle:
    """``models:/NAME@ALIAS``, ``runs:/RUN/model`` or a local model folder → the medtl bundle inside.
    A model on a tracking server is downloaded to a temporary folder that goes once the bundle is in memory
    (MLflow's own download folder would stay behind, a model's size per scoring run)."""
    import tempfile

    store = mlflow.get_tracking_uri()
    if uri.startswith(("models:/", "runs:/")):
        from medtl.tracking_store import require_store

        require_store(store)  # seconds and a plain answer, not MLflow's retries, a truncated exception or a new empty store
    try:
        with tempfile.TemporaryDirectory(prefix="medtl-model-") as download:
            model = mlflow.pyfunc.load_model(uri, dst_path=download)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
        raise ModelError(f"{uri}: cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         "check the name, alias and MLFLOW_TRACKING_URI") from None
    bundle: ModelBundle = model.unwrap_python_model().bundle
    bundle.extra["model_uri"] = uri
    meta = model.metadata
    bundle.extra["run_id"] = meta.run_id
    if uri.startswith("models:/"):
        bundle.extra["model_name"], _, ref = uri.removeprefix("models:/").partition("@")
        try:
            mv = mlflow.MlflowClient().get_model_version_by_alias(bundle.extra["model_name"], ref) if ref else None
            bundle.extra["model_version"] = mv.version if mv else uri.rsplit("/", 1)[-1]
        except Exception:  # noqa: BLE001
            bundle.extra["model_version"] = ""
    return bundle
