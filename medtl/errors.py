"""Errors a user can cause. Each carries a one-line message that names the case, file or key and the fix.

The CLI prints ``str(error)`` and exits non-zero; tracebacks appear only with ``--debug``.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MedtlError(Exception):
    """Base of every error medtl raises on purpose."""

    exit_code = 2


class ConfigError(MedtlError):
    """A config file or override is wrong: unknown key, wrong type, missing file."""


class ManifestError(MedtlError):
    """A manifest is unreadable or breaks its schema."""


class DataError(MedtlError):
    """A case cannot be read: missing, corrupt or inconsistent file."""


class WeightsError(MedtlError):
    """Pretrained weights are missing, corrupt or do not fit the network."""


class TrackingError(MedtlError):
    """The MLflow store cannot be reached or written."""


class ModelError(MedtlError):
    """A checkpoint or registered model cannot be used for the requested input."""


class DivergedError(MedtlError):
    """Training produced a non-finite loss or non-finite outputs: a learning rate too high, most often."""


class RunExists(MedtlError):
    """A run folder already holds a run: continued with ``--resume`` where the command resumes, or given another name."""

    def __init__(self, message: str, out_dir: Path) -> None:
        super().__init__(message)
        self.out_dir = out_dir


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``, ``docker stop``), raised where it arrives so that it stops medtl
    as Ctrl-C does: checkpoints whole, the MLflow run closed, one line saying how to go on."""


class Interrupted(MedtlError):
    """Ctrl-C or SIGTERM, said with what was kept and how to go on; 130 and 143 are the shell's exit statuses."""

    def __init__(self, message: str, stop: KeyboardInterrupt | None = None) -> None:
        word = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        super().__init__(f"{word}{message}")
        self.exit_code = 143 if isinstance(stop, Terminated) else 130


@contextmanager
def on_interrupt(then: str) -> Iterator[None]:
    """A Ctrl-C or SIGTERM inside becomes one line saying ``then`` (what was kept, how to go on): without it the
    command line library exits 130 silently, and a researcher cannot tell whether an hour of training was lost."""
    try:
        yield
    except KeyboardInterrupt as stop:
        raise Interrupted(f": {then}", stop) from None


class PeerLostError(MedtlError):
    """Another process of a distributed training stopped: this one cannot go on alone, and the run resumes."""

    exit_code = 1


def said_in_one_line(err: BaseException) -> str | None:
    """A library's failure where medtl knows what the user can do about it, said so: shared or GPU memory run out,
    a tracking server that refused access. None for any other error."""
    import sys

    from medtl.host import out_of_device_memory, out_of_shared_memory

    said = out_of_shared_memory(err) or out_of_device_memory(err)
    if said is None and "mlflow" in sys.modules:
        from medtl.tracking_store import access_refused

        said = access_refused(err)
    return said
