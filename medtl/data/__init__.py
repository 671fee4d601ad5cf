"""Data: manifests, scan readers, checks, splits, transforms, datasets and synthetic scans."""

import logging
import warnings

# MONAI probes an optional GPU DICOM decoder each time a loader is built; on machines without it
# that probe warns on every call, which buries medtl's own messages.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*NvImgCodecPydicomReader.*")
