"""The tracker interface training, evaluation, registration and scoring report to. No stage imports MLflow
or asks which tracker it holds: it calls these methods; ``medtl.tracking.MlflowTracker`` implements them on
one MLflow run (by id, never MLflow's global active run), ``NullTracker`` does nothing and answers None."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """Observer of a run: parameters, tags, metrics, files, the data it saw, the model it made."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, dataset: str | None = None) -> None:
        """``dataset`` names a split logged with ``log_dataset`` ("train", "val", "test"): the metrics are
        linked to it."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def log_table(self, rows: Any, name: str) -> None: ...

    def log_dataset(self, table: Any, source: Path, digest: str, subgroups: list[str]) -> None:
        """The manifest's public columns per split, with the manifest digest: what the run was trained and
        tested on, without a path or a column that could identify a patient."""

    def log_model(self, bundle: Any, checkpoint: Path, name: str, epoch: int) -> str | None:
        """The servable model under ``name`` (trained for ``epoch`` epochs), linked to the run's metrics on
        each split; returns its URI (None: not kept)."""
        return None

    def register(self, model_uri: str, name: str, alias: str, card: str, tags: dict[str, Any],
                 gates: dict[str, float | None]) -> int | None:
        """A registry version with its model card, tags and promotion gates; returns the version (None: none)."""
        return None


class NullTracker(Tracker):
    """Used when tracking is off, in tests of the loop, and on DDP ranks other than 0."""
