"""Errors a user can cause. Each carries a one-line message that names the case, file or key and the fix.

The CLI prints ``str(error)`` and exits non-zero; tracebacks appear only with ``--debug``.
"""


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


class PeerLostError(MedtlError):
    """Another process of a distributed training stopped: this one cannot go on alone, and the run resumes."""

    exit_code = 1
