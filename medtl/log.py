"""One logger for the package, rendered with rich; progress bars for long work."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
logger = logging.getLogger("medtl")


def wide_console() -> Console:
    """stdout console; tables are not cut to 80 columns when the output goes to a file or pipe."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


def setup_logging(level: str | int | None = None) -> None:
    """Send medtl's log to stderr through rich; ``MEDTL_LOG_LEVEL`` overrides the level."""
    level = level or os.environ.get("MEDTL_LOG_LEVEL", "INFO")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    quiet = "WARNING" if logging.getLevelName(logger.level) != "DEBUG" else "DEBUG"
    # MLflow's own INFO lines ("Creating initial MLflow database tables...") are not the user's business
    os.environ["MLFLOW_LOGGING_LEVEL"] = quiet  # read when mlflow is first imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no "Downloading artifacts" bars
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # medtl prints the training view's link
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # MLflow probes git for the source version
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server fails in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.getLogger("mlflow").setLevel(quiet)  # and for an mlflow imported already
    # MONAI probes an optional GPU DICOM decoder each time a loader is built; without it, every probe warns
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    # MONAI walks a batch that failed to collate key by key, at CRITICAL; the failure itself is medtl's one line
    logging.getLogger("dev_collate").setLevel(logging.DEBUG if quiet == "DEBUG" else logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", message=".*NvImgCodecPydicomReader.*")


def progress_enabled() -> bool:
    """Progress bars only where a person watches: not in tests, not when MEDTL_PROGRESS=0."""
    return os.environ.get("MEDTL_PROGRESS", "1") != "0" and "PYTEST_CURRENT_TEST" not in os.environ


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not progress_enabled(),
    )



T = TypeVar("T")


def counted(items: Sequence[T], description: str, show: bool = True) -> Iterator[T]:
    """``items`` one by one, behind a progress bar when ``show`` (a command's own long loop; never inside
    another bar, which rich refuses)."""
    if not show:
        yield from items
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=len(items), info="")
        for item in items:
            yield item
            progress.advance(task)
