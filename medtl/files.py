"""File helpers shared by stages: content digests, and one writer per output."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medtl.errors import MedtlError
from medtl.log import logger


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def one_writer(target: Path, fix: str) -> Iterator[None]:
    """Holds an advisory lock beside ``target`` (a run folder, a predictions file) while a process writes it, so a
    second process given the same target stops in one line instead of interleaving its writes. The OS drops
    the lock however the holder ends (kill -9 included), so no stale lock is left to clear by hand."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MedtlError(f"{target} is being written by another medtl process; wait for it to finish, or {fix}") from None
        except OSError as exc:  # a file system without locks: go on unguarded
            logger.debug("no lock for %s (%s)", target, exc)
        yield
