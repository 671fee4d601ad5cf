"""Archive-scale scoring on Apache Spark: the registered pyfunc model through ``mlflow.pyfunc.spark_udf``,
partitioned by case, written as Parquet. The guarantees of ``medtl score`` hold: a broken case is an error
row and the job goes on; the cases go in chunks, each one Spark job that commits whole, so a rerun after a
crash skips what was written (by ``case_id``) and writes nothing twice; every row names the model.

The engine's own configuration applies: ``--spark-master`` (default ``local[*]``) or whatever
``spark-submit`` and ``SPARK_*`` set. Executors read the scans themselves, so the paths must be on storage
every executor sees, under ``--data-root`` (the only folder the served model opens)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from medtl.errors import MedtlError
from medtl.faults import fault_point
from medtl.log import logger


@dataclass
class SparkSummary:
    out: Path
    scored: int
    skipped_existing: int
    errors: int
    cases_per_s: float


def _model_identity(model_uri: str) -> tuple[dict[str, str], str]:
    """Model name, version and run id for the rows, and the output schema: the model's signature (the columns its
    pyfunc returns, typicality included where it has one), or the class names of a model logged without one."""
    import tempfile

    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:  # get_model_info would leave the MLmodel file in the temp folder
        try:
            info = Model.load(mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/MLmodel", dst_path=tmp)).get_model_info()
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model or store
            raise MedtlError(f"--model {model_uri}: no MLflow model there ({type(exc).__name__}); --engine spark scores a "
                             "registered or logged model: models:/NAME@ALIAS, runs:/RUN_ID/model or a folder with an MLmodel file") from None
    outputs = info.signature.outputs.inputs if info.signature is not None and info.signature.outputs else None
    schema = ", ".join(f"{c.name} {c.type.name}" for c in outputs) if outputs else ", ".join(
        [*(f"prob_{c} double" for c in (info.metadata or {}).get("classes", [])), "predicted string", "status string",
         "error string"])
    name, version = "", ""
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri.removeprefix("models:/").partition("@")
        client = mlflow.MlflowClient()
        version = str(client.get_model_version_by_alias(name, ref).version) if ref else model_uri.rsplit("/", 1)[-1]
    return {"model_name": name, "model_version": version, "run_id": info.run_id or ""}, schema


def _check_master(master: str, timeout: float = 5.0) -> None:
    """A standalone master (``spark://host:port[,host:port]``) that no one answers is one line now, not a minute of
    Java retries and a Py4J stack trace."""
    import socket

    if not master.startswith("spark://"):
        return
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            return
        except (OSError, ValueError):
            continue
    raise MedtlError(f"--spark-master {master}: no Spark master answers there; start it (sbin/start-master.sh), fix "
                     "the address, or score on this machine with --spark-master 'local[*]'")


def done_in(out: Path, spark) -> set[str]:
    """Case ids already in the Parquet output (every committed chunk)."""
    if not out.exists() or not any(out.glob("*.parquet")):
        return set()
    return {r.case_id for r in spark.read.parquet(str(out)).select("case_id").distinct().collect()}


def score_spark(model_uri: str, manifest: Path, out: Path, master: str = "local[*]", data_root: Path | None = None,
                chunk: int = 1000) -> SparkSummary:
    """Scores every case of ``manifest`` not yet in ``out`` (a Parquet folder) on Spark."""
    try:
        import mlflow.pyfunc
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F
    except ImportError:
        raise MedtlError("--engine spark needs pyspark (pip install pyspark) and a Java runtime") from None
    import logging
    import sys
    import warnings

    from medtl.data.manifest import read_manifest, scan_cases  # not medtl.scoring: the driver never reads a scan

    cases = scan_cases(read_manifest(manifest).table)
    root = Path(data_root or manifest.parent).resolve()
    os.environ["MEDTL_DATA_ROOT"] = str(root)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # this environment's Python unless the cluster says otherwise
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)  # env_manager="local" is the choice: executors share it
    identity, schema = _model_identity(model_uri)
    master = os.environ.get("MASTER", master)
    _check_master(master)
    spark = (SparkSession.builder.master(master).appName("medtl-score")
             .config("spark.executorEnv.MEDTL_DATA_ROOT", str(root)).config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(max(2, os.cpu_count() or 2)))  # not 200 tiny tasks
             .config("spark.python.daemon.module", "medtl.spark_daemon")
             .config("spark.locality.wait", "0s").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    done = done_in(out, spark)
    todo = [c for c in cases if c["case_id"] not in done]
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=schema, env_manager="local")
    start, errors = time.perf_counter(), 0
    for i in range(0, len(todo), chunk):
        part = pd.DataFrame(todo[i : i + chunk])
        df = spark.createDataFrame(part).repartition(max(1, spark.sparkContext.defaultParallelism), "case_id")
        scored = df.withColumn("p", udf(F.col("image"), F.col("view"))).select("case_id", "image", "p.*")
        for key, value in {**identity, "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}.items():
            scored = scored.withColumn(key, F.lit(value))
        scored.write.mode("append").parquet(str(out))  # one job: the chunk is committed whole or not at all
        fault_point("after_chunks", i // chunk + 1)
        logger.info("scored cases %d-%d of %d", i + 1, min(i + chunk, len(todo)), len(todo))
    rate = len(todo) / max(1e-9, time.perf_counter() - start)
    if out.exists() and any(out.glob("*.parquet")):
        errors = spark.read.parquet(str(out)).filter(F.col("status") == "error").count()
    return SparkSummary(out, len(todo), len(done), errors, rate)
