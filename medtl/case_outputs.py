"""What scoring writes for each case beside its predictions row: the mask on the scan's own grid (PNG, NIfTI,
MetaImage or NRRD, and a DICOM-SEG for a DICOM series), the lesion's size, a Grad-CAM figure, and a DICOM SR;
and the claim on their folders, made before anything is scored."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from medtl.data.dicom import parse_series_ref
from medtl.data.itk_formats import write_itk_mask
from medtl.data.readers import IMAGE_SUFFIXES, dicom_headers, scan_kind
from medtl.errors import MedtlError
from medtl.explain import heatmap_problem, write_heatmaps
from medtl.files import claim_case_files
from medtl.models.checkpoint import ModelBundle

if TYPE_CHECKING:
    from medtl.data.inverse import SourceMask


def mask_row(rec: dict[str, Any], image_ref: str, masks_out: Path | None, bundle: ModelBundle,
             model_id: str) -> dict[str, Any]:
    """Writes the mask on the source grid: PNG for a film, MetaImage or NRRD for a scan in that format, NIfTI with
    the source affine otherwise, and for a DICOM series also a DICOM-SEG referencing it; adds the lesion's size and
    the path."""
    mask = rec["mask"]
    row = {**_lesion_size(mask, image_ref, bundle.spec.data.spatial_dims, bundle.classes), "mask_path": ""}
    if masks_out is not None:
        masks_out.mkdir(parents=True, exist_ok=True)
        if image_ref.lower().endswith(IMAGE_SUFFIXES):  # a film in, a PNG of the same size out
            from PIL import Image

            path = masks_out / f"{rec['case_id']}.png"
            labels = mask.labels * (255 if mask.labels.max(initial=0) <= 1 else 1)
            Image.fromarray(labels.astype(np.uint8).T).save(path)
        elif scan_kind(image_ref) == "itk":  # back in its own format, for the viewer or challenge that gave it
            path = write_itk_mask(mask.labels, Path(image_ref), masks_out / rec["case_id"], bundle.classes)
        else:
            path = masks_out / f"{rec['case_id']}.nii.gz"
            affine = mask.affine if mask.affine.shape == (4, 4) else _affine_3d(mask.affine)
            nib.save(nib.Nifti1Image(mask.labels, affine), str(path))
            if scan_kind(image_ref) == "dicom":
                from medtl.dicom_seg import write_dicom_seg

                name = bundle.extra.get("model_name") or bundle.extra.get("backbone") or "medtl model"
                version = str(bundle.extra.get("model_version") or model_id)
                write_dicom_seg(image_ref, mask.labels, mask.affine, bundle.classes, masks_out / f"{rec['case_id']}.seg.dcm", name, version)
        row["mask_path"] = str(path)
    return row


def claim_outputs(bundle: ModelBundle, case_ids: list[str], masks_out: Path | None, per_case: dict[str, Path | None],
                  model_id: str) -> None:
    """The folders of one file per case, claimed before anything is scored: a folder of reference masks named like
    the cases would otherwise be overwritten file by file."""
    if masks_out is not None:
        claim_case_files(masks_out, "--masks-out", case_ids, model_id, "score without --masks-out")
    if per_case["reports"] is not None:
        claim_case_files(per_case["reports"], "--reports-out", case_ids, model_id, "score without --reports-out")
    heatmaps = per_case["heatmaps"]
    if heatmaps is not None:
        problem = heatmap_problem(bundle)
        if problem:
            raise MedtlError(f"--heatmaps: {problem}; score without it")
        claim_case_files(heatmaps, "--heatmaps", case_ids, model_id, "score without --heatmaps")


def size_columns(bundle: ModelBundle) -> list[str]:
    several = len(bundle.classes) > 2
    if bundle.spec.data.spatial_dims == 2:
        return ["lesion_pixels", "lesion_area_mm2", *(area_column(c) for c in bundle.classes[1:] if several)]
    return ["lesion_volume_ml", *(volume_column(c) for c in bundle.classes[1:] if several)]


def volume_column(name: str) -> str:
    """The column of one class's volume, where a model segments several (tumour core, oedema ...)."""
    return f"volume_ml_{name}"


def area_column(name: str) -> str:
    """The column of one class's area on a film, where a model segments several (lung fields, heart ...)."""
    return f"area_mm2_{name}"


def class_sizes(row: dict[str, Any], classes: list[str], spatial_dims: int) -> dict[str, float]:
    """Each foreground class's size from a predictions row: volume (mL) in a scan, area (mm²) on a film."""
    one, each = ("lesion_volume_ml", volume_column) if spatial_dims == 3 else ("lesion_area_mm2", area_column)
    return {c: float(row[each(c) if len(classes) > 2 else one]) for c in classes[1:]}


