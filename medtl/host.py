"""What a container started under an arbitrary user lacks, given before any library asks for it.

OpenShift, ``docker run --user`` and Kubernetes ``runAsUser`` start processes under a UID with no entry in
``/etc/passwd`` and, most often, ``HOME=/``, which that UID cannot write. MLflow asks for the login name when it
starts a run (``getpass`` raises ``KeyError`` there), matplotlib and Ray write under the home, and Spark's JVM cannot
log in at all without a passwd entry.
"""

from __future__ import annotations

import getpass
import os
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
    lasts = "" if home == os.environ.get("MEDTL_HOME") else "; set MEDTL_HOME to a folder that lasts to keep them"
    logger.info("%s: MLflow, matplotlib, Ray and medtl's weights cache keep their files in %s%s",
                f"HOME={was} cannot be written" if was else "HOME is not set", home, lasts)
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
            return Path(given)
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
