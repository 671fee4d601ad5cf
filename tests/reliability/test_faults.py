"""Faults at chosen points: kill -9 then resume (one MLflow record, same config or a recorded change), a
tracking server that dies mid-training, a case that only shows its fault when read, a read-only folder."""

import json
import os
import signal
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medtl.data.synthetic import make_classification_set
from tests.conftest import medtl_exe, run_cli

pytestmark = pytest.mark.slow


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


def base(m, tmp_path, *extra):
    return sets(f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]",
                f"train.out_dir={tmp_path / 'runs'}", "train.epochs=3", "train.batch_size=8", "model.pretrained=none",
                "transfer.strategy=scratch", "train.early_stopping_patience=null", "evaluate.bootstrap=20", "evaluate.figures=false",
                "evaluate.gradcam=0", *extra)


def killed_after_epoch_1(*args, cwd):
    env = {**os.environ, "MEDTL_PROGRESS": "0", "MEDTL_FAULT": "after_epoch:1"}
    res = subprocess.run([medtl_exe(), *args], env=env, cwd=cwd, capture_output=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]


def test_resume_after_kill9_continues_the_same_mlflow_run_and_a_changed_config_only_when_asked(tmp_path):
    """One kill -9 after epoch 1 (a real process), then: a changed config is refused, --resume-changed
    continues and records the change, the MLflow run is the same one, and a finished run is never
    overwritten."""
    from mlflow import MlflowClient

    m = make_classification_set(tmp_path / "d", n=20, kind="png", size=(16, 16), split=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "diagnosis", *base(m, tmp_path, f"tracking.uri={uri}", "name=r")]
    killed_after_epoch_1(*args, cwd=tmp_path)
    run = tmp_path / "runs" / "r"
    first_config = (run / "config.yaml").read_text()
    changed = [*args, "--set", "train.lr=0.01"]
    refused = run_cli(*changed, "--resume", cwd=tmp_path)
    assert refused.returncode == 2 and "train.lr" in refused.stderr and "--resume-changed" in refused.stderr
    assert (run / "config.yaml").read_text() == first_config
    res = run_cli(*changed, "--resume-changed", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    record = json.loads((run / "config_changes.json").read_text())
    assert record[0]["after_epoch"] == 1 and record[0]["changes"]["train.lr"][1] == 0.01
    assert (run / "config.until_epoch1.yaml").read_text() == first_config
    assert "lr: 0.01" in (run / "config.yaml").read_text()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medtl").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2, 3]
    assert "test_auroc" in runs[0].data.metrics
    assert runs[0].data.params["train.lr"] != "0.01"  # MLflow params are write-once: the change is its own record
    assert "config_changes.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    again = run_cli(*changed, cwd=tmp_path)  # a finished run is never silently overwritten
    assert again.returncode == 2 and "--resume" in again.stderr


def test_a_tracking_server_that_dies_mid_training_costs_nothing(tmp_path, mlflow_server_process, monkeypatch):
    import medtl.train.loop as loop

    uri, server = mlflow_server_process

    def server_dies(name: str, count: int) -> None:
        if (name, count) == ("after_epoch", 1):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    monkeypatch.setattr(loop, "fault_point", server_dies)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    m = make_classification_set(tmp_path / "d", n=20, kind="png", size=(16, 16), split=True)
    res = run_cli("run", "diagnosis", *base(m, tmp_path, f"tracking.uri={uri}", "name=t"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tracking unavailable" in res.stderr
    run = tmp_path / "runs" / "t"
    assert json.loads((run / "train_summary.json").read_text())["epochs_completed"] == 3
    assert (run / "model.pt").is_file() and (run / "evaluation_test" / "metrics.json").is_file()
    kept = [json.loads(line) for line in (run / "tracking_offline.jsonl").read_text().splitlines()]
    steps = [c["args"][1] for c in kept if c["kind"] == "metrics" and "val_loss" in c["args"][0]]
    assert steps == [2, 3]  # epoch 1 reached the server; the rest waits in the run folder
    assert kept[-1] == {"kind": "end", "args": ["FINISHED"]}  # what sync closes the run with


def test_skip_bad_cases_also_skips_a_case_found_bad_at_load_time(tmp_path):
    m = make_classification_set(tmp_path / "d", n=20, kind="nifti", size=(16, 16, 4), split=True)
    table = pd.read_csv(m, dtype=str)
    bad = table[table["split"] == "train"]["case_id"].iloc[0]
    path = m.parent / table.set_index("case_id").loc[bad, "image"]
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[2, 2, 2] = np.nan  # headers are fine: only reading the voxels shows it
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    args = ["train", *sets(f"data.manifest={m}", "data.classes=[normal,lesion]", "data.spatial_dims=3",
                          "data.image_size=[16,16,8]", "model.backbone=resnet10", "model.pretrained=none",
                          "transfer.strategy=scratch", "train.epochs=1", f"train.out_dir={tmp_path / 'runs'}")]
    refused = run_cli(*args, "--set", "name=strict")
    assert refused.returncode == 2 and bad in refused.stderr and "or set data.skip_bad_cases=true" in refused.stderr
    res = run_cli(*args, "--set", "name=lenient", "--set", "data.skip_bad_cases=true")
    assert res.returncode == 0, res.stderr
    assert bad in res.stderr
    assert bad in json.loads((tmp_path / "runs" / "lenient" / "train_summary.json").read_text())["skipped_cases"]


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    m = make_classification_set(tmp_path / "d", n=20, kind="png", size=(16, 16), split=True)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should go")  # unwritable even for root, unlike chmod
    res = run_cli("train", *base(m, tmp_path, f"train.out_dir={blocker}"))
    assert res.returncode == 2 and "unexpected error" not in res.stderr and "not_a_folder" in res.stderr
    assert "a file is where a folder should go" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def offline_run(tmp_path, calls):
    """A run folder whose tracking went offline after its MLflow run was made: (client, run, folder)."""
    from mlflow import MlflowClient

    from medtl.tracking import OFFLINE_LOG, RUN_RECORD

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_RECORD).write_text(json.dumps({"run_id": run.info.run_id, "uri": uri}))
    (folder / OFFLINE_LOG).write_text("".join(json.dumps(c) + "\n" for c in calls))
    return client, run, folder


def test_offline_tracking_is_replayed_into_the_same_run(tmp_path):
    calls = [{"kind": "metrics", "args": [{"val_loss": 0.5}, 2]}, {"kind": "params", "args": [{"train.lr": "0.1"}]},
             {"kind": "tags", "args": [{"note": "offline"}]}]
    client, run, folder = offline_run(tmp_path, calls)
    res = run_cli("tracking", "sync", str(folder))
    assert res.returncode == 0 and "3 logged call(s)" in res.stdout, res.stderr
    got = client.get_run(run.info.run_id)
    assert [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, "val_loss")] == [(2, 0.5)]
    assert got.data.params["train.lr"] == "0.1" and got.data.tags["note"] == "offline" and got.info.status == "FINISHED"
    again = run_cli("tracking", "sync", str(folder))
    assert again.returncode == 2 and "replayed already" in again.stderr  # replayed once, never twice


def test_a_logged_value_the_store_refuses_is_left_out_of_the_replay_not_retried_forever(tmp_path):
    calls = [{"kind": "metrics", "args": [{"site (north)_auroc": 0.7, "auroc": 0.9}, 0]}]
    client, run, folder = offline_run(tmp_path, calls)
    res = run_cli("tracking", "sync", str(folder))
    assert res.returncode == 0 and "refused one logged metrics value" in res.stderr, res.stderr
    assert client.get_run(run.info.run_id).data.metrics == {"auroc": 0.9}


def test_a_replay_the_server_breaks_off_sends_the_rest_once_and_the_runs_own_status(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from medtl.errors import TrackingError
    from medtl.tracking import sync_offline

    calls = [{"kind": "metrics", "args": [{"loss": float(step)}, step]} for step in range(4)]
    calls.append({"kind": "end", "args": ["FAILED"]})  # the training itself failed while the server was away
    client, run, folder = offline_run(tmp_path, calls)
    real, sent = MlflowClient.log_metric, []

    def flaky(self, run_id, key, value, step=0, **kw):
        if len(sent) == 2:
            raise ConnectionError("server went away")
        sent.append(step)
        return real(self, run_id, key, value, step=step, **kw)

    monkeypatch.setattr(MlflowClient, "log_metric", flaky)
    with pytest.raises(TrackingError, match="after 2 of 5 calls.*again to send the rest"):
        sync_offline(folder)
    monkeypatch.setattr(MlflowClient, "log_metric", real)
    assert sync_offline(folder) == 3
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2, 3]
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_a_replay_the_server_refuses_access_to_says_which_variables_give_the_account(tmp_path, monkeypatch):
    """A token that expired while the run was offline: 'stopped answering ... run it again' could never succeed."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    calls = [{"kind": "metrics", "args": [{"loss": float(step)}, step]} for step in range(4)]
    client, run, folder = offline_run(tmp_path, calls)
    real, sent = MlflowClient.log_metric, []

    def refused(self, run_id, key, value, step=0, **kw):
        if len(sent) == 2:  # MLflow's words for a 401 (rest_utils.http_request)
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-metric failed with error code 401 "
                                  "!= 200. Response body: '<html><h1>401 Authorization Required</h1></html>'")
        sent.append(step)
        return real(self, run_id, key, value, step=step, **kw)

    monkeypatch.setattr(MlflowClient, "log_metric", refused)
    res = run_cli("tracking", "sync", str(folder))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert res.returncode == 2 and res.stderr.strip() == (
        f"error: {folder}: tracking server {uri} refused access (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account it accepts; then run `medtl tracking sync "
        f"{folder}` again to send the 2 call(s) left"), res.stderr
    monkeypatch.setattr(MlflowClient, "log_metric", real)
    assert run_cli("tracking", "sync", str(folder)).returncode == 0
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2, 3]


def test_a_replay_interrupted_by_ctrl_c_sends_only_the_rest_when_run_again(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    calls = [{"kind": "metrics", "args": [{"loss": float(step)}, step]} for step in range(4)]
    client, run, folder = offline_run(tmp_path, calls)
    real, sent = MlflowClient.log_metric, []

    def interrupted(self, run_id, key, value, step=0, **kw):
        if len(sent) == 2:
            raise KeyboardInterrupt
        sent.append(step)
        return real(self, run_id, key, value, step=step, **kw)

    monkeypatch.setattr(MlflowClient, "log_metric", interrupted)
    res = run_cli("tracking", "sync", str(folder))
    assert res.returncode == 130 and "interrupted: the calls sent so far are recorded" in res.stderr, res.stderr
    monkeypatch.setattr(MlflowClient, "log_metric", real)
    res = run_cli("tracking", "sync", str(folder))
    assert res.returncode == 0 and "2 logged call(s)" in res.stdout, res.stdout + res.stderr
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2, 3]  # each step once


def test_a_second_process_on_the_same_run_folder_or_predictions_file_stops_in_one_line(tmp_path):
    """Two trainings of one name (a SLURM array given one config, say) wrote into one folder at once, and two
    scorings into one file each scored what the other was scoring."""
    import fcntl
    import subprocess
    import sys

    m = make_classification_set(tmp_path / "d", n=20, kind="png", size=(16, 16), split=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (  # holds each lock as a running medtl would
        "import fcntl, sys, time\n"
        f"a = open({str(runs / '.t.lock')!r}, 'a'); fcntl.flock(a, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_cli("train", *base(m, tmp_path, "name=t"), cwd=tmp_path)
        assert res.returncode == 2 and "is being written by another medtl process" in res.stderr, res.stderr
        assert "--set name=" in res.stderr and not (runs / "t").exists()
    finally:
        holder.kill()
        holder.wait()
    res = run_cli("train", *base(m, tmp_path, "name=t"), cwd=tmp_path)  # the holder's end drops its locks
    assert res.returncode == 0, res.stderr
    with open(tmp_path / ".p.csv.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # now this process is the other writer
        res = run_cli("score", "--model", str(runs / "t"), "--manifest", str(m), "--out", str(tmp_path / "p.csv"), "--no-track")
    assert res.returncode == 2 and "p.csv is being written by another medtl process" in res.stderr, res.stderr
    assert not (tmp_path / "p.csv").exists()
