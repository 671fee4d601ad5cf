"""Named fault points, so reliability tests kill the process at an exact step instead of guessing a time.

``MEDTL_FAULT=after_epoch:1`` sends SIGKILL to the process right after epoch 1's checkpoint is on disk;
``MEDTL_FAULT=after_rows:20`` right after the 20th predictions row is flushed; ``after_epoch:1:TERM`` sends SIGTERM
instead, as a scheduler's time limit does. Unset, a point costs one environment lookup."""

from __future__ import annotations

import os
import signal


def fault_point(name: str, count: int) -> None:
    fault = os.environ.get("MEDTL_FAULT", "")
    if fault == f"{name}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"{name}:{count}:TERM":
        os.kill(os.getpid(), signal.SIGTERM)
