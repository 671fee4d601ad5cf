"""Archive-scale scoring on Apache Spark: the registered pyfunc model through ``mlflow.pyfunc.spark_udf``,
partitioned by case, written as Parquet. The guarantees of ``medtl score`` hold: a broken case is an error
row and the job goes on; the cases go in chunks, each one Spark job that commits whole, so a rerun after a
crash skips what was written (by ``case_id``) and writes nothing twice; every row names the model.

The engine's own configuration applies: ``--spark-master`` (default ``local[*]``) or whatever
``spark-submit`` and ``SPARK_*`` set. Executors read the scans themselves, so the paths must be on storage
every executor sees, under ``--data-root`` (the only folder the served model opens)."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from medtl.archive_output import ArchiveSummary, done_in, error_rows, model_identity, what_the_rows_say
from medtl.errors import MedtlError
from medtl.faults import fault_point
from medtl.host import has_passwd_entry, usable_cpus
from medtl.log import logger


MASTER_FORMS = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|k8s|mesos)://\S+")
"""The master URLs Spark takes; anything else the JVM refuses after seconds, as a Py4J or gateway exception."""


def _check_master(master: str, timeout: float = 5.0, named: str = "--spark-master") -> None:
    """A master URL Spark would refuse, or a standalone master (``spark://host:port[,host:port]``) that no one answers,
    is one line now, not a minute of Java retries and a Py4J stack trace."""
    import socket

    where = f"{named}={master}" if named == "MASTER" else f"{named} {master}"
    if not MASTER_FORMS.fullmatch(master):
        raise MedtlError(f"{where}: not a Spark master URL; give local[*] (this machine), local[N], "
                         "spark://HOST:7077, yarn or k8s://HOST:PORT")
    if not master.startswith("spark://"):
        return
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            return
        except (OSError, ValueError):
            continue
    raise MedtlError(f"{where}: no Spark master answers there; start it (sbin/start-master.sh), fix "
                     "the address, or score on this machine with --spark-master 'local[*]'")


def score_spark(model_uri: str, manifest: Path, out: Path, master: str = "local[*]", data_root: Path | None = None,
                chunk: int = 1000) -> ArchiveSummary:
    """Scores every case of ``manifest`` not yet in ``out`` (a Parquet folder) on Spark."""
    try:
        import mlflow.pyfunc
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F
    except ImportError:
        raise MedtlError("--engine spark needs pyspark (pip install pyspark) and a Java runtime") from None
    if not has_passwd_entry():
        raise MedtlError(f"--engine spark: this user (UID {os.getuid()}) has no entry in /etc/passwd, and Spark's JVM "
                         "cannot log in without one; add one (as Spark's own container images do), or score with "
                         "--engine ray or local")
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
    done = done_in(out, "spark")
    identity = model_identity(model_uri, "spark")
    named = "MASTER" if os.environ.get("MASTER") else "--spark-master"  # spark-submit's MASTER wins, as Spark's does
    master = os.environ.get("MASTER") or master
    _check_master(master, named=named)
    spark = (SparkSession.builder.master(master).appName("medtl-score")
             .config("spark.executorEnv.MEDTL_DATA_ROOT", str(root)).config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(max(2, usable_cpus())))  # not 200 tiny tasks
             .config("spark.python.daemon.module", "medtl.spark_daemon")
             .config("spark.locality.wait", "0s").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    todo = [c for c in cases if c["case_id"] not in done]
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=identity.spark_schema(), env_manager="local")
    start = time.perf_counter()
    for i in range(0, len(todo), chunk):
        part = pd.DataFrame(todo[i : i + chunk])
        df = spark.createDataFrame(part).repartition(max(1, spark.sparkContext.defaultParallelism), "case_id")
        scored = df.withColumn("p", udf(F.col("image"), F.col("view"))).select("case_id", "image", "p.*")
        for key, value in {**identity.tags, "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}.items():
            scored = scored.withColumn(key, F.lit(value))
        scored.write.mode("append").parquet(str(out))  # one job: the chunk is committed whole or not at all
        fault_point("after_chunks", i // chunk + 1)
        logger.info("scored cases %d-%d of %d", i + 1, min(i + chunk, len(todo)), len(todo))
    rate = len(todo) / max(1e-9, time.perf_counter() - start)
    return ArchiveSummary(out, len(todo), len(done), error_rows(out), rate, what_the_rows_say(model_uri, out))
