"""The config's sections, one frozen pydantic model each, with the checks that belong to one section alone.

``medtl.config`` assembles them into ``Config`` and loads it; checks across sections live there.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from medtl.errors import ConfigError


DEFAULT_MASK_CLASSES = ["background", "foreground"]
Strategy = Literal["scratch", "feature_extraction", "fine_tune", "full"]
Device = Literal["auto", "cpu", "cuda"]
CaseIds = Literal["folder", "path"]
"""How found scans are named: by their own file or series folder, or by their whole path below the folder given
(for exports whose series folders repeat, PATIENT/STUDY/SE0001; folder names may then carry patient names)."""
Uncertain = Literal["present", "absent", "drop"]
"""What a finding marked -1 (uncertain) in its own column becomes: CheXpert's U-Ones, U-Zeros, or no row."""
DEFAULT_MAX_VOXELS = 2**29  # 2 GiB as float32; MEDTL_MAX_VOXELS raises or lowers it


def max_voxels() -> int:
    """The most voxels one scan, or one model input, may hold: a header or a config asking for more is refused
    before anything is allocated."""
    try:
        return int(os.environ.get("MEDTL_MAX_VOXELS", DEFAULT_MAX_VOXELS))
    except ValueError:
        raise ConfigError("MEDTL_MAX_VOXELS: not a whole number; unset it or give e.g. 536870912") from None


class Section(BaseModel):
    """Base of every section: unknown keys are errors and values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    manifest: Path | None = None
    """Manifest CSV; a relative path resolves against the config file's folder (the working folder for --set)."""
    task: Literal["classification", "segmentation"] = "classification"
    classes: list[str] | None = None
    """Class names in label order, the second the positive one of a binary task; None takes them from the manifest,
    sorted (and says which that makes positive)."""
    spatial_dims: Literal[2, 3] = 2
    image_size: list[int] = Field(default_factory=lambda: [64, 64])
    """Model input size per axis; each between 2 and 4096 voxels."""
    modality: Literal["ct", "mr", "xray", "us", "none"] = "xray"
    views: list[str] | None = None
    """The DICOM ViewPosition values (PA, AP, LL...) of the films a 2-D model takes; a film of another view is that
    case's error when scoring. None: training takes them from the manifest's films (any view, if none says)."""
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    spacing: list[float] | None = None
    """Resample to this voxel spacing in mm (3D); None keeps the native spacing."""
    orientation: str = "RAS"
    crop_foreground: bool = False
    augment: bool = True
    acquisition_augment: bool = False
    """Also train on random changes of acquisition: intensity response (gamma, contrast), blur, noise and field of
    view, each on half the images (BigAug, Zhang et al. 2020), for a model meant for other sites and scanners.
    Off by default (docs/studies.md: what it did on the demo's films)."""
    acquisition_strength: float = Field(1.0, gt=0, le=3)
    """Scales every bound of the acquisition changes: 1 is gamma 1/1.5-1.5, contrast ±30 %, blur σ up to 1 voxel,
    noise up to 5 % of the range, zoom ±10 %, shift ±5 % of the field."""
    cache: Literal["none", "memory", "disk"] = "memory"
    cache_dir: Path | None = None
    data_root: Path | None = None
    """Allow image paths outside the manifest's folder, but only under this root."""
    subgroups: list[str] = Field(default_factory=list)
    num_workers: int | Literal["auto"] = "auto"
    skip_bad_cases: bool = False

    @property
    def mask_classes(self) -> list[str]:
        """Segmentation's classes, one per mask value: as configured, or background and foreground."""
        return self.classes or DEFAULT_MASK_CLASSES

    @field_validator("classes", mode="before")
    @classmethod
    def _class_codes_are_text(cls, v: Any) -> Any:
        """``classes: [0, 1]`` names classes coded 0 and 1, as a manifest's labels (text) hold them; YAML reads ints.
        ``[no, yes]`` YAML reads as false and true, whose spelling is lost, so that says how to write them."""
        if isinstance(v, list) and any(isinstance(c, bool) for c in v):
            raise ValueError("YAML reads no, yes, off, on, false and true unquoted as booleans; quote the class names "
                             "(classes: ['no', 'yes'])")
        if isinstance(v, list):
            return [str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in v]
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_number_for_every_axis(cls, values: Any) -> Any:
        """``image_size: 224`` is 224 on every axis, ``spacing: 1.5`` isotropic, as people write them."""
        if isinstance(values, dict):
            axes = values.get("spatial_dims", 2)
            for key, n in (("image_size", axes), ("spacing", 3)):
                if isinstance(values.get(key), (int, float)) and not isinstance(values[key], bool) and n in (2, 3):
                    values = {**values, key: [values[key]] * n}
        return values

    @field_validator("views")
    @classmethod
    def _views_as_dicom_writes_them(cls, v: list[str] | None) -> list[str] | None:
        return sorted({str(view).strip().upper() for view in v}) if v is not None else None

    @model_validator(mode="after")
    def _size_matches_dims(self) -> "DataConfig":
        if len(self.image_size) != self.spatial_dims:
            raise ValueError(f"image_size has {len(self.image_size)} values but spatial_dims is {self.spatial_dims}")
        if any(not 2 <= n <= 4096 for n in self.image_size):
            raise ValueError(f"image_size {self.image_size}: every size must be between 2 and 4096")
        if math.prod(self.image_size) > max_voxels():
            raise ValueError(f"image_size {self.image_size}: {math.prod(self.image_size):,} voxels per case, above the "
                             f"limit of {max_voxels():,} (MEDTL_MAX_VOXELS); a 3D model input is usually 128-256 a side")
        names = [str(c).strip() for c in self.classes or []]
        if self.classes is not None and (len(names) < 2 or len(set(names)) < len(names) or "" in names):
            raise ValueError(f"classes {self.classes}: name two or more different classes, in label order (or leave it "
                             "out to take them from the manifest)")
        if self.acquisition_augment and not self.augment:
            raise ValueError("acquisition_augment is true but augment is false, which turns every random step off; "
                             "set data.augment to true, or acquisition_augment to false")
        return self


