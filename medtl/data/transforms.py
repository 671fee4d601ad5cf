"""Transform chains from config, all MONAI dict transforms. Deterministic steps come first, so MONAI's
caching datasets store their output and epoch 2 onwards never decodes a scan again."""

from __future__ import annotations

import re
from typing import Any

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RepeatChanneld,
    Resized,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_tensor

from medtl.config import DataConfig
from medtl.data import dicom
from medtl.data.check import blank_problem, hounsfield_problem, in_hounsfield, mask_problem
from medtl.data.readers import ScanReader
from medtl.errors import DataError


class LoadScand(LoadImaged):
    """LoadImaged through medtl's ScanReader; a failure names the case and file, never a library traceback."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys, reader=ScanReader(), image_only=True)
        self.scan_reader = ScanReader()

    def __call__(self, data: Any, reader: Any = None) -> Any:
        try:
            # a runtime reader is used alone: MONAI would otherwise retry every default reader on failure
            return super().__call__(data, reader or self.scan_reader)
        except Exception as exc:  # noqa: BLE001 - every reader failure becomes one readable line
            cause = find_data_error(exc)
            reason = str(cause) if cause else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise DataError(f"case {data.get('case_id', '?')}: {reason}") from None


class FilmWindow(ScaleIntensityRangePercentiles):
    """The 0.5th to 99.5th percentile window onto [0, 1], clipped. A film almost all one value has the two
    percentiles equal; MONAI then hands it on unscaled and unclipped (0 to 255 where the network expects 0 to 1),
    so its minimum and maximum window it instead."""

    def _normalize(self, img: Any) -> Any:
        a_min, a_max = percentile(img, self.lower), percentile(img, self.upper)
        if a_max == a_min:
            a_min, a_max = img.min(), img.max()
        window = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=self.b_min, b_max=self.b_max, clip=self.clip,
                                     dtype=self.dtype)
        return convert_to_tensor(window(img), track_meta=False)


class FilmWindowd(ScaleIntensityRangePercentilesd):
    def __init__(self, keys: str, lower: float, upper: float) -> None:
        super().__init__(keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
        self.scaler = FilmWindow(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)


class CheckVoxelsd(MapTransform):
    """Refuses NaN/Inf voxels, which would silently poison a batch, and a blank image (a failed export), which a
    model would still score; a blank mask is a case without a lesion."""

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            voxels = torch.as_tensor(d[key])
            if not torch.isfinite(voxels).all():
                raise DataError(f"case {d.get('case_id', '?')}: {key} holds NaN/Inf voxels; fix or drop the scan")
            if key == "image" and voxels.numel() and voxels.min() == voxels.max():
                raise DataError(f"case {d.get('case_id', '?')}: {blank_problem(float(voxels.flatten()[0]))}")
        return d


class CheckHounsfieldd(MapTransform):
    """Refuses a scan a CT config would window as Hounsfield units but whose values are not (``hounsfield_problem``):
    no voxel below 0."""

    def __call__(self, data: Any) -> Any:
        for key in self.key_iterator(data):
            voxels = torch.as_tensor(data[key])
            problem = hounsfield_problem(float(voxels.min())) if voxels.numel() else None
            if problem:
                raise DataError(f"case {data.get('case_id', '?')}: {problem}")
        return data


class MaskIndicesd(MapTransform):
    """Masks become class indices: 8-bit masks drawn as 0/255 become 0/1; a value that is no class index of the
    configured classes (0.5, or 5 with two classes) is the case's error, not an index error mid-training."""

    def __init__(self, keys: list[str], n_classes: int) -> None:
        super().__init__(keys)
        self.n_classes = n_classes

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            problem, scale = mask_problem(torch.unique(torch.as_tensor(d[key])).numpy(), self.n_classes)
            if problem:
                raise DataError(f"case {d.get('case_id', '?')}: {problem}")
            if scale != 1.0:
                d[key] = d[key] * scale
        return d


