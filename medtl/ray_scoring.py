"""Archive-scale scoring on Ray, for a team that runs Ray rather than Spark: the registered pyfunc model on a pool of
Ray Data actors (``map_batches``), one per GPU where the cluster has GPUs, rows written as Parquet. The guarantees
of the Spark engine hold: a broken case is an error row and the job goes on; the cases go in chunks, each committed
whole as one Parquet file, so a rerun after a crash skips what was written (by ``case_id``) and writes nothing
twice; every row names the model.

The driver fetches the model once and hands it to the actors through Ray's object store, so workers need no access
to the tracking server. They read the scans themselves: the paths must be on storage every node sees, under
``--data-root`` (the only folder the served model opens)."""

from __future__ import annotations

import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from medtl.archive_output import (ArchiveSummary, ModelIdentity, commit_chunk, done_in, error_rows, model_identity,
                                  what_the_rows_say)
from medtl.errors import MedtlError
from medtl.faults import fault_point
from medtl.log import logger, make_progress

CPUS_PER_CPU_WORKER = 4
"""Threads of one actor that scores on CPUs: torch gains little from more on one model's small batches."""


class PyfuncScorer:
    """One Ray actor: the registered model, loaded once from the bytes the driver put in the object store."""

    def __init__(self, model_zip: list, data_root: str, threads: int) -> None:
        import io
        import logging
        import tempfile
        import zipfile

        import mlflow.pyfunc
        import ray
        import torch

        model_zip = ray.get(model_zip[0])  # a reference in a list: Ray keeps the bytes once, in its object store
        os.environ["MEDTL_DATA_ROOT"] = data_root
        torch.set_num_threads(max(1, threads))
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        self._folder = tempfile.TemporaryDirectory(prefix="medtl-ray-model-")
        zipfile.ZipFile(io.BytesIO(model_zip)).extractall(self._folder.name)
        self.model = mlflow.pyfunc.load_model(self._folder.name)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = self.model.predict(batch[["image", "view"]].reset_index(drop=True))
        return pd.concat([batch[["case_id", "image"]].reset_index(drop=True), rows], axis=1)


def _starts_here(address: str | None) -> bool:
    """Whether the job starts its own Ray on this machine: ``local``, or no address and no ``RAY_ADDRESS``."""
    return address == "local" or (not address and not os.environ.get("RAY_ADDRESS"))


def _check_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address no one answers is one line now, not Ray's minute of retries."""
    import socket

    named = f"--ray-address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    address = address or os.environ.get("RAY_ADDRESS")
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        raise MedtlError(f"{named}: no Ray cluster answers there; start it (ray start --head), fix the address, or "
                         "score on a Ray started on this machine with --ray-address local") from None


def _model_zip(model_uri: str) -> bytes:
    """The model folder as one zip, fetched once by the driver."""
    import io
    import tempfile
    import zipfile

    import mlflow

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="medtl-model-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
            for f in folder.rglob("*"):
                if f.is_file():
                    zf.write(f, f.relative_to(folder))
    return buffer.getvalue()


def _start_ray(address: str | None, root: Path) -> None:
    import logging

    import ray
    import ray.data

    kwargs = {"address": "local", "include_dashboard": False} if _starts_here(address) else {"address": address or None}
    ray.init(**kwargs, logging_level=logging.ERROR, log_to_driver=False, configure_logging=True,
             runtime_env={"env_vars": {"MEDTL_DATA_ROOT": str(root)}})
    # after `import ray.data`, which configures it; a failed job is medtl's one line, Ray's traces stay in its session logs
    logging.getLogger("ray.data").setLevel(logging.DEBUG if logger.getEffectiveLevel() <= logging.DEBUG else logging.CRITICAL)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # medtl's own bar counts cases
    context.print_on_execution_start = False


