"""Scoring on a real Ray started on this machine: the same rows as ``medtl score``, broken cases as error rows, and a
job killed between chunks loses nothing and writes nothing twice when rerun."""

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.archive_output import commit_chunk, done_in, error_rows
from tests.conftest import run_cli, run_cli_process, says_what_local_scoring_says

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_rows_equal_medtl_score_and_a_kill_between_chunks_costs_nothing(registered_classifier, tmp_path):
    uri, manifest = registered_classifier
    env = {"MLFLOW_TRACKING_URI": uri}
    local = run_cli("score", "--model", "models:/tiny-archive@candidate", "--manifest", str(manifest), "--out",
                    str(tmp_path / "local.csv"), "--no-track", env=env)
    assert local.returncode == 1  # two broken cases
    out = tmp_path / "ray.parquet"
    args = ["score", "--model", "models:/tiny-archive@candidate", "--manifest", str(manifest), "--out", str(out),
            "--engine", "ray", "--chunk", "13", "--batch-size", "4"]
    killed = run_cli_process(*args, env={**env, "MEDTL_FAULT": "after_chunks:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(pd.read_parquet(out)) == 13  # one committed chunk survived
    (tmp_path / "not_a_folder").write_text("")  # and a home it cannot write (a container's HOME=/): Ray keeps a token there
    rerun = run_cli_process(*args, env={**env, "HOME": str(tmp_path / "not_a_folder")})
    assert rerun.returncode == 1 and "13 already there" in rerun.stdout, rerun.stderr[-2000:]
    assert rerun.stderr.count("\n") <= 1, rerun.stderr  # medtl's progress line at most: none of Ray's own logging
    rows = pd.read_parquet(out).set_index("case_id").sort_index()
    want = pd.read_csv(tmp_path / "local.csv", dtype={"case_id": str}, keep_default_na=False).set_index("case_id").sort_index()
    assert list(rows.index) == list(want.index) and not rows.index.duplicated().any()
    for column in ("prob_lesion", "typicality"):  # typicality: one rank among 99 validation cases, as for Spark
        np.testing.assert_allclose(rows[column].fillna(-1), want[column].replace("", np.nan).astype(float).fillna(-1),
                                   atol=1e-6 if column == "prob_lesion" else 1 / 100 + 1e-9)
    assert (rows["status"] == want["status"]).all()
    assert rows.loc["broken", "status"] == "error" and rows.loc["gone", "status"] == "error"
    says_what_local_scoring_says(rerun, local, rows, tmp_path / "ray.scores.png")
    assert (Path(os.environ["MEDTL_HOME"]) / ".ray").is_dir()  # the home medtl gave it
    assert (rows["model_name"] == "tiny-archive").all() and (rows["model_version"] == "1").all()
    assert rows["run_id"].str.len().min() > 0 and rows["scored_at"].str.len().min() > 0


def test_a_chunk_being_written_is_not_read_as_committed(tmp_path):
    """A chunk is written aside and renamed: a crash in the middle leaves a hidden file no rerun counts."""
    import pyarrow as pa

    out = tmp_path / "p.parquet"
    commit_chunk(pa.table({"case_id": ["a", "b"], "status": ["ok", "error"]}), out)
    (out / ".part-x.parquet.writing").write_bytes(b"PAR1 half a file")
    assert done_in(out, "ray") == {"a", "b"} and error_rows(out) == 1
    assert done_in(tmp_path / "nothing_yet", "ray") == set() and error_rows(tmp_path / "nothing_yet") == 0


def test_a_ray_cluster_no_one_answers_is_one_line_not_a_minute_of_retries(tmp_path):
    from tests.conftest import free_port

    dead = free_port()
    (tmp_path / "m.csv").write_text("case_id,image\na,a.png\n")
    for address in (f"127.0.0.1:{dead}", f"ray://127.0.0.1:{dead}"):
        res = run_cli("score", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--out",
                      str(tmp_path / "p.parquet"), "--engine", "ray", "--ray-address", address)
        assert res.returncode == 2 and f"--ray-address {address}: no Ray cluster answers there" in res.stderr, res.stderr
        assert res.stderr.strip().count("\n") == 0
    res = run_cli("score", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.parquet"), "--engine", "ray", env={"RAY_ADDRESS": f"127.0.0.1:{dead}"})
    assert res.returncode == 2 and f"RAY_ADDRESS=127.0.0.1:{dead}: no Ray cluster answers there" in res.stderr, res.stderr


@pytest.mark.parametrize("engine", ["spark", "ray"])
def test_an_output_of_the_other_kind_is_one_line_before_any_engine_starts(tmp_path, engine):
    """The local engine writes one file, Spark and Ray a folder of chunks: each named where the other is, they used
    to fail on a mkdir deep inside, as an unexpected error."""
    (tmp_path / "m.csv").write_text("case_id,image\na,a.png\n")
    (tmp_path / "p.parquet").write_bytes(b"PAR1 the local engine's file")
    res = run_cli("score", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.parquet"), "--engine", engine)
    assert res.returncode == 2 and f"a file, where the {engine} engine writes a folder of Parquet chunks" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    folder = tmp_path / "chunks.parquet"
    folder.mkdir()
    res = run_cli("score", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(folder), "--no-track")
    assert res.returncode == 2 and "a folder (an --engine spark or ray output?)" in res.stderr, res.stderr


def test_the_pool_takes_a_gpu_per_worker_where_the_cluster_has_them_else_four_cores(monkeypatch):
    from medtl.errors import MedtlError
    from medtl.ray_scoring import _pool

    def cluster(**resources):
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)

    cluster(CPU=32.0, GPU=4.0)
    assert _pool(None, None, False) == (4, {"num_gpus": 1.0, "num_cpus": 1.0})
    assert _pool(None, 0.5, False) == (8, {"num_gpus": 0.5, "num_cpus": 1.0})  # two models share each GPU
    assert _pool(2, None, False) == (2, {"num_gpus": 1.0, "num_cpus": 1.0})
    assert _pool(None, 0.0, False) == (8, {"num_cpus": 4.0})  # GPUs there, CPUs asked for
    cluster(CPU=16.0)
    assert _pool(None, None, False) == (4, {"num_cpus": 4.0})
    assert _pool(8, None, False) == (8, {"num_cpus": 2.0})  # more actors, fewer threads each
    assert _pool(None, 1.0, False) == (1, {"num_gpus": 1.0, "num_cpus": 1.0})  # a cluster may start GPU nodes
    cluster(CPU=2.0)
    assert _pool(None, None, True) == (1, {"num_cpus": 2.0})  # this machine: one worker on both cores
    assert _pool(3, None, True) == (3, {"num_cpus": 1.0})
    with pytest.raises(MedtlError, match=r"--ray-gpus 1: this machine has 0 GPU\(s\)"):
        _pool(None, 1.0, True)  # a Ray started here would wait for a GPU for ever


@pytest.mark.parametrize("engine", ["spark", "ray"])
def test_a_segmentation_model_is_sent_to_the_local_engine_in_one_line(tmp_path, engine):
    """Its pyfunc gives a status per case and no mask, and not the predicted column its signature names, which the
    archive engines write: at best rows that say nothing of the segmentation."""
    from mlflow.models import Model

    model = tmp_path / "seg_model"
    model.mkdir()
    Model(metadata={"task": "segmentation", "classes": ["background", "lesion"]}).save(str(model / "MLmodel"))
    (tmp_path / "m.csv").write_text("case_id,image\na,a.nii.gz\n")
    res = run_cli("score", "--model", str(model), "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.parquet"), "--engine", engine)
    assert res.returncode == 2 and f"a segmentation model; --engine {engine} writes a row of probabilities" in res.stderr
    assert "--engine local --masks-out" in res.stderr and res.stderr.strip().count("\n") == 0