class CaseCompose(Compose):
    """Compose that re-raises the DataError naming the case instead of MONAI's nested wrapping; any other failure
    of a step on a case becomes that case's DataError naming the step and the first cause, where it read
    "RuntimeError: applying transform <monai...Orientationd object at 0x7f...>"."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            err = find_data_error(exc)
            if err is not None:
                raise err from None
            root = _innermost(exc)
            if isinstance(root, MemoryError):  # the machine's problem, not the case's
                raise root from None
            step = re.search(r"applying transform <[\w.]*?(\w+) object", str(exc))
            case = input_.get("case_id", "?") if isinstance(input_, dict) else "?"
            raise DataError(f"case {case}: {step.group(1) if step else 'preprocessing'} failed "
                            f"({type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''})") from exc


def _innermost(exc: BaseException) -> BaseException:
    """The first cause under MONAI's wrapping of a step's failure."""
    for _ in range(20):
        if (exc.__cause__ or exc.__context__) is None:
            break
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


class CheckDimsd(MapTransform):
    """Refuses a scan whose dimensionality is not the configured one, naming both, or that holds several volumes."""

    def __init__(self, keys: list[str], spatial_dims: int) -> None:
        super().__init__(keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] != 1:  # a 4-D NIfTI (echoes, time points) arrives as channels
                raise DataError(f"case {d.get('case_id', '?')}: {key} holds {d[key].shape[0]} volumes "
                                f"{tuple(d[key].shape)}; the model takes one grey scan per case: split it into one "
                                "case per volume")
            shape = tuple(d[key].shape[1:])
            dims = len([s for s in shape if s > 1]) if len(shape) == 3 and self.spatial_dims == 2 else len(shape)
            if dims != self.spatial_dims:
                raise DataError(f"case {d.get('case_id', '?')}: {len(shape)}-D scan {shape}, "
                                f"the model expects {self.spatial_dims}-D input")
            if len(shape) == 3 and self.spatial_dims == 2:
                d[key] = d[key][..., 0] if shape[2] == 1 else d[key][:, :, 0] if shape[1] == 1 else d[key][:, 0]
        return d


class CheckAcquisitiond(MapTransform):
    """Refuses a DICOM scan the model never saw the like of and would still answer for: another modality than
    the configured one (``dicom.modality_mismatch``), or a film of another view (``dicom.view_mismatch``), as its
    header states it or, where it states none, the case's ``view`` from the manifest."""

    def __init__(self, keys: list[str], modality: str, views: list[str] | None = None) -> None:
        super().__init__(keys)
        self.modality, self.views = modality, views

    def __call__(self, data: Any) -> Any:
        for key in self.key_iterator(data):
            meta = getattr(data[key], "meta", {})
            view, source = str(meta.get("dicom_view", "")), "DICOM ViewPosition"
            if not view and isinstance(data.get("view"), str):
                view, source = data["view"], dicom.STATED_IN_MANIFEST
            other = (dicom.modality_mismatch(str(meta.get("dicom_modality", "")), self.modality)
                     or dicom.view_mismatch(view, self.views, source))
            if other:
                raise DataError(f"case {data.get('case_id', '?')}: {other}")
        return data


