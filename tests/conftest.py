"""Shared fixtures: quiet logs, no progress bars, no network, a private MEDTL_HOME and MLflow store per test,
and the ``medtl`` command run in-process (``run_cli``) or, where a real process is the point, as one."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MEDTL_PROGRESS", "0")
os.environ.setdefault("MEDTL_LOG_LEVEL", "WARNING")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share two cores: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("medtl_home")
    monkeypatch.setenv("MEDTL_HOME", str(home))
    monkeypatch.setenv("MEDTL_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDTL_FAULT", raising=False)
    yield
    if "mlflow" in sys.modules:  # MLflow keeps the URI and the active run in globals: leave none behind
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


_TEMPLATE: list[Path] = []
MLFLOW_MODULES = {"test_pipelines", "test_faults", "test_fit", "test_tracking", "test_hostile_inputs"}


def seed_mlflow_store(path: Path) -> str:
    """Puts an empty, already-migrated MLflow SQLite store at ``path`` and returns its URI: creating one runs
    MLflow's schema migrations (~3 s of CPU), so each test process does it once and copies it."""
    if not _TEMPLATE:
        import tempfile

        from mlflow import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="medtl-mlflow-template-")) / "mlflow.db"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)  # one per test process, not left in /tmp
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _TEMPLATE.append(template)
    if not path.exists():
        shutil.copyfile(_TEMPLATE[0], path)
    return f"sqlite:///{path}"


@pytest.fixture(autouse=True)
def _mlflow_store(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Tests of modules that track get ``tmp_path / 'mlflow.db'`` ready-made (the URI they name)."""
    if request.module.__name__.rsplit(".", 1)[-1] in MLFLOW_MODULES:
        seed_mlflow_store(tmp_path / "mlflow.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def medtl_exe() -> str:
    exe = shutil.which("medtl", path=str(Path(sys.executable).parent)) or shutil.which("medtl")
    assert exe, "the medtl console script is not installed (pip install -e .)"
    return exe


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Runs ``medtl ARGS`` in this process, exactly as the console script does (``medtl.cli.main``): same
    argument parsing, same one-line errors and exit codes, with stdout and stderr captured."""
    from medtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    os.environ.update({"MEDTL_PROGRESS": "0", **(env or {})})
    sys.argv = ["medtl", *map(str, args)]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught error (--debug)
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the installed ``medtl`` script in a real subprocess (kill -9, a fresh interpreter)."""
    full_env = {**os.environ, "MEDTL_PROGRESS": "0", **(env or {})}
    return subprocess.run([medtl_exe(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def mlflow_server_process(tmp_path):
    """A real ``mlflow server`` on a free loopback port: (uri, process); stopped after the test."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    seed_mlflow_store(store / "mlflow.db")  # already migrated: the server starts seconds sooner
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers competing for 2 cores
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture()
def mlflow_server(mlflow_server_process):
    return mlflow_server_process[0]


@pytest.fixture(scope="session")
def registered_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A barely trained 2-D classifier registered as ``tiny-archive@candidate`` (with a typicality density), and a
    manifest of 24 of its films (enough for a batch's prevalence) plus a broken and a missing one: what the
    archive-scale engines score."""
    import numpy as np
    import pandas as pd

    from medtl.data.synthetic import make_classification_set

    tmp = tmp_path_factory.mktemp("archive")
    m = make_classification_set(tmp / "d", n=220, kind="png", size=(16, 16))
    table = pd.read_csv(m, dtype=str)  # 99 training and 99 validation cases: enough to measure typicality
    table["patient_id"] = table["case_id"]
    table["split"] = np.select([np.arange(220) % 20 < 9, np.arange(220) % 20 < 18], ["train", "val"], "test")
    table.to_csv(m, index=False)
    uri = seed_mlflow_store(tmp / "mlflow.db")
    sets = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]", "train.epochs=1",
            "model.pretrained=none", "transfer.strategy=scratch", "evaluate.bootstrap=10", "evaluate.gradcam=0",
            "evaluate.figures=false", f"train.out_dir={tmp / 'runs'}", f"tracking.uri={uri}",
            "tracking.registered_model=tiny-archive", "tracking.gate_min_auroc_ci_low=null", "tracking.gate_max_ece=null"]
    res = run_cli("run", "diagnosis", *[x for s in sets for x in ("--set", s)], cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    cases = pd.read_csv(m, dtype=str)[["case_id", "image"]].head(24)
    (m.parent / "broken.png").write_bytes(b"not a png at all")
    cases = pd.concat([cases, pd.DataFrame({"case_id": ["broken", "gone"], "image": ["broken.png", "nowhere.png"]})])
    cases.to_csv(m.parent / "to_score.csv", index=False)
    return uri, m.parent / "to_score.csv"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, as a hospital's own CA signs its servers', and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def says_what_local_scoring_says(engine: CliResult | subprocess.CompletedProcess, local: CliResult, rows,
                                  figure: Path) -> None:
    """An archive engine's closing lines say of all its rows what ``medtl score`` says of the same cases: the prevalence
    their scores imply (with the scores' figure), and the cases unlike the training scans among its rows. The barely
    trained model squeezes its probabilities around the threshold, where rounding in another thread count's kernels
    flips calls and may move a typicality by one rank, so the calls and the cases named are checked against the
    engine's own rows: each call on the threshold's side of its probability, and the share called as said."""
    import re

    from medtl.typicality import unlike_training_cases

    def prevalence(stdout: str) -> list[str]:
        return [re.sub(r"called in \d+%", "called in N%", re.sub(r" \([^()]*scores\.png\)$", "", line))
                for line in stdout.splitlines() if " called in " in line]

    assert prevalence(engine.stdout) == prevalence(local.stdout) and len(prevalence(local.stdout)) == 1, (
        engine.stdout, local.stdout)
    ok = rows[rows["status"] == "ok"]
    called = ok["predicted"] == "lesion"
    if called.any() and (~called).any():
        assert ok.loc[called, "prob_lesion"].min() >= ok.loc[~called, "prob_lesion"].max()
    assert f"lesion called in {called.mean():.0%} of the {len(ok)} cases scored" in engine.stdout, engine.stdout
    assert unlike_training_cases(rows.reset_index()).message() in engine.stdout and figure.stat().st_size > 0


HEAVY_FIRST = ("test_spark.py", "test_ray.py", "test_two_nodes_log_once", "test_training_run_is_fully_tracked", "test_packaging.py",
               "test_label_efficiency", "test_resume_after_kill9")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest end-to-end tests start first, so on two workers they overlap the many short ones."""
    def rank(item: pytest.Item) -> int:
        return next((i for i, key in enumerate(HEAVY_FIRST) if key in item.nodeid), len(HEAVY_FIRST))

    items.sort(key=rank)
