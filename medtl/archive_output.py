"""What the archive-scale engines (Spark, Ray) share: the registered model's identity and output columns, which
every row carries, and the Parquet folder they append to in chunks that commit whole, so a rerun resumes from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from medtl.errors import MedtlError


@dataclass
class ArchiveSummary:
    out: Path
    scored: int
    skipped_existing: int
    errors: int
    cases_per_s: float
    said: list[str] = field(default_factory=list)
    """What every row the folder holds says of the site, as ``medtl score`` says it of its batch."""

    def message(self) -> str:
        return "\n".join([f"{self.out}: {self.scored} scored now, {self.skipped_existing} already there, "
                          f"{self.errors} error row(s), {self.cases_per_s:.1f} cases/s", *self.said])


@dataclass(frozen=True)
class ModelIdentity:
    """Model name, version and run id, stamped on every row, and the (name, type) of each column the pyfunc
    returns: its signature's (typicality included where it has one), or the class names of a model logged without one."""

    tags: dict[str, str]
    columns: list[tuple[str, str]]

    def spark_schema(self) -> str:
        return ", ".join(f"{name} {kind}" for name, kind in self.columns)

    def arrow_schema(self):
        import pyarrow as pa

        kinds = {"double": pa.float64(), "float": pa.float32(), "string": pa.string(), "long": pa.int64(),
                 "integer": pa.int32(), "boolean": pa.bool_()}
        return pa.schema([(name, kinds[kind]) for name, kind in self.columns])


def model_identity(model_uri: str, engine: str) -> ModelIdentity:
    """Reads the model's MLmodel file alone (not its weights) for the identity and columns of its rows."""
    import tempfile

    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:  # get_model_info would leave the MLmodel file in the temp folder
        try:
            info = Model.load(mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/MLmodel", dst_path=tmp)).get_model_info()
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model or store
            raise MedtlError(f"--model {model_uri}: no MLflow model there ({type(exc).__name__}); --engine {engine} scores a "
                             "registered or logged model: models:/NAME@ALIAS, runs:/RUN_ID/model or a folder with an MLmodel file") from None
    if (info.metadata or {}).get("task") == "segmentation":
        raise MedtlError(f"--model {model_uri}: a segmentation model; --engine {engine} writes a row of probabilities per "
                         "case and no mask, so score it with --engine local --masks-out")
    outputs = info.signature.outputs.inputs if info.signature is not None and info.signature.outputs else None
    columns = [(c.name, c.type.name) for c in outputs] if outputs else [
        *((f"prob_{c}", "double") for c in (info.metadata or {}).get("classes", [])),
        ("predicted", "string"), ("status", "string"), ("error", "string")]
    name, version = "", ""
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri.removeprefix("models:/").partition("@")
        client = mlflow.MlflowClient()
        version = str(client.get_model_version_by_alias(name, ref).version) if ref else model_uri.rsplit("/", 1)[-1]
    return ModelIdentity({"model_name": name, "model_version": version, "run_id": info.run_id or ""}, columns)


def done_in(out: Path, engine: str) -> set[str]:
    """Case ids already in the Parquet folder ``out`` (every committed chunk, whichever engine wrote it; Spark's
    _SUCCESS and .crc files, and a chunk still being written, start with _ or . and are not read)."""
    import pyarrow.dataset as ds

    if out.exists() and not out.is_dir():  # the local engine's predictions, say: not a folder to add chunks to
        raise MedtlError(f"--out {out}: a file, where the {engine} engine writes a folder of Parquet chunks; name a "
                         f"folder that is not there yet, or one an earlier --engine spark or ray run wrote")
    if not out.exists() or not any(out.glob("*.parquet")):
        return set()
    return set(ds.dataset(str(out), format="parquet").to_table(columns=["case_id"]).column("case_id").to_pylist())


def error_rows(out: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not out.exists() or not any(out.glob("*.parquet")):
        return 0
    status = ds.dataset(str(out), format="parquet").to_table(columns=["status"]).column("status")
    return int(pc.sum(pc.equal(status, "error")).as_py() or 0)


def commit_chunk(table, out: Path) -> Path:
    """Writes one chunk's rows as a Parquet file that appears whole or not at all (written aside, then renamed)."""
    import os
    import uuid

    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    final = out / f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    aside = out / f".{final.name}.writing"
    pq.write_table(table, aside)
    os.replace(aside, final)
    return final


def what_the_rows_say(model_uri: str, out: Path) -> list[str]:
    """The prevalence the scores imply (with the scores' figure beside the folder) and the cases unlike the training
    scans, read from every row ``out`` holds: at archive scale, the first sign that the archive is another site."""
    import pyarrow.dataset as ds

    from medtl.batch_prevalence import batch_prevalence, scores_plot
    from medtl.mlflow_model import load_registered_bundle
    from medtl.typicality import unlike_training_cases

    if not out.is_dir() or not any(out.glob("*.parquet")):
        return []
    rows = ds.dataset(str(out), format="parquet")
    wanted = [c for c in rows.schema.names
              if c in ("case_id", "status", "predicted", "typicality", "unlike_training") or c.startswith("prob_")]
    table = rows.to_table(columns=wanted).to_pandas()
    said = []
    bundle = load_registered_bundle(model_uri)
    batch = batch_prevalence(bundle, table)
    if batch is not None:
        said.append(f"{batch.message()} ({scores_plot(bundle, table, batch, out.with_name(f'{out.stem}.scores.png'))})")
    unlike = unlike_training_cases(table)
    if unlike is not None:
        said.append(unlike.message())
    return said
