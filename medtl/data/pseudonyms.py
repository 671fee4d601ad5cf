"""Patient grouping without patient identifiers. A patient's series (several reconstructions of one study,
follow-ups) must land in one split, or the test split shares patients with training; yet DICOM's PatientID
never leaves the scan. ``manifest build`` writes HMAC-SHA256(key, PatientID) instead: the same patient gets
the same pseudonym on this machine, and without the key nobody can test a guessed identifier against it (a
plain or publicly salted hash of a 7-digit hospital number is reversed by trying them all).

The key is ``MEDTL_ID_KEY`` when set (share it to build manifests of one cohort on several machines), else a
random key made once in ``$MEDTL_HOME/id_key`` (``~/.config/medtl/id_key`` by default: a setting, not a
cache), readable by its owner only. It never reaches a log, a manifest or MLflow."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "MEDTL_ID_KEY"


def key_file() -> Path:
    if os.environ.get("MEDTL_HOME"):
        return Path(os.environ["MEDTL_HOME"]) / "id_key"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "medtl" / "id_key"


def id_key() -> bytes:
    """This machine's pseudonym key (made on first use)."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        except FileExistsError:  # another process made it first: use theirs
            pass
    return path.read_text().strip().encode()


def pseudonym(identifier: str, key: bytes) -> str:
    return "p_" + hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest()[:12]
