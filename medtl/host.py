"""What a container lacks that a workstation has, made up for before any library asks for it.

OpenShift, ``docker run --user`` and Kubernetes ``runAsUser`` start processes under a UID with no entry in
``/etc/passwd`` and, most often, ``HOME=/``, which that UID cannot write. MLflow asks for the login name when it
starts a run (``getpass`` raises ``KeyError`` there), matplotlib and Ray write under the home, and Spark's JVM cannot
log in at all without a passwd entry. And a container gets 64 MB of shared memory, where a data loader's workers put
their batches. What runs out all the same (shared memory, a GPU's memory) is one line that says what to change.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
from pathlib import Path

from medtl.log import logger


def settle_user_and_home() -> str | None:
    """Gives this process, and those it starts, a login name and a home it can write where the system gives none.
    Returns the home it chose, or None where the system's own were usable."""
    if not hasattr(os, "getuid"):  # Windows: no UIDs, and a home from the user's profile
        return None
    try:
        getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER in the environment and no passwd entry
        os.environ["LOGNAME"] = f"uid{os.getuid()}"
    was = os.environ.get("HOME")
    if _usable(was):
        return None
    home = os.environ["HOME"] = str(_private_home())
    given = os.environ.get("MEDTL_HOME")
    lasts = ("" if given and Path(given).resolve() == Path(home)
             else "; set MEDTL_HOME to a folder that lasts to keep them")
    logger.info("%s: MLflow, matplotlib, Ray, medtl's weights cache and its pseudonym key keep their files in "
                "%s%s", f"HOME={was} cannot be written" if was else "HOME is not set", home, lasts)
    return home


def _usable(folder: str | None) -> bool:
    return bool(folder) and Path(folder).is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _private_home() -> Path:
    """``MEDTL_HOME`` where it is set (a volume that outlasts the container keeps all there), else ``medtl-home-UID``
    in the temporary folder, this user's alone; a fresh one where another user made that name."""
    given = os.environ.get("MEDTL_HOME")
    if given:
        try:
            Path(given).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        if _usable(given):
            return Path(given).resolve()  # a relative HOME would move with every change of folder
    home = Path(tempfile.gettempdir()) / f"medtl-home-{os.getuid()}"
    try:
        home.mkdir(mode=0o700, exist_ok=True)
        if home.is_dir() and not home.is_symlink() and home.stat().st_uid == os.getuid():
            return home
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"medtl-home-{os.getuid()}-"))


def has_passwd_entry() -> bool:
    """Whether this UID has a passwd entry: Hadoop's login, which Spark runs, fails without one."""
    if not hasattr(os, "getuid"):
        return True
    import pwd

    try:
        pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return True


def usable_cpus() -> int:
    """The cores this process may run on: a batch job's (SLURM's --cpus-per-task) or a pinned container's, not the
    machine's, which ``os.cpu_count`` gives and workers sized by would crowd."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


SHARED_MEMORY = "/dev/shm"
"""Where a data loader's workers put the batches they hand over; a container gets 64 MB there by default."""


def shared_memory_free() -> int | None:
    """Bytes free in the shared memory folder, or None where there is none to measure."""
    import shutil

    try:
        return shutil.disk_usage(SHARED_MEMORY).free
    except OSError:
        return None


def workers_shared_memory_holds(workers: int, batch_bytes: int) -> int:
    """As many loader workers as shared memory holds the batches of (each prepares two ahead, and a batch may be
    larger than its estimate): more than it holds die mid-epoch with a bus error, after the first steps ran."""
    free = shared_memory_free()
    if workers <= 0 or free is None:
        return workers
    fits = int(free // max(1, 3 * batch_bytes))
    if fits >= workers:
        return workers
    if (fits, workers) not in _SAID:  # once, not for each split's loader
        _SAID.add((fits, workers))
        logger.warning("%s has %s free (a container gets 64 MB): %d data-loading worker(s) instead of %d, which would "
                       "run out of it; start the container with --shm-size=8g or --ipc=host for them", SHARED_MEMORY,
                       _size(free), fits, workers)
    return fits


_SAID: set[tuple[int, int]] = set()


def out_of_shared_memory(err: BaseException) -> str | None:
    """The one line for a data loader that ran out of shared memory anyway, or None where ``err`` is not that."""
    said = str(err)
    if not isinstance(err, RuntimeError) or not ("out of shared memory" in said or "</torch_" in said):
        return None
    free = shared_memory_free()
    held = f" ({SHARED_MEMORY} has {_size(free)} free)" if free is not None else ""
    return (f"the data loader's workers ran out of shared memory{held}: start the container with --shm-size=8g or "
            "--ipc=host, or load the data in the main process (data.num_workers=0); then rerun the same command (a "
            "training that completed an epoch continues with --resume)")


def out_of_device_memory(err: BaseException) -> str | None:
    """The one line for a GPU that ran out of memory, or None where ``err`` is not that: torch's own paragraph
    reads like a bug to report."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not isinstance(err, torch.OutOfMemoryError):
        return None
    said = str(err)
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]iB)", said)
    total = re.search(r"total capacity of ([\d.]+ [KMGT]iB)", said)
    what = f" (it asked for {asked[1]} more" + (f", of {total[1]}" if total else "") + ")" if asked else ""
    return (f"the GPU ran out of memory{what}: use smaller batches (train.batch_size, with train.grad_accum to keep "
            "their effect; score --batch-size) or inputs (data.image_size, train.patch_size), or keep the training "
            "split off the GPU (train.data_on_device=false); then rerun the same command (a training that completed "
            "an epoch continues with --resume)")


def untrusted_certificate(err: BaseException | None) -> str | None:
    """What to say of a server whose TLS certificate this machine does not trust (most often one a hospital's own CA
    signed), or None where ``err`` is no such failure: it was reached, so no network fault is to be looked for."""
    import requests

    if not isinstance(err, requests.exceptions.SSLError):
        return None
    said = re.search(r"certificate verify failed: ([^(']+)", str(err))
    return f"its TLS certificate is not trusted here ({said[1].strip() if said else 'SSLError'})"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n // 2**10} kB"