class ModelConfig(Section):
    backbone: str = "efficientnet-lite0"
    pretrained: Literal["imagenet", "medicalnet", "none"] = "imagenet"
    weights: Path | None = None
    """Explicit weight file; skips the cache and download."""
    in_channels: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    stem_rule: Literal["sum", "mean"] = "sum"
    """How pretrained 3-channel stem kernels become in_channels kernels (sum keeps activations' scale for grey inputs)."""


class TransferConfig(Section):
    strategy: Strategy = "fine_tune"
    freeze_until: str | None = None
    """Stages up to and including this one stay frozen (fine_tune)."""
    gradual_unfreeze: int | None = Field(None, ge=1)
    """Unfreeze one more stage every N epochs."""
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0)
    head: Literal["linear", "logistic"] = "linear"
    probe_first: bool = False
    """fine_tune and full: fit the head on the frozen features before any layer moves (LP-FT, Kumar et al. 2022), so
    the first gradients from a random head do not distort pretrained features; scratch and feature_extraction
    ignore it."""

    @property
    def probes_first(self) -> bool:
        """Whether this run starts from the probe (``probe_first`` where the strategy fine-tunes pretrained layers)."""
        return self.probe_first and self.strategy in ("fine_tune", "full")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = Field(0.0, ge=0.0)
    loss: Literal["ce", "focal", "dice_ce", "dice_focal"] = "ce"
    class_weights: Literal["none", "inverse_frequency", "effective_number"] | dict[str, float] = "none"
    effective_number_beta: float = Field(0.999, gt=0.0, lt=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_alpha: float | None = Field(None, ge=0.0, le=1.0)
    mixup_alpha: float | None = Field(None, gt=0.0)
    """Mixup (Zhang et al. 2018) for classification: each batch trains on convex mixes of pairs of its cases and
    their labels, the mixing weight drawn from Beta(alpha, alpha); None for none. Ignored by feature_extraction."""
    ema_epochs: float | None = Field(None, gt=0.0)
    """Validate, keep and register the exponential moving average of the weights over about this many epochs of
    steps (debiased), not the last step's weights; None for the last step's. On the demo's fine-tune it was steadier
    from seed to seed and better on the test films; on a three-epoch training from scratch it was worse
    (docs/studies.md). Ignored by feature_extraction."""
    include_background: bool = False
    sampler: Literal["none", "balanced"] = "none"
    pos_neg_ratio: float = Field(1.0, gt=0.0)
    patch_size: list[int] | None = None
    device: Device = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    """Channels-last memory on a GPU, and for 2D models on a CPU (3D stays contiguous there: slower)."""
    compile: bool = False
    data_on_device: Literal["auto"] | bool = "auto"
    """Keep the preprocessed training split on the device and augment there (auto: on a GPU, when it fits)."""
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0.0)
    early_stopping_patience: int | None = Field(5, ge=1)
    threshold_rule: Literal["youden", "sensitivity", "fixed"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0)
    out_dir: Path = Path("runs")
    max_steps_per_epoch: int | None = Field(None, ge=1)


