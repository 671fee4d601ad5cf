"""3D Slicer segmentations (``.seg.nrrd``) as training masks.

Slicer saves a segmentation cropped to the box its segments fill, on the scan's grid, and numbers its segments in
the order they were made in that file: a tumour may be label 1 in one case and label 2 in the next. Read as they
are, the masks would not match their scans' shape, or would teach the model one class under another's name.
``manifest build`` places each one on its scan's grid and numbers segments by name, the same in every case, writing
the masks it had to change beside the manifest; the rest are used where they lie.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medtl.data.itk_formats import ItkHeader, load_itk, read_itk_header
from medtl.errors import DataError

logger = logging.getLogger(__name__)

SLICER_SUFFIX = ".seg.nrrd"


def segment_names(header: ItkHeader) -> dict[int, str]:
    """Label value to segment name, from the ``SegmentN_Name`` and ``SegmentN_LabelValue`` fields Slicer writes;
    empty for a file that names none."""
    fields, names, n = header.fields, {}, 0
    while f"Segment{n}_Name" in fields:
        value = fields.get(f"Segment{n}_LabelValue", str(n + 1))
        try:
            names[int(float(value))] = fields[f"Segment{n}_Name"].strip()
        except ValueError:
            raise DataError(f"segment {n}'s label value {value[:20]!r} is not a number; save it again from "
                            "3D Slicer") from None
        n += 1
    return names


def _on_grid(labels: np.ndarray, mask_affine: np.ndarray, image_shape: tuple[int, ...],
             image_affine: np.ndarray) -> np.ndarray | None:
    """``labels`` padded onto the image grid when its own grid is a box of that grid (same axes and spacing, whole
    voxel offset, inside the scan); None when it is not."""
    if labels.size == 1:  # Slicer's way of saving a segmentation with no voxels: its geometry means nothing
        return np.zeros(image_shape, dtype=np.uint8)
    if mask_affine.shape != image_affine.shape or not np.allclose(mask_affine[:3, :3], image_affine[:3, :3], atol=1e-3):
        return None
    offset = (np.linalg.inv(image_affine) @ mask_affine[:, 3])[:3]
    start = np.round(offset).astype(int)
    if not np.allclose(offset, start, atol=1e-2) or (start < 0).any() or (start + labels.shape > image_shape).any():
        return None
    placed = np.zeros(image_shape, dtype=np.uint8)
    placed[tuple(slice(s, s + n) for s, n in zip(start, labels.shape))] = labels
    return placed


def place_slicer_masks(cases: list[tuple[str, str]], mask_refs: dict[str, str], folder: Path) -> dict[str, str]:
    """``mask_refs`` with each Slicer segmentation that is cropped, or numbers its segments otherwise than the first
    case to name them, replaced by a NIfTI mask in ``folder`` on its scan's grid, labelled by segment name. Says the
    ``data.classes`` the labels stand for; a segmentation that cannot be placed is said and left for ``manifest
    check`` to name."""
    import nibabel as nib

    from medtl.data.check import scan_geometry  # imported here: check imports the module that imports this one

    images = dict(cases)
    slicer = {c: ref for c, ref in mask_refs.items() if ref.lower().endswith(SLICER_SUFFIX) and c in images}
    if not slicer:
        return mask_refs
    order: list[str] = []  # segment names, in the order the label values will follow
    placed, unplaced = dict(mask_refs), []
    for case, ref in sorted(slicer.items()):
        try:
            header, image = read_itk_header(Path(ref)), scan_geometry(images[case])
            names = segment_names(header)
        except DataError as exc:
            logger.warning("case %s: %s: %s", case, Path(ref).name, exc)
            continue
        order += [name for _, name in sorted(names.items()) if name not in order]
        relabel = {value: order.index(name) + 1 for value, name in names.items()}
        if header.shape == tuple(image.shape) and all(value == label for value, label in relabel.items()):
            continue
        labels = load_itk(Path(ref))[0].astype(np.int64)
        unnamed = sorted(set(np.unique(labels).tolist()) - set(relabel) - {0})
        if unnamed:
            logger.warning("case %s: %s holds label(s) %s that no segment names; left as saved", case, Path(ref).name,
                           unnamed)
            continue
        lookup = np.zeros(max([*relabel, 0]) + 1, dtype=np.uint8)
        for value, label in relabel.items():
            lookup[value] = label
        grid = _on_grid(lookup[labels], header.affine, tuple(image.shape), np.asarray(image.affine))
        if grid is None:
            unplaced.append(case)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(grid, np.asarray(image.affine)), str(out))
        placed[case] = str(out)
    if unplaced:
        logger.warning("%d 3D Slicer segmentation(s) lie on another grid than their scan (%s): export each as a "
                       "labelmap with its scan as the reference volume", len(unplaced), ", ".join(unplaced[:3]))
    if order:
        logger.info("3D Slicer segmentations: labels %s; set data.classes: [background, %s]",
                    ", ".join(f"{i} {name}" for i, name in enumerate(order, start=1)), ", ".join(order))
    return placed
