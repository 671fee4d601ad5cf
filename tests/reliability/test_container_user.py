"""A container's arbitrary user (OpenShift, ``docker run --user``): a UID with no passwd entry and a home it cannot
write. Training ended in ``unexpected error: KeyError: 'getpwuid(): uid not found'`` (MLflow asks for the login
name), Ray could not start, and matplotlib warned on every command."""

import getpass
import logging
import os
import pwd
import sqlite3
import stat
import tempfile

import pytest

from medtl.data.synthetic import make_classification_set
from medtl.host import settle_user_and_home
from tests.conftest import run_cli, seed_mlflow_store

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="UIDs are a POSIX notion")


@pytest.fixture()
def no_passwd_entry(monkeypatch, tmp_path):
    """This UID as such a container has it: no login name anywhere, and HOME a path that cannot hold a folder."""
    def missing(uid: int):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", missing)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "not_a_folder").write_text("HOME=/ for a UID that cannot write /")
    monkeypatch.setenv("HOME", str(tmp_path / "not_a_folder"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp" / f"medtl-home-{os.getuid()}"


def test_a_user_with_no_name_and_no_home_gets_both(no_passwd_entry, monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("MEDTL_HOME")
    with pytest.raises(KeyError):
        getpass.getuser()
    logging.getLogger("medtl").addHandler(caplog.handler)  # medtl's logger does not propagate once the CLI has run
    try:
        with caplog.at_level(logging.INFO, logger="medtl"):
            assert settle_user_and_home() == str(no_passwd_entry)
    finally:
        logging.getLogger("medtl").removeHandler(caplog.handler)
    assert set(caplog.messages) == {f"HOME={tmp_path / 'not_a_folder'} cannot be written: MLflow, matplotlib, Ray and "
                                    f"medtl's weights cache keep their files in {no_passwd_entry}; set MEDTL_HOME to a "
                                    "folder that lasts to keep them"}
    assert getpass.getuser() == f"uid{os.getuid()}" and os.environ["HOME"] == str(no_passwd_entry)
    assert stat.S_IMODE(no_passwd_entry.stat().st_mode) == 0o700
    assert settle_user_and_home() is None  # the home it gave is usable: nothing more to do


def test_medtl_home_serves_as_the_home_where_it_is_set(no_passwd_entry, tmp_path, monkeypatch):
    """A volume mounted there outlasts the container: the weights cache and what the libraries keep, together."""
    monkeypatch.setenv("MEDTL_HOME", str(tmp_path / "volume" / "medtl"))
    assert settle_user_and_home() == str(tmp_path / "volume" / "medtl") == os.environ["HOME"]
    assert (tmp_path / "volume" / "medtl").is_dir() and not no_passwd_entry.exists()


def test_a_home_name_someone_else_planted_is_not_taken(no_passwd_entry, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDTL_HOME")
    (tmp_path / "elsewhere").mkdir()
    no_passwd_entry.symlink_to(tmp_path / "elsewhere")  # another user of a shared /tmp got there first
    home = settle_user_and_home()
    assert home is not None and home != str(no_passwd_entry) and os.path.isdir(home)
    assert not os.path.islink(home) and stat.S_IMODE(os.stat(home).st_mode) == 0o700


@pytest.mark.slow
def test_such_a_user_trains_tracks_and_promotes(no_passwd_entry, tmp_path):
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16))
    uri = seed_mlflow_store(tmp_path / "mlflow.db")
    sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]", "train.epochs=1",
            "model.pretrained=none", "transfer.strategy=scratch", f"train.out_dir={tmp_path / 'runs'}",
            f"tracking.uri={uri}", "tracking.registered_model=tiny", "tracking.gate_min_auroc_ci_low=0.999",
            "evaluate.bootstrap=10", "evaluate.figures=false", "evaluate.gradcam=0", "evaluate.typicality=false"]
    res = run_cli("run", "diagnosis", *[x for s in sets for x in ("--set", s)])
    assert res.returncode == 0, res.stderr[-2000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        users = {user for (user,) in db.execute("select value from tags where key = 'mlflow.user'")}
    assert users == {f"uid{os.getuid()}"}
    res = run_cli("models", "promote", "tiny", "1", "champion", "--force", env={"MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 0 and "forced past" in res.stdout, res.stderr
    assert not (tmp_path / "not_a_folder").is_dir()  # nothing tried to make the unusable home a folder


def test_spark_is_refused_in_one_line_before_its_jvm_fails_to_log_in(no_passwd_entry, tmp_path):
    pytest.importorskip("pyspark")
    (tmp_path / "m.csv").write_text("case_id,image\na,a.png\n")
    res = run_cli("score", "--model", str(tmp_path / "model"), "--manifest", str(tmp_path / "m.csv"), "--out",
                  str(tmp_path / "p.parquet"), "--engine", "spark")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: --engine spark: this user (UID {os.getuid()}) has no entry in /etc/passwd, "
                                  "and Spark's JVM cannot log in without one; add one (as Spark's own container images "
                                  "do), or score with --engine ray or local")
