"""Scoring on a real local Spark (local[2]): the same rows as ``medtl score``, broken cases as error rows,
and a job killed between chunks loses nothing and writes nothing twice when rerun."""

import os
import shutil
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.conftest import medtl_exe, run_cli, says_what_local_scoring_says

pyspark = pytest.importorskip("pyspark")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (make install brings one as root)")]


def test_spark_rows_equal_medtl_score_and_a_kill_between_chunks_costs_nothing(registered_classifier, tmp_path):
    uri, manifest = registered_classifier
    # the JVMs of a few-second job: client compiler and serial GC halve their start-up CPU on 2 shared cores
    env = {"MLFLOW_TRACKING_URI": uri, "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}
    local = run_cli("score", "--model", "models:/tiny-archive@candidate", "--manifest", str(manifest), "--out",
                    str(tmp_path / "local.csv"), "--no-track", env=env)
    assert local.returncode == 1  # two broken cases
    out = tmp_path / "spark.parquet"
    args = ["score", "--model", "models:/tiny-archive@candidate", "--manifest", str(manifest), "--out", str(out),
            "--engine", "spark", "--spark-chunk", "13"]
    killed = subprocess.run([medtl_exe(), *args, "--spark-master", "local[1]"], env={**os.environ, **env, "MEDTL_PROGRESS": "0",
                                                       "MEDTL_FAULT": "after_chunks:1"}, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(pd.read_parquet(out)) == 13  # one committed chunk survived
    rerun = run_cli(*args, "--spark-master", "local[2]", env=env)
    assert rerun.returncode == 1 and "13 already there" in rerun.stdout, rerun.stderr[-2000:]
    spark = pd.read_parquet(out).set_index("case_id").sort_index()
    want = pd.read_csv(tmp_path / "local.csv", dtype={"case_id": str}, keep_default_na=False).set_index("case_id").sort_index()
    assert list(spark.index) == list(want.index) and not spark.index.duplicated().any()
    np.testing.assert_allclose(spark["prob_lesion"].fillna(-1), want["prob_lesion"].replace("", np.nan).astype(float).fillna(-1),
                               atol=1e-6)
    assert (spark["status"] == want["status"]).all()
    # the model's signature gives Spark the columns scoring writes. An executor's one thread picks other float32
    # kernels than this process's two, and a density over 288 features amplifies that rounding: a case's rank among
    # the 99 validation cases may move by one, 0.01 in p-value, on this barely trained model
    typical = want["typicality"].replace("", np.nan).astype(float)
    np.testing.assert_allclose(spark["typicality"].fillna(-1), typical.fillna(-1), atol=1 / 100 + 1e-9)
    ok = spark[spark["status"] == "ok"]
    assert len(ok) == 24 and ok["typicality"].notna().all()
    assert (ok["unlike_training"] == np.where(ok["typicality"] <= 0.01, "yes", "no")).all()
    assert spark.loc["broken", "status"] == "error" and spark.loc["gone", "status"] == "error"
    says_what_local_scoring_says(rerun, local, spark, tmp_path / "spark.scores.png")
    assert (spark["model_name"] == "tiny-archive").all() and (spark["model_version"] == "1").all() and spark["run_id"].str.len().min() > 0


def test_a_standalone_master_no_one_answers_is_one_line_not_a_minute_of_java_retries():
    import socket

    from medtl.errors import MedtlError
    from medtl.spark_scoring import _check_master
    from tests.conftest import free_port

    dead = free_port()
    with pytest.raises(MedtlError, match=rf"--spark-master spark://127.0.0.1:{dead}: no Spark master answers there"):
        _check_master(f"spark://127.0.0.1:{dead}", timeout=2)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        alive = listening.getsockname()[1]
        _check_master(f"spark://127.0.0.1:{dead},127.0.0.1:{alive}", timeout=2)  # one master of a pair answers: go on
    _check_master("local[2]")  # nothing to reach


@pytest.mark.parametrize("master", ["nonsense", "local[x]", "local[2", "spark//host:7077", "local[*] "])
def test_a_master_url_spark_would_refuse_is_one_line_before_any_jvm_starts(master):
    """Spark refuses these after starting its JVM, as a gateway or Py4J error that medtl printed as unexpected."""
    from medtl.errors import MedtlError
    from medtl.spark_scoring import _check_master

    with pytest.raises(MedtlError, match=r"^MASTER=.*: not a Spark master URL; give local\[\*\] \(this machine\)"):
        _check_master(master, named="MASTER")
    for good in ("local", "local[*]", "local[4]", "local[4,2]", "local-cluster[2,1,1024]", "yarn", "k8s://https://k:443"):
        _check_master(good)