class EvaluateConfig(Section):
    bootstrap: int = Field(1000, ge=0)
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    bins: int = Field(15, ge=2)
    min_subgroup_size: int = Field(10, ge=1)
    calibrate: bool = True
    drift_calibration: bool = False
    """Fit the temperature on the validation cases and on copies of them under growing Gaussian noise (Tomani et al.
    2021), so a model stays honest where scans drift from the training data; off, on the clean cases alone."""
    site_temperature: bool = False
    """Fit the temperature on the evaluated cases' own scans, unlabelled (PseudoCal, Hu et al. 2024), in place of the
    model's validation temperature and before any prior shift: for a site whose scans differ from the training
    hospital's. The threshold moves with it, so every case is called as before; the report gives ECE at both
    temperatures. The stored model keeps its validation temperature. On the demo's chest films it overshoots, on the
    validation films and the test films alike (docs/studies.md, twenty-eighth session)."""
    prevalence: float | Literal["em"] | None = None
    """Deployment prevalence of the positive class: a known value in (0, 1), ``em`` to estimate it from the
    evaluated cases' unlabelled scores (Saerens et al. 2002), or None for no prior-shift correction."""
    tta: bool = False
    """Test-time mirroring: every prediction (validation, evaluation, scoring) averages the scan as read and its
    left-right mirror, the flip training augments with, and takes the mirrored answer back (two passes of the
    model; nnU-Net's default). Stored with the model, so it is scored as it was evaluated."""
    gradcam: int = Field(4, ge=0)
    figures: bool = True
    """Write the figures (PNG and SVG); a study of many small runs, or a test, may skip them."""
    typicality: bool = True
    """Store with a classifier what scoring needs to mark cases unlike the training ones (``medtl.typicality``): one
    pass, after training, over up to 1,000 training and 2,000 validation cases."""
    seed: int = Field(0, ge=0)

    @field_validator("prevalence")
    @classmethod
    def _prevalence_is_a_fraction(cls, v: float | str | None) -> float | str | None:
        return a_prevalence(v)


def a_prevalence(v: float | str | None) -> float | str | None:
    """A deployment prevalence as configs and ``--prevalence`` take it: a fraction in (0, 1), ``em``, or None."""
    if isinstance(v, float) and not 0.0 < v < 1.0:
        raise ValueError("prevalence must be between 0 and 1 (exclusive), 'em', or null")
    return v


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = None
    """None: MLFLOW_TRACKING_URI, else MLflow's local SQLite default."""
    experiment: str = "medtl"
    registered_model: str | None = None
    alias: str = "candidate"
    log_model: bool = True
    """Log the MLflow pyfunc model with each training run (studies of many small runs turn it off)."""
    intended_use: str | None = None
    """One paragraph for the model card: clinical question, population, setting, user."""
    gate_min_auroc_ci_low: float | None = Field(0.7, ge=0.0, le=1.0)
    """``medtl models promote`` refuses a version whose test AUROC CI lower bound is below this."""
    gate_max_ece: float | None = Field(0.1, ge=0.0, le=1.0)
    """... or whose calibrated test ECE is above this (``--force`` overrides and is recorded)."""

    @field_validator("alias")
    @classmethod
    def _alias_mlflow_takes(cls, alias: str) -> str:
        problem = alias_problem(alias)
        if problem:
            raise ValueError(problem)
        return alias

    @field_validator("registered_model")
    @classmethod
    def _name_mlflow_takes(cls, name: str | None) -> str | None:
        if name is not None and (not name.strip() or "/" in name or ":" in name):
            raise ValueError(f"{name!r}: a registered model name is not blank and has no '/' or ':'")
        return name


