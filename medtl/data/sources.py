"""Importers of public data sets into real image files plus a manifest, so they exercise the same
readers as a researcher's own scans."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from medtl.data.manifest import SPLITS
from medtl.errors import ManifestError

PNEUMONIA_CLASSES = ["normal", "pneumonia"]


def import_medmnist(
    npz: Path,
    out: Path,
    class_names: list[str] | None = None,
    limit: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Writes each image of a MedMNIST ``.npz`` (PNG for 2D, NIfTI for 3D) and ``manifest.csv`` in ``out``.

    The official splits are kept. ``limit`` caps cases per split (a label-stratified random subset), for
    quick runs; the caps are the only thing that changes the data.
    """
    npz, out = Path(npz), Path(out)
    if not npz.is_file():
        raise ManifestError(f"{npz}: MedMNIST file not found")
    try:
        arrays = np.load(npz)
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"{npz}: not a MedMNIST .npz ({type(exc).__name__})") from None
    if class_names is not None and len(set(class_names)) < len(class_names):
        raise ManifestError(f"--classes {','.join(class_names)}: the names must differ, one per label, in label order")
    rows = []
    rng = np.random.default_rng(seed)
    for split in SPLITS:  # MedMNIST names its arrays by medtl's split names
        if f"{split}_images" not in arrays:
            raise ManifestError(f"{npz}: has no {split}_images array; is it a MedMNIST file?")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_images"]), -1)[:, 0]
        if class_names and int(labels.max(initial=0)) >= len(class_names):
            raise ManifestError(f"--classes {','.join(class_names)}: {npz.name} has labels 0 to {int(labels.max())}; "
                                f"name {int(labels.max()) + 1} classes in label order (see the file's MedMNIST info)")
        keep = np.arange(len(images))
        if limit and split in limit and limit[split] < len(images):
            keep = _stratified_subset(labels, limit[split], rng)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in keep:
            case = f"{split}_{i:05d}"
            if images[i].ndim == 2 or (images[i].ndim == 3 and images[i].shape[-1] == 3):
                rel = f"images/{split}/{case}.png"
                Image.fromarray(images[i]).save(out / rel)
            else:
                rel = f"images/{split}/{case}.nii.gz"
                nib.save(nib.Nifti1Image(images[i].astype(np.float32), np.eye(4)), str(out / rel))
            label = int(labels[i])
            name = class_names[label] if class_names else str(label)
            rows.append({"case_id": case, "patient_id": case, "image": rel, "label": name, "split": split})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        take = max(1, int(round(n * len(idx) / len(labels))))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))