def _lesion_size(mask: SourceMask, image_ref: str, spatial_dims: int, classes: list[str]) -> dict[str, float | int]:
    """The lesion's volume (mL) in a scan, and each class's where there are several; in a film its pixels and
    area (mm²), and each class's area where there are several, the areas only where the file states its pixel
    spacing: a PNG, or a DICOM film without the tag, gives pixels of unknown size."""
    n = int((mask.labels > 0).sum())
    if spatial_dims == 3:
        each = {volume_column(c): int((mask.labels == k).sum()) * mask.voxel_ml
                for k, c in enumerate(classes) if k and len(classes) > 2}
        return {"lesion_volume_ml": n * mask.voxel_ml, **each}
    kind = scan_kind(image_ref)
    path, uid = parse_series_ref(image_ref)
    stated = kind in ("nifti", "itk") or (kind == "dicom" and any(
        tag in dicom_headers(path, uid)[0].dataset for tag in ("PixelSpacing", "ImagerPixelSpacing")))
    each = {area_column(c): int((mask.labels == k).sum()) * mask.pixel_mm2 if stated else float("nan")
            for k, c in enumerate(classes) if k and len(classes) > 2}
    return {"lesion_pixels": n, "lesion_area_mm2": n * mask.pixel_mm2 if stated else float("nan"), **each}


def _affine_3d(affine_2d: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = affine_2d[:2, :2], affine_2d[:2, 2]
    return out


def draw_heatmaps(bundle: ModelBundle, cases: list[dict[str, str]], table: pd.DataFrame, folder: Path,
                  device: Any) -> None:
    """A heat map for each case scored without error that has none yet: a rerun after a crash draws the rest."""
    images = {c["case_id"]: c["image"] for c in cases}
    ok = table[(table["status"] == "ok") & table["case_id"].isin(images)]
    rows = [r for r in ok.to_dict("records") if not (folder / f"{r['case_id']}.png").exists()]
    todo = [{"case_id": r["case_id"], "image": images[r["case_id"]], "p": r[f"prob_{bundle.classes[1]}"],
             "predicted": r["predicted"]} for r in rows]
    write_heatmaps(bundle, todo, folder, device)


def write_reports(bundle: ModelBundle, cases: list[dict[str, str]], table: pd.DataFrame, folder: Path,
                  model_id: str) -> None:
    """A DICOM SR for each DICOM case scored without error that has none yet (a rerun writes the rest), from its row
    as written: a classifier's at the prevalence ``--prevalence`` applied, a segmentation's volumes (areas on a film)
    beside the DICOM-SEG it references. A case not stored as DICOM has no study to file one in."""
    from medtl.dicom_sr import write_dicom_sr, write_segmentation_sr
    from medtl.log import logger

    images = {c["case_id"]: c["image"] for c in cases}
    ok = table[(table["status"] == "ok") & table["case_id"].isin(images)].to_dict("records")
    dicom_rows = [r for r in ok if scan_kind(images[r["case_id"]]) == "dicom"]
    name = bundle.extra.get("model_name") or bundle.extra.get("backbone") or "medtl model"
    version = str(bundle.extra.get("model_version") or model_id)
    todo = [r for r in dicom_rows if not (folder / f"{r['case_id']}.sr.dcm").exists()]
    already = len(dicom_rows) - len(todo)
    segs: dict[str, Path] = {}
    if bundle.task != "classification":
        todo, segs = _reportable_segmentations(bundle, todo)
    for row in todo:
        out = folder / f"{row['case_id']}.sr.dcm"
        if bundle.task == "classification":
            write_dicom_sr(images[row["case_id"]], row, bundle.classes, out, name, version)
        else:
            write_segmentation_sr(images[row["case_id"]], segs[row["case_id"]],
                                  class_sizes(row, bundle.classes, bundle.spec.data.spatial_dims), out, name, version,
                                  planar=bundle.spec.data.spatial_dims == 2)
    logger.info("%s: %d DICOM SR written now, %d already there (medtl pacs push stores them)", folder, len(todo),
                already)
    if len(dicom_rows) < len(ok):
        logger.info("%d of the %d cases scored are not DICOM: no DICOM SR for them", len(ok) - len(dicom_rows), len(ok))


def _reportable_segmentations(bundle: ModelBundle, todo: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The cases a segmentation's report can be written for, and their DICOM-SEG: one beside the mask, and every
    class's size known (a film that states no pixel spacing has areas of unknown size). The others are named once."""
    from medtl.log import logger

    segs = {r["case_id"]: _seg_of(r) for r in todo}
    missing = [case for case, seg in segs.items() if seg is None]
    if missing:
        logger.warning("%d case(s) have no DICOM-SEG beside their mask (scored by an earlier run without "
                       "--masks-out: %s); no DICOM SR for them", len(missing), ", ".join(missing[:3]))
    unsized = [r["case_id"] for r in todo if segs[r["case_id"]] is not None
               and np.isnan(list(class_sizes(r, bundle.classes, bundle.spec.data.spatial_dims).values())).any()]
    if unsized:
        logger.warning("%d film(s) state no pixel spacing, so their areas are unknown (%s); no DICOM SR for them",
                       len(unsized), ", ".join(unsized[:3]))
    kept = [r for r in todo if segs[r["case_id"]] is not None and r["case_id"] not in unsized]
    return kept, {r["case_id"]: segs[r["case_id"]] for r in kept}


def _seg_of(row: dict[str, Any]) -> Path | None:
    """The DICOM-SEG scoring wrote beside a case's NIfTI mask, if it did."""
    mask = row.get("mask_path")
    seg = Path(mask).with_name(f"{row['case_id']}.seg.dcm") if isinstance(mask, str) and mask else None
    return seg if seg is not None and seg.exists() else None
