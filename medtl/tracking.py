"""Everything MLflow: store checks, run lifecycle, params/tags/metrics/artifacts, dataset lineage, the PHI
guard, registration. Training and scoring see only the ``Tracker`` interface."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from medtl.config import TrackingConfig, redact_uri
from medtl.data.manifest import public_columns
from medtl.errors import TrackingError
from medtl.log import logger
from medtl.observe import Tracker
from medtl.tracking_store import access_refused, check_store, resolve_uri

import warnings


def scrub(value: Any) -> Any:
    """Absolute paths become relative to the working folder (or their file name): no path reveals a patient folder."""
    if isinstance(value, str) and value.startswith("/"):
        p = Path(value)
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return p.name
    return value


SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}
"""Manifest split → MLflow dataset context."""


class MlflowTracker(Tracker):
    """The Tracker interface on one MLflow run, addressed by its id.

    A tracking outage never stops the work it observes: the first failed call warns once, and every later
    call is written to ``offline_log`` (JSON lines) instead; ``medtl tracking sync RUN_FOLDER`` replays
    them into the same run once the server is back."""

    def __init__(self, run_id: str, offline_log: Path | None = None) -> None:
        import mlflow

        self.mlflow, self.run_id, self.offline_log = mlflow, run_id, offline_log
        self.client = mlflow.MlflowClient()
        self.offline = False
        self.datasets: dict[str, Any] = {}  # split → the mlflow Dataset metrics link to
        self.dataset_metrics: list[tuple[dict[str, float], int | None, int, str]] = []  # linked again to the model

    def _call(self, kind: str, fn: Any, *args: Any) -> None:
        if not self.offline:
            try:
                fn(*args)
                return
            except Exception as exc:  # noqa: BLE001 - MLflow and requests raise many types for an outage
                if _refused(exc):  # the store answered and said no: this call is lost, the run stays online
                    logger.warning("tracking store refused one %s call (%s): it is left out, the run goes on logging",
                                   kind, getattr(exc, "error_code", type(exc).__name__))
                    return
                self.offline = True
                where = f"kept in {self.offline_log}" if self.offline_log else "dropped (no run folder)"
                logger.warning("tracking unavailable (%s): the run goes on; what it logs is %s%s", type(exc).__name__, where,
                               f"; replay it with `medtl tracking sync {self.offline_log.parent}`" if self.offline_log else "")
        if self.offline_log is not None:
            self.offline_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.offline_log, "a") as fh:
                fh.write(json.dumps({"kind": kind, "args": [str(a) if isinstance(a, Path) else a for a in args]},
                                    default=str) + "\n")

    def end(self, status: str) -> None:
        """Closes the run. After an outage it stays KILLED (incomplete) until ``medtl tracking sync`` has sent the
        rest, and with it this status."""
        if self.offline:
            self._call("end", None, status)
        _end_run("KILLED" if self.offline else status)

    def log_params(self, params: dict[str, Any]) -> None:
        """MLflow params are write-once: on a continued run a key already logged keeps its first value (a
        change accepted by --resume-changed is in the run's config_changes.json)."""
        clean = {k: str(scrub(v))[:500] for k, v in params.items()}
        try:
            logged = self.client.get_run(self.run_id).data.params if not self.offline else {}
        except Exception:  # noqa: BLE001 - an outage shows at the logging call below
            logged = {}
        clean = {k: v for k, v in clean.items() if k not in logged}
        for start in range(0, len(clean), 90):
            self._call("params", lambda p: self.mlflow.log_params(p, run_id=self.run_id),
                       dict(list(clean.items())[start : start + 90]))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("tags", lambda t: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in t.items()]),
                   {k: str(scrub(v)) for k, v in tags.items() if v is not None})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, dataset: str | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and v == v and abs(v) != float("inf")}
        linked = self.datasets.get(dataset) if dataset else None
        stamp = int(time.time() * 1000)
        if finite:
            self._call("metrics", lambda m, s: self.mlflow.log_metrics(m, step=s, run_id=self.run_id, dataset=linked,
                                                                        timestamp=stamp), finite, step)
            if linked is not None:
                self.dataset_metrics.append((finite, step, stamp, dataset))  # type: ignore[arg-type]

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._call("artifact", lambda p, f: self.client.log_artifact(self.run_id, p, f), str(Path(path).resolve()), folder)

    def log_table(self, rows: Any, name: str) -> None:
        self._call("text", lambda t, n: self.client.log_text(self.run_id, t, n), json.dumps(rows, indent=1, default=str), name)

    def log_dataset(self, table: pd.DataFrame, source: Path, digest: str, subgroups: list[str]) -> None:
        """One MLflow dataset per split (only case_id, label, split and subgroups), with the manifest digest, and
        the counts per split and class. Lineage is worth a warning, never the training."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if self.offline:
            return
        try:
            public = [c for c in public_columns(subgroups) if c in table]
            inputs = []
            for split, context in SPLIT_CONTEXT.items():
                part = table.loc[table["split"] == split, public]
                if part.empty:
                    continue
                with warnings.catch_warnings():  # a bare file name is the point: no folder reaches the store
                    warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
                    ds = self.mlflow.data.from_pandas(part.reset_index(drop=True), source=source.name,
                                                      name=f"{source.stem}:{split}", digest=digest[:16])
                self.datasets[split] = ds
                inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
            self.client.log_inputs(self.run_id, inputs)
            counts = table.groupby(["split", "label"]).size() if "label" in table else table.groupby("split").size()
            self.client.log_dict(self.run_id, {" / ".join(map(str, k)) if isinstance(k, tuple) else str(k): int(v)
                                               for k, v in counts.items()}, "dataset_counts.json")
        except Exception as exc:  # noqa: BLE001
            logger.warning("dataset lineage not logged (%s)", type(exc).__name__)

    def log_model(self, bundle: Any, checkpoint: Path, name: str, epoch: int) -> str | None:
        from medtl.mlflow_model import log_pyfunc

        try:
            if self.offline:
                raise ConnectionError("tracking went offline during the run")
            uri, model_id = log_pyfunc(bundle, checkpoint, name, self.run_id, max(1, epoch))
            for metrics, step, stamp, split in self.dataset_metrics:  # the model's metrics, each with its split
                self.mlflow.log_metrics(metrics, step=step, run_id=self.run_id, timestamp=stamp, model_id=model_id,
                                        dataset=self.datasets[split])
            return uri
        except Exception as exc:  # noqa: BLE001 - an outage at the end must not cost the trained model
            logger.warning("model not logged or registered (%s: %s); %s holds everything needed to score",
                           type(exc).__name__, str(exc).splitlines()[0][:160] if str(exc) else "tracking unavailable", checkpoint)
            return None

    def register(self, model_uri: str, name: str, alias: str, card: str, tags: dict[str, Any],
                 gates: dict[str, float | None]) -> int | None:
        from medtl.mlflow_model import register

        try:
            return register(model_uri, name, alias, card, tags, gates)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("model not registered (%s: %s); it is logged at %s", type(exc).__name__,
                           str(exc).splitlines()[0][:160] if str(exc) else "tracking unavailable", model_uri)
            return None


RUN_RECORD = "mlflow_run.json"
OFFLINE_LOG = "tracking_offline.jsonl"


def _previous_run(run_folder: Path | None, uri: str) -> str | None:
    """The MLflow run a resumed training continues: the one its folder recorded, on the same store."""
    record = run_folder / RUN_RECORD if run_folder else None
    if record is None or not record.is_file():
        return None
    saved = json.loads(record.read_text())
    return saved["run_id"] if saved.get("uri") == redact_uri(uri) else None


def _refused(exc: Exception) -> bool:
    """A value the store will never take (a name with characters MLflow refuses, say), as opposed to a store
    that did not answer: queueing it for ``tracking sync`` would fail there the same way, forever."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "INVALID_PARAMETER_VALUE"