def _pool(workers: int | None, gpus_per_worker: float | None, started_here: bool) -> tuple[int, dict[str, float]]:
    """How many actors, and what each asks of Ray: a GPU each where the cluster has them, else a few CPU cores (fewer
    where more actors are asked for than the cores allow four). A cluster may grow to what is asked (an autoscaler);
    a Ray started here cannot, and GPUs it lacks would be waited for for ever."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus else 0.0
    if gpus_per_worker > gpus and started_here:
        raise MedtlError(f"--ray-gpus {gpus_per_worker:g}: this machine has {gpus:g} GPU(s); ask for fewer, 0 to score "
                         "on CPUs, or name a cluster that has them (--ray-address)")
    if gpus_per_worker:
        return workers or max(1, int(gpus // gpus_per_worker)), {"num_gpus": gpus_per_worker, "num_cpus": 1.0}
    n = workers or max(1, int(cpus // min(CPUS_PER_CPU_WORKER, cpus)))
    return n, {"num_cpus": float(max(1, min(CPUS_PER_CPU_WORKER, int(cpus // n))))}


def score_ray(model_uri: str, manifest: Path, out: Path, address: str | None = None, data_root: Path | None = None,
              chunk: int = 1000, batch_size: int = 16, workers: int | None = None,
              gpus_per_worker: float | None = None) -> ArchiveSummary:
    """Scores every case of ``manifest`` not yet in ``out`` (a Parquet folder) on Ray."""
    try:
        import ray
    except ImportError:
        raise MedtlError("--engine ray needs Ray Data: pip install 'medtl[ray]'") from None
    from medtl.data.manifest import read_manifest, scan_cases  # not medtl.scoring: the driver never reads a scan

    cases = scan_cases(read_manifest(manifest).table)
    root = Path(data_root or manifest.parent).resolve()
    _check_address(address)
    done = done_in(out, "ray")
    identity = model_identity(model_uri, "ray")
    todo = [c for c in cases if c["case_id"] not in done]
    if not todo:
        return ArchiveSummary(out, 0, len(done), error_rows(out), 0.0, what_the_rows_say(model_uri, out))
    model = _model_zip(model_uri)
    _start_ray(address, root)
    try:
        n, resources = _pool(workers, gpus_per_worker, _starts_here(address))
        frame, rows_per_block = pd.DataFrame(todo), 4 * batch_size
        blocks = [frame.iloc[i : i + rows_per_block] for i in range(0, len(frame), rows_per_block)]
        with warnings.catch_warnings():  # max_restarts goes through ray_remote_args, deprecated but still the only way
            warnings.simplefilter("ignore", DeprecationWarning)
            scored = ray.data.from_pandas(blocks).map_batches(
                PyfuncScorer, batch_format="pandas", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=n),
                fn_constructor_kwargs={"model_zip": [ray.put(model)], "data_root": str(root),
                                       "threads": int(resources["num_cpus"])},
                max_restarts=0, **resources)  # a lost worker fails the job (a rerun resumes) instead of Ray's warning per actor
        start, committed = time.perf_counter(), 0
        with make_progress() as progress:  # one pool of actors for the whole job; the driver commits chunk by chunk
            task = progress.add_task("scoring on Ray", total=len(todo), info=f"{n} worker(s)")
            try:
                for k, rows in enumerate(scored.iter_batches(batch_size=chunk, batch_format="pandas", prefetch_batches=0), 1):
                    commit_chunk(_rows_table(rows, identity), out)
                    committed += len(rows)
                    fault_point("after_chunks", k)
                    progress.advance(task, len(rows))
            except ray.exceptions.RayError as exc:
                said = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
                raise MedtlError(f"the Ray job stopped ({type(exc).__name__}: {said}); the {committed} case(s) committed "
                                 f"to {out} stay, and the same command resumes after them") from None
        rate = len(todo) / max(1e-9, time.perf_counter() - start)
    finally:
        ray.shutdown()
    return ArchiveSummary(out, len(todo), len(done), error_rows(out), rate, what_the_rows_say(model_uri, out))


def _rows_table(scored: pd.DataFrame, identity: ModelIdentity):
    """The chunk's rows in the columns and types the Spark engine writes, whatever a chunk's values (a chunk of
    errors alone has no predicted label to infer a type from)."""
    import pyarrow as pa

    rows = scored.assign(**identity.tags, scored_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema = pa.schema([("case_id", pa.string()), ("image", pa.string()), *identity.arrow_schema(),
                        *((key, pa.string()) for key in [*identity.tags, "scored_at"])])
    return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
