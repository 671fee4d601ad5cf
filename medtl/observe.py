"""The tracker interface training and scoring report to. Training never imports MLflow: it calls these
methods; ``medtl.tracking`` implements them with MLflow, ``NullTracker`` does nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """Observer of a run: parameters, per-step metrics, final metrics, files, tags."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def log_table(self, rows: Any, name: str) -> None: ...


class NullTracker(Tracker):
    """Used when tracking is off, in tests of the loop, and on DDP ranks other than 0."""
