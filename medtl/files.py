"""File helpers shared by stages: content digests, one writer per output, and output folders that are medtl's."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from medtl.errors import MedtlError
from medtl.log import logger


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomically(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """``write`` fills a temporary file beside ``path``, which is then synced and renamed over it: a crash or a
    full disk mid-write leaves the old file as it was, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


WORKBOOKS = (".xlsx", ".xlsm")
"""Workbooks medtl reads (openpyxl); OTHER_WORKBOOKS it asks to be saved as one of these or as CSV."""
OTHER_WORKBOOKS = (".xls", ".ods", ".numbers")
SHEETS = (".csv", *WORKBOOKS)
"""The tables ``read_sheet`` reads: manifests, label sheets, splits."""


def table_path(path: Path) -> Path:
    """``path`` for a CSV medtl writes, refused when its name says spreadsheet: CSV text in a file named .xlsx opens
    as a broken workbook in Excel, and in medtl."""
    if Path(path).suffix.lower() in (*WORKBOOKS, *OTHER_WORKBOOKS):
        raise MedtlError(f"--out {path}: medtl writes manifests as CSV (Excel opens them); name it {Path(path).stem}.csv")
    return Path(path)


def write_table(table: Any, path: Path) -> None:
    """A CSV a researcher keeps (a manifest, a split), written whole or not at all."""
    write_atomically(table_path(path), lambda fh: table.to_csv(fh, index=False))


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


def claim_folder(folder: Path, option: str, owner: str = "") -> None:
    """An output folder medtl writes fixed file names into (report.md, predictions.csv, CASE.nii.gz) is new, empty, or
    one medtl filled before, for the same ``owner`` when one is given (a model's masks); anything else a person put
    there would be overwritten file by file, so it is refused in one line."""
    mark = folder / ".medtl"
    if mark.is_file():
        held = mark.read_text().strip()
        if owner and held and held != owner:
            raise MedtlError(f"{option} {folder}: holds the output of another model ({held}); give a new folder")
        return
    others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if others:
        raise MedtlError(f"{option} {folder}: holds files medtl did not write (e.g. {others[0]}), which its output would "
                         "overwrite; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(owner)


def claim_case_files(folder: Path, option: str, case_ids: list[str], owner: str, instead: str) -> None:
    """A folder of one file per case (CASE_ID.png, .nii.gz): an id holding a path separator would write elsewhere
    (``../x`` outside the folder), two ids that differ only in capitals are one file on Windows or macOS, and a
    folder of files medtl did not write is refused (``claim_folder``) — each before anything is written. ``instead``
    says what else the user can do ("score without --masks-out")."""
    folded: dict[str, str] = {}
    for case in case_ids:
        if case in (".", "..") or any(ch in case for ch in "/\\\0"):
            raise MedtlError(f"case {case!r}: its id cannot name a file of {option} (it holds a path separator); "
                             f"rename the case, or {instead}")
        other = folded.setdefault(case.casefold(), case)
        if other != case:
            raise MedtlError(f"cases {other!r} and {case!r}: their files in {option} would be one file on Windows or "
                             f"macOS; rename one, or {instead}")
    claim_folder(folder, option, owner)
