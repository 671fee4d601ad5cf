"""Which MLflow store a command uses, and a check that it can be used, in seconds and one line, before MLflow's
retries, its truncated exceptions or a new empty store in the wrong folder."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from medtl.config import TrackingConfig, names_a_server, redact_uri
from medtl.errors import TrackingError
from medtl.host import untrusted_certificate

DATABASES = ("postgresql", "mysql", "mssql")
"""Database stores MLflow takes through SQLAlchemy, each needing a driver of its own."""

DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "pymysql": "pymysql",
           "pyodbc": "pyodbc (and the ODBC driver for SQL Server)"}
"""A driver module SQLAlchemy asks for → the PyPI package that brings it."""

HOSTED = ("databricks", "databricks-uc", "uc")
"""MLflow's hosted stores, which MLflow itself checks."""


def resolve_uri(cfg: TrackingConfig) -> str:
    """Config, then MLFLOW_TRACKING_URI, then MLflow's local SQLite default in the working folder."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


ACCOUNT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account it "
           "accepts")
"""What a server that refuses access needs: MLflow sends these with every request."""


def access_refused(err: BaseException, uri: str | None = None) -> str | None:
    """The one line for an MLflow call a tracking server refused (HTTP 401 or 403, from MLflow's auth app or a proxy
    in front of it), or None where ``err`` is not that: MLflow says it as an HTTP body."""
    code = getattr(err, "error_code", None)
    status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(str(code))
    said = re.search(r"failed with error code (401|403) != 200", str(err))
    status = status or (int(said[1]) if said else None)
    if status is None or type(err).__module__.split(".")[0] != "mlflow":
        return None
    import mlflow

    return f"tracking server {redact_uri(uri or mlflow.get_tracking_uri())} refused access (HTTP {status}); {ACCOUNT}"


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fails in seconds, naming the URI, when the store cannot be reached or written."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme in DATABASES:
        _check_driver(uri)
    elif uri.split(":", 1)[0].lower() in HOSTED:
        return
    elif scheme and scheme not in ("sqlite", "file"):
        raise TrackingError(f"tracking store {redact_uri(uri)}: not a store MLflow takes; give a tracking server "
                            "(http://host:5000), sqlite:///mlflow.db, or a database URL (postgresql://, mysql://, "
                            "mssql://)")
    elif uri.startswith("sqlite:///"):
        _check_writable(uri, Path(uri.removeprefix("sqlite:///")).parent)
    elif uri.startswith("file:") or not scheme:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise TrackingError(f"tracking store {uri}: a folder store (MLflow's old ./mlruns) no longer takes new runs in "
                                "MLflow 3; use sqlite:///mlflow.db (`mlflow migrate-filestore` moves the old runs "
                                "there), or set MLFLOW_ALLOW_FILE_STORE=true to keep the folder")
        _check_writable(uri, Path(uri.removeprefix("file://").removeprefix("file:")))


def _check_server(uri: str, timeout: float) -> None:
    if not names_a_server(uri):
        raise TrackingError(f"tracking server {redact_uri(uri)}: not a server address; give one like "
                            "http://mlflow.example.org:5000")
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:  # as MLflow will ask: its certificate and TLS settings (MLFLOW_TRACKING_SERVER_CERT_PATH, ...), proxies, auth
        status = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=timeout,
                              raise_on_status=False).status_code
        why = None if status == 200 else f"HTTP {status}"
    except Exception as exc:  # noqa: BLE001 - MLflow wraps what requests raised, without its type
        cause = exc.__cause__ or exc.__context__
        if untrusted_certificate(cause):
            raise TrackingError(f"tracking server {redact_uri(uri)}: {untrusted_certificate(cause)}; give the "
                                "certificate of the CA that signed it in MLFLOW_TRACKING_SERVER_CERT_PATH (a .pem "
                                "file), then rerun") from None
        errno_said = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(cause or exc))
        why = errno_said[1].strip() if errno_said else type(cause or exc).__name__
    if why in ("HTTP 401", "HTTP 403"):
        raise TrackingError(f"tracking server {redact_uri(uri)} refused access ({why}); {ACCOUNT}")
    if why is not None:
        raise TrackingError(f"tracking server {redact_uri(uri)} is unreachable ({why}); start it, fix tracking.uri, "
                            "or unset MLFLOW_TRACKING_URI to use the local store")


def _check_driver(uri: str) -> None:
    """A database store's driver is installed: SQLAlchemy imports it when the engine is made, before any connection."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        sqlalchemy.create_engine(uri).dispose()
    except ImportError as exc:
        needed = DRIVERS.get(exc.name or "", exc.name or "its driver")
        raise TrackingError(f"tracking store {redact_uri(uri)}: the database driver {exc.name} is not installed; "
                            f"pip install {needed}, or give the MLflow server's http(s):// address") from None
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise TrackingError(f"tracking store {redact_uri(uri)}: not a database URL SQLAlchemy reads ({type(exc).__name__}); "
                            "give one like postgresql://user@host:5432/mlflow") from None


def _check_writable(uri: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise TrackingError(f"tracking store {redact_uri(uri)} is not writable ({exc.strerror}); choose another tracking.uri") from None


def require_store(uri: str) -> None:
    """For commands that only read the store (``models``, a ``models:/`` or ``runs:/`` URI): a local store must
    already exist. MLflow would create an empty one in the working folder, and a command run from the wrong folder
    would then say the model is not registered, and leave an empty mlflow.db behind."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"no MLflow store at {redact_uri(uri)}: nothing was tracked from this folder; run medtl from "
                            "the folder that holds your mlflow.db, or set MLFLOW_TRACKING_URI to it")
    check_store(uri)