def alias_problem(alias: str) -> str | None:
    """Why MLflow's registry would refuse ``alias`` (its rules), so that a run or a promotion says it up front."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias):
        return f"alias {alias!r}: use letters, digits, '_' and '-' only (e.g. champion)"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return f"alias {alias!r} is reserved by MLflow (latest, v1, v2, ...); choose another, e.g. champion"
    return None


class ScoreConfig(Section):
    """``medtl run batch_score``: how new studies are scored."""

    batch_size: int = Field(16, ge=1)
    device: Device = "auto"
    num_workers: int | Literal["auto"] = "auto"
    """Decoding workers (auto: several on a GPU, none on a CPU, where they would take the inference cores)."""
    engine: Literal["local", "spark", "ray"] = "local"
    """spark: mlflow's spark_udf over a registered model; ray: Ray Data actors over it; both Parquet out
    (``--engine`` of ``medtl score``)."""
    spark_master: str = "local[*]"
    ray_address: str | None = None
    """A Ray cluster (auto, HOST:6379, ray://HOST:10001) or local (a Ray started on this machine); None: RAY_ADDRESS,
    else local."""
    ray_workers: int | None = Field(None, ge=1)
    ray_gpus: float | None = Field(None, ge=0)
    chunk: int = Field(1000, ge=1, validation_alias=AliasChoices("chunk", "spark_chunk"))
    """Spark, Ray: cases per committed chunk (``spark_chunk``, its earlier name, is read too)."""
    prevalence: float | Literal["em"] | None = None
    """This site's prevalence of the positive class, or ``em`` for the one the batch's scores imply (``medtl score
    --prevalence``); the local engine only."""

    @field_validator("prevalence")
    @classmethod
    def _prevalence_is_a_fraction(cls, v: float | str | None) -> float | str | None:
        return a_prevalence(v)


class AdaptationConfig(Section):
    method: Literal["none", "adabn", "coral", "dann"] = "none"
    target_manifest: Path | None = None
    weight: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _target_for_method(self) -> "AdaptationConfig":
        if self.method != "none" and self.target_manifest is None:
            raise ValueError(f"method {self.method} needs target_manifest: a manifest of the new site's scans "
                             "(labels not needed)")
        return self


class StudyConfig(Section):
    """The label-efficiency study (``medtl run label_efficiency``)."""

    strategies: list[Strategy] = Field(default_factory=lambda: ["scratch", "feature_extraction", "fine_tune"], min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.05, 0.10, 0.25, 1.0])
    """Shares of the training split, nested: each smaller subset lies inside the larger ones."""
    seeds: int = Field(3, ge=1)
    """Repeats, each with another draw of the subset, for fractions up to ``small``."""
    small: float = Field(0.10, gt=0.0, le=1.0)
    compare: tuple[Strategy, Strategy] = ("fine_tune", "scratch")
    """The pair whose paired difference (ΔAUROC, DeLong, decision curve) is reported at every size."""

    @model_validator(mode="after")
    def _compare_two(self) -> "StudyConfig":
        a, b = self.compare
        if a == b:
            raise ValueError(f"compare ({a}, {b}) compares a strategy with itself; name two different ones")
        return self

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < f <= 1.0 for f in v):
            raise ValueError("fractions must be shares of the training split in (0, 1]")
        return sorted(set(v))