@contextmanager
def tracked_run(cfg: TrackingConfig, run_name: str, nested: bool = False, checkpoint_dir: Path | None = None,
                tags: dict[str, str] | None = None, resume: bool = False) -> Iterator[MlflowTracker]:
    """An MLflow run: checked store, FINISHED on success; FAILED with its last checkpoint logged on error.

    The run folder records the run id, so ``resume`` continues the same MLflow run: one record per
    training, however often it was interrupted."""
    import mlflow

    uri = resolve_uri(cfg)
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(cfg.experiment)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad store
        if refused := access_refused(exc, uri):
            raise TrackingError(refused) from None
        missing = f": the {exc.name} package it needs is not installed" if isinstance(exc, ModuleNotFoundError) else ""
        raise TrackingError(f"tracking store {redact_uri(uri)}: cannot open experiment {cfg.experiment!r} "
                            f"({type(exc).__name__}{missing})") from None
    folder = checkpoint_dir.parent if checkpoint_dir is not None else None
    previous = _previous_run(folder, uri) if resume else None
    if previous:
        run = mlflow.start_run(run_id=previous, nested=nested)
        logger.info("continuing MLflow run %s", previous)
    else:
        run = mlflow.start_run(run_name=run_name, nested=nested, tags=tags)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_RECORD).write_text(json.dumps({"run_id": run.info.run_id, "uri": redact_uri(uri)}))
    tracker = MlflowTracker(run.info.run_id, folder / OFFLINE_LOG if folder is not None else None)
    try:
        yield tracker
    except BaseException:
        if checkpoint_dir is not None and (checkpoint_dir / "last.pt").is_file():
            tracker.log_artifact(checkpoint_dir / "last.pt", "checkpoints")
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    if not nested:
        logger.info("dashboard: %s", dashboard_link(uri, run.info.experiment_id))


