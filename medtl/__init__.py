"""medtl: transfer learning for medical imaging, from scans and a label sheet to a calibrated, tracked model."""

from medtl.errors import MedtlError

__version__ = "0.1.0"
__all__ = ["MedtlError", "__version__"]
