"""Shared fixtures: quiet logs, no progress bars, no network, a private MEDTL_HOME and MLflow store per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MEDTL_PROGRESS", "0")
os.environ.setdefault("MEDTL_LOG_LEVEL", "WARNING")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("medtl_home")
    monkeypatch.setenv("MEDTL_HOME", str(home))
    monkeypatch.setenv("MEDTL_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def medtl_exe() -> str:
    exe = shutil.which("medtl", path=str(Path(sys.executable).parent)) or shutil.which("medtl")
    assert exe, "the medtl console script is not installed (pip install -e .)"
    return exe


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600):
    """Runs the installed ``medtl`` script in a real subprocess."""
    full_env = {**os.environ, "MEDTL_PROGRESS": "0", **(env or {})}
    return subprocess.run(
        [medtl_exe(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