def dashboard_link(uri: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's training view (a fresh browser otherwise opens the GenAI view)."""
    view = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{redact_uri(uri).rstrip('/')}/{view}"
    import sys

    ui = Path(sys.executable).parent / "mlflow"
    return f"http://127.0.0.1:5000/{view}  (start it with: {ui} ui --backend-store-uri {uri})"


def _end_run(status: str) -> None:
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception:  # noqa: BLE001 - the server may be gone; the local results are what matter now
        logger.warning("could not close the MLflow run (tracking unavailable); its results are in the run folder")


def sync_offline(run_folder: Path) -> int:
    """Replays a run folder's offline tracking log into its MLflow run; returns the number of calls sent.

    A replay the server breaks off records how far it got, so the next one sends only the rest: no metric
    reaches the run twice."""
    import mlflow

    record, log = run_folder / RUN_RECORD, run_folder / OFFLINE_LOG
    if not record.is_file():
        raise TrackingError(f"{run_folder}: not a run folder (no {RUN_RECORD}); give the folder the run wrote its model.pt to")
    if not log.is_file():
        done = log.with_suffix(".synced.jsonl").is_file()
        raise TrackingError(f"{run_folder}: nothing to sync; " + (f"its {OFFLINE_LOG} was replayed already" if done else
                            "the run reached its tracking server throughout (no {OFFLINE_LOG})".format(OFFLINE_LOG=OFFLINE_LOG)))
    saved = json.loads(record.read_text())
    uri = _store_of(saved["uri"])
    check_store(uri)
    client = mlflow.MlflowClient(uri)
    calls = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    progress = log.with_suffix(".sent")
    start = int(progress.read_text()) if progress.is_file() else 0
    status = "FINISHED"
    for sent, call in enumerate(calls[start:], start):
        try:
            status = _replay(client, saved["run_id"], call["kind"], call["args"]) or status
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - an outage (MLflow raises many types), or Ctrl-C
            progress.write_text(str(sent))  # a rerun sends the rest, not every call again
            if isinstance(exc, KeyboardInterrupt):
                raise
            if refused := access_refused(exc, uri):
                raise TrackingError(f"{run_folder}: {refused}; then run `medtl tracking sync {run_folder}` "
                                    f"again to send the {len(calls) - sent} call(s) left") from None
            raise TrackingError(f"{run_folder}: the tracking server stopped answering after {sent} of {len(calls)} "
                                f"calls ({type(exc).__name__}); run `medtl tracking sync {run_folder}` again to send the rest") from None
    client.set_terminated(saved["run_id"], status)
    log.rename(log.with_suffix(".synced.jsonl"))
    progress.unlink(missing_ok=True)
    return len(calls) - start


def _store_of(recorded: str) -> str:
    """The store a run folder recorded; one whose credentials were masked is the configured store with them."""
    if "***@" not in recorded:
        return recorded
    uri = resolve_uri(TrackingConfig())
    if redact_uri(uri) != recorded:
        raise TrackingError(f"the run was tracked at {recorded}; set MLFLOW_TRACKING_URI to that store, with its "
                            "credentials, and sync again")
    return uri


def _replay(client: Any, run_id: str, kind: str, args: list[Any]) -> str | None:
    """Sends one logged call; returns the run's final status when the call is the run's end. A value the store
    refuses (see ``_refused``) is left out with a warning: it would be refused at every sync."""
    from functools import partial

    sends: list[Any] = []
    if kind == "metrics":
        sends = [partial(client.log_metric, run_id, key, value, step=args[1] or 0) for key, value in args[0].items()]
    elif kind == "params":
        sends = [partial(client.log_param, run_id, key, value) for key, value in args[0].items()]
    elif kind == "tags":
        sends = [partial(client.set_tag, run_id, key, value) for key, value in args[0].items()]
    elif kind == "artifact":
        sends = [partial(client.log_artifact, run_id, args[0], args[1])]
    elif kind == "text":
        sends = [partial(client.log_text, run_id, args[0], args[1])]
    elif kind == "end":
        return args[0]
    for send in sends:
        try:
            send()
        except Exception as exc:  # noqa: BLE001 - an outage propagates; a refusal does not
            if not _refused(exc):
                raise
            logger.warning("tracking store refused one logged %s value (%s); left out", kind, exc.error_code)
    return None