def find_data_error(exc: BaseException | None) -> DataError | None:
    """The DataError inside MONAI's wrapping of transform errors, if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, DataError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def intensity_transform(cfg: DataConfig) -> list[Any]:
    if cfg.modality == "ct":
        lo, hi = cfg.ct_window
        return [ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if cfg.modality == "mr":
        return [NormalizeIntensityd("image", nonzero=True)]
    if cfg.modality in ("xray", "us"):
        return [FilmWindowd("image", lower=0.5, upper=99.5)]
    return []


def deterministic_transforms(cfg: DataConfig, with_mask: bool = False, keep_meta: bool = False) -> list[Any]:
    """Load → channel first → orientation/spacing (3D) → intensity preset → crop → resize. Cacheable.

    ``keep_meta`` keeps MONAI's record of every spatial step on the image, so a prediction can be inverted
    back to the source grid (``medtl.data.inverse``)."""
    keys = ["image", "mask"] if with_mask else ["image"]
    steps: list[Any] = [LoadScand(keys), EnsureChannelFirstd(keys), CheckDimsd(keys, cfg.spatial_dims),
                        CheckAcquisitiond(["image"], cfg.modality, cfg.views), CheckVoxelsd(keys)]
    if in_hounsfield(cfg.modality, cfg.ct_window):
        steps.append(CheckHounsfieldd(["image"]))
    if with_mask:
        steps.append(MaskIndicesd(["mask"], len(cfg.mask_classes)))
    if cfg.spatial_dims == 3:
        steps.append(Orientationd(keys, axcodes=cfg.orientation, labels=(('L', 'R'), ('P', 'A'), ('I', 'S'))))  # RAS, said explicitly
        if cfg.spacing:
            steps.append(Spacingd(keys, pixdim=cfg.spacing, mode=["bilinear", "nearest"][: len(keys)]))
    steps += intensity_transform(cfg)
    if cfg.crop_foreground:
        steps.append(CropForegroundd(keys, source_key="image", allow_smaller=True))
    modes = ["area", "nearest"][: len(keys)] if cfg.spatial_dims == 2 else ["trilinear", "nearest"][: len(keys)]
    steps.append(Resized(keys, spatial_size=cfg.image_size, mode=modes))
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=keep_meta))
    return steps


def augmentation_transforms(cfg: DataConfig, with_mask: bool = False, patch_size: list[int] | None = None,
                            pos_neg_ratio: float = 1.0) -> list[Any]:
    """Random steps for training only: small affine, intensity jitter, flips where anatomy allows."""
    keys = ["image", "mask"] if with_mask else ["image"]
    steps: list[Any] = []
    if with_mask and patch_size:
        steps.append(RandCropByPosNegLabeld(keys, label_key="mask", spatial_size=patch_size,
                                            pos=pos_neg_ratio, neg=1.0, num_samples=1, allow_smaller=True))
    if not cfg.augment:
        return steps
    if cfg.modality not in ("xray",):  # chest films are not left-right symmetric
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    rot = 0.15 if cfg.spatial_dims == 2 else (0.1, 0.1, 0.1)
    steps.append(RandAffined(keys, prob=0.5, rotate_range=rot, scale_range=0.1,
                             mode=["bilinear", "nearest"][: len(keys)], padding_mode="border"))
    if cfg.acquisition_augment:  # the device path's medtl.train.acquisition; the affine above is its field of view
        k = cfg.acquisition_strength
        sigma = (0.0, 1.0 * k)
        steps += [RandAdjustContrastd("image", prob=0.5, gamma=(1.5**-k, 1.5**k)),
                  RandScaleIntensityFixedMeand("image", prob=0.5, factors=0.3 * k),
                  RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.5),
                  RandGaussianNoised("image", prob=0.5, std=0.05 * k)]
    steps.append(RandScaleIntensityd("image", factors=0.1, prob=0.5))
    steps.append(RandShiftIntensityd("image", offsets=0.05, prob=0.5))
    return steps


def build_transforms(cfg: DataConfig, train: bool, in_channels: int = 1, with_mask: bool = False,
                     patch_size: list[int] | None = None, pos_neg_ratio: float = 1.0, keep_meta: bool = False) -> CaseCompose:
    """The whole chain; random steps last, so caching datasets cache everything before them."""
    steps = deterministic_transforms(cfg, with_mask, keep_meta)
    if train:
        steps += augmentation_transforms(cfg, with_mask, patch_size, pos_neg_ratio)
    if in_channels > 1:
        steps.append(RepeatChanneld("image", repeats=in_channels))
    steps.append(EnsureTyped(["image", "mask"] if with_mask else ["image"], dtype=torch.float32, track_meta=keep_meta))
    return CaseCompose(steps)
