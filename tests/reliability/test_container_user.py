"""What a container lacks. Its arbitrary user (OpenShift, ``docker run --user``) has no passwd entry and a home it
cannot write: training ended in ``unexpected error: KeyError: 'getpwuid(): uid not found'`` (MLflow asks for the
login name), Ray could not start, and matplotlib warned on every command. Its 64 MB of /dev/shm, where a data loader's
workers put their batches, ended a GPU training in a screen of torch errors."""

import getpass
import logging
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile

import pytest
import torch

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
    assert set(caplog.messages) == {f"HOME={tmp_path / 'not_a_folder'} cannot be written: MLflow, matplotlib, Ray, "
                                    f"medtl's weights cache and its pseudonym key keep their files in {no_passwd_entry}; "
                                    "set MEDTL_HOME to a folder that lasts to keep them"}
    assert getpass.getuser() == f"uid{os.getuid()}" and os.environ["HOME"] == str(no_passwd_entry)
    assert stat.S_IMODE(no_passwd_entry.stat().st_mode) == 0o700
    assert settle_user_and_home() is None  # the home it gave is usable: nothing more to do


def test_medtl_home_serves_as_the_home_where_it_is_set(no_passwd_entry, tmp_path, monkeypatch):
    """A volume mounted there outlasts the container: the weights cache and what the libraries keep, together."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDTL_HOME", "volume/medtl")  # relative, as typed: the home is where it is now
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


def test_loader_workers_are_as_many_as_the_job_has_cores_and_shared_memory_holds_batches_for(monkeypatch, caplog):
    import medtl.host
    from medtl.train.runtime import batch_bytes, default_workers

    cuda = torch.device("cuda")
    batch = batch_bytes(16, 3, [224, 224])
    assert batch == 16 * 3 * 224 * 224 * 4 and batch_bytes(2, 1, [96, 96, 96], masks=True) == 2 * 2 * 96**3 * 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(medtl.host, "shared_memory_free", lambda: 64 * 2**20)  # docker's default
    monkeypatch.setattr(medtl.host, "_SAID", set())
    logging.getLogger("medtl").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="medtl"):
            assert default_workers(cuda, "auto", batch) == 64 * 2**20 // (3 * batch) == 2  # not 8
            assert default_workers(cuda, 4, batch) == 2  # asked for, and still more than it holds
            assert default_workers(cuda, "auto", batch) == 2
    finally:
        logging.getLogger("medtl").removeHandler(caplog.handler)
    said = [f"/dev/shm has 64 MB free (a container gets 64 MB): 2 data-loading worker(s) instead of {n}, which would "
            "run out of it; start the container with --shm-size=8g or --ipc=host for them" for n in (8, 4)]
    assert set(caplog.messages) == set(said)
    assert caplog.messages.count(said[0]) == caplog.messages.count(said[1])  # once each, not once per loader
    assert default_workers(torch.device("cpu"), "auto", batch) == 0
    monkeypatch.setattr(medtl.host, "shared_memory_free", lambda: 16 * 2**30)  # --ipc=host
    assert default_workers(cuda, "auto", batch) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert default_workers(cuda, "auto", batch) == 3  # a batch job's 4 cores (SLURM pins them), not the node's 64
    monkeypatch.setattr(medtl.host, "shared_memory_free", lambda: None)  # nothing to measure: as asked
    assert default_workers(cuda, 3, batch) == 3


def _small_shared_memory() -> bool:
    """Whether this process may give a child a private /dev/shm of its own size (root, Linux, util-linux)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=512k tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("capped", [True, False])
def test_a_container_with_little_shared_memory_trains_or_says_what_to_raise(tmp_path, capped):
    """512 kB of /dev/shm and two loader workers: medtl loads in the main process and says why; where the workers
    run anyway (a batch larger than its estimate), the torch error that filled a screen is one line."""
    if not _small_shared_memory():
        pytest.skip("no private /dev/shm can be mounted here (needs root and unshare)")
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16))
    sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[128,128]", "data.num_workers=2",
            "train.epochs=1", "train.batch_size=16", "model.pretrained=none", "transfer.strategy=scratch",
            f"train.out_dir={tmp_path / 'runs'}", "tracking.enabled=false"]
    patch = "" if capped else "import medtl.train.runtime as r; r.workers_shared_memory_holds = lambda w, b: w; "
    code = f"import sys; {patch}from medtl.cli import main; sys.argv = {['medtl', 'train', *[x for s in sets for x in ('--set', s)]]!r}; main()"
    res = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=512k tmpfs /dev/shm && exec "$0" -c "$1"',
                          sys.executable, code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MEDTL_PROGRESS": "0", "MEDTL_LOG_LEVEL": "WARNING", "COLUMNS": "400"})
    if capped:
        assert res.returncode == 0, res.stderr[-2000:]
        assert ("/dev/shm has 512 kB free (a container gets 64 MB): 0 data-loading worker(s) instead of 2, which would run "
                "out of it; start the container with --shm-size=8g or --ipc=host for them") in res.stderr
        assert (tmp_path / "runs" / "medtl" / "model.pt").is_file()
    else:
        assert res.returncode == 1, res.stderr[-2000:]
        assert re.fullmatch(
            r"error: the data loader's workers ran out of shared memory \(/dev/shm has \d+ kB free\): start the container "
            r"with --shm-size=8g or --ipc=host, or load the data in the main process \(data.num_workers=0\); then rerun "
            r"the same command \(a training that completed an epoch continues with --resume\)", res.stderr.strip()), res.stderr


@pytest.mark.slow
def test_a_gpu_out_of_memory_is_one_line_that_says_what_to_lower_and_the_run_resumes(tmp_path, monkeypatch):
    """torch's paragraph (with its allocator settings) was printed as an unexpected error to report."""
    import medtl.train.loop

    def out_of_memory(name: str, n: int) -> None:
        if name == "after_epoch" and n == 1:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.25 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB "
                "is free. Including non-PyTorch memory, this process has 78.12 GiB memory in use. If reserved but "
                "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
                "fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html"
                "#environment-variables)")  # torch 2.13's words

    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16))
    store = tmp_path / "mlflow.db"
    sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]", "train.epochs=2",
            "model.pretrained=none", "transfer.strategy=scratch", f"train.out_dir={tmp_path / 'runs'}",
            f"tracking.uri={seed_mlflow_store(store)}", "evaluate.bootstrap=0", "evaluate.figures=false",
            "evaluate.gradcam=0", "evaluate.typicality=false"]
    args = ["run", "diagnosis", *[x for s in sets for x in ("--set", s)]]
    monkeypatch.setattr(medtl.train.loop, "fault_point", out_of_memory)
    res = run_cli(*args)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "error: the GPU ran out of memory (it asked for 2.25 GiB more, of 79.19 GiB): use smaller batches "
        "(train.batch_size, with train.grad_accum to keep their effect; score --batch-size) or inputs (data.image_size, "
        "train.patch_size), or keep the training split off the GPU (train.data_on_device=false); then rerun the same "
        "command (a training that completed an epoch continues with --resume)")
    with sqlite3.connect(store) as db:
        assert db.execute("select status from runs").fetchall() == [("FAILED",)]
    monkeypatch.setattr(medtl.train.loop, "fault_point", lambda name, n: None)
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(store) as db:
        assert db.execute("select status from runs").fetchall() == [("FINISHED",)]
