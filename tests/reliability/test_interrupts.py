"""Ctrl-C: each long command says what it kept and how to go on, exits 130, and the way it names works; typer
used to exit 130 without a word, and a pipeline that cannot resume was told to rerun with --resume."""

import pytest

import medtl.scoring
import medtl.train.loop
from medtl.data.synthetic import make_classification_set
from tests.conftest import run_cli, seed_mlflow_store


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


def ctrl_c_at(monkeypatch, module, point: str, count: int) -> None:
    """A KeyboardInterrupt where the fault point ``point`` is reached for the ``count``-th time."""
    def interrupt(name: str, n: int) -> None:
        if name == point and n == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "fault_point", interrupt)


@pytest.fixture()
def tiny(tmp_path):
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16))
    return sets(f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]", "train.epochs=2",
                "train.batch_size=8", "model.pretrained=none", "transfer.strategy=scratch", f"train.out_dir={tmp_path / 'runs'}",
                "tracking.enabled=false", "evaluate.bootstrap=0", "evaluate.figures=false", "evaluate.gradcam=0",
                "evaluate.typicality=false")


@pytest.mark.slow
def test_an_interrupted_training_says_resume_and_resume_finishes_it(tiny, tmp_path, monkeypatch):
    ctrl_c_at(monkeypatch, medtl.train.loop, "after_epoch", 1)
    res = run_cli("run", "diagnosis", *tiny)
    assert res.returncode == 130, res.stderr
    assert "interrupted: the last completed epoch is saved; rerun the same command with --resume" in res.stderr
    assert res.stderr.strip().count("\n") == 0, res.stderr
    monkeypatch.undo()
    res = run_cli("run", "diagnosis", *tiny, "--resume")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "medtl" / "model.pt").is_file()


def test_a_training_interrupted_before_its_first_checkpoint_says_to_start_again(tiny, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medtl.train.loop, "train_one_epoch", interrupted)
    res = run_cli("train", *tiny)
    assert res.returncode == 130, res.stderr
    assert "interrupted in epoch 1, before its checkpoint: nothing of this training to resume; run it again without " \
           "--resume" in res.stderr
    monkeypatch.undo()
    assert run_cli("train", *tiny).returncode == 0  # the folder it left is no run to refuse


def test_an_interrupted_study_that_cannot_resume_says_so_and_its_rerun_does_not_ask_for_resume(tiny, monkeypatch):
    ctrl_c_at(monkeypatch, medtl.train.loop, "after_epoch", 1)
    res = run_cli("run", "compare", *tiny)
    assert res.returncode == 130 and "interrupted: compare does not resume" in res.stderr, res.stderr
    assert "--set name=NEW" in res.stderr and "--resume" not in res.stderr
    monkeypatch.undo()
    res = run_cli("run", "compare", *tiny)
    assert res.returncode == 2 and "already holds a run of an earlier compare, which does not resume" in res.stderr
    assert "--resume" not in res.stderr  # `run compare --resume` is refused: it was the advice before


@pytest.mark.slow
def test_an_interrupted_scoring_keeps_its_rows_and_the_rerun_scores_the_rest(tiny, tmp_path, monkeypatch):
    assert run_cli("train", *tiny).returncode == 0
    model = tmp_path / "runs" / "medtl" / "model.pt"
    images = tmp_path / "d" / "images"
    out = tmp_path / "p.csv"
    ctrl_c_at(monkeypatch, medtl.scoring, "after_rows", 3)
    res = run_cli("score", "--model", str(model), "--input", str(images), "--out", str(out), "--no-track")
    assert res.returncode == 130, res.stderr
    assert "interrupted: every case scored so far is kept; rerun the same command to score the rest" in res.stderr
    monkeypatch.undo()
    res = run_cli("score", "--model", str(model), "--input", str(images), "--out", str(out), "--no-track")
    assert res.returncode == 0 and "21 scored now, 3 already there" in res.stdout, res.stdout + res.stderr


def test_a_ctrl_c_no_command_catches_still_says_interrupted(tmp_path, monkeypatch):
    import medtl.config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medtl.config, "load_config", interrupted)
    res = run_cli("config", "show")
    assert res.returncode == 130 and res.stderr.strip() == "error: interrupted", res.stderr


@pytest.mark.slow
def test_sigterm_stops_a_training_as_ctrl_c_does_and_closes_its_mlflow_run(tiny, tmp_path):
    """A scheduler's time limit sends SIGTERM: it ended the process on the spot, and the MLflow run stayed RUNNING."""
    import sqlite3
    import threading

    store = tmp_path / "mlflow.db"
    args = [*tiny, "--set", "tracking.enabled=true", "--set", f"tracking.uri={seed_mlflow_store(store)}"]
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a signal is handled in the main thread only, and this test sends one to its own process")
    res = run_cli("run", "diagnosis", *args, env={"MEDTL_FAULT": "after_epoch:1:TERM"})  # a real SIGTERM, to itself
    assert res.returncode == 143, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == ("error: terminated (SIGTERM): the last completed epoch is saved; rerun "
                                                   "the same command with --resume")
    with sqlite3.connect(store) as db:
        assert db.execute("select status from runs").fetchall() == [("FAILED",)]
    res = run_cli("run", "diagnosis", *args, "--resume")
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(store) as db:
        assert db.execute("select status from runs").fetchall() == [("FINISHED",)]  # the same run, continued
