"""From a config to checked, split cases and data loaders: the part of training that touches data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader

from medtl.config import DataConfig, TrainConfig
from medtl.data.check import OTHER_VIEW, Geometry, check_manifest, view_counts
from medtl.data.datasets import GuardedDataset, case_items, make_dataset
from medtl.data.dicom import film_view
from medtl.data.manifest import Manifest, class_names, read_manifest, rows_of_split
from medtl.data.shortcuts import shortcuts
from medtl.data.splits import split_manifest, validation_from_training, with_saved_splits
from medtl.data.transforms import build_transforms
from medtl.errors import ConfigError, DataError
from medtl.log import logger
from medtl.train.device_data import lone_last_batch
from medtl.train.runtime import Runtime, batch_bytes, default_workers
from medtl.train.samplers import ShardedSampler, balanced_sampler


@dataclass
class PreparedData:
    manifest: Manifest
    table: pd.DataFrame
    """Cases that train/validate/test, with their split (bad cases removed when skipping was asked for)."""
    classes: list[str]
    skipped: list[str]
    views: list[str] | None = None
    """The DICOM views the model takes: data.views, or those the manifest's films state (``film_views``)."""
    shortcuts: list[str] = field(default_factory=list)
    """What the labels go with besides the finding (``medtl.data.shortcuts``): a limitation the model card states."""


def preflight(data: DataConfig, train: TrainConfig) -> Manifest:
    """Config-vs-manifest checks that need no image: refuse before any scan is read."""
    if data.manifest is None:
        raise ConfigError("data.manifest: no manifest given; set it in the config or with --set data.manifest=PATH")
    if data.spatial_dims == 3 and data.modality == "xray":  # the default, left in a volume's config
        logger.warning("data.modality is xray (the default) for 3-D scans: volumes get a radiograph's percentile "
                       "scaling; set data.modality to ct, mr, us or none")
    manifest = read_manifest(data.manifest, data.data_root)
    if data.task == "segmentation" and not manifest.has_masks:
        raise ConfigError(f"data.task: segmentation needs a mask column, and {manifest.path.name} has none; "
                          "add masks or set data.task=classification")
    if data.task == "classification" and not manifest.has_labels:
        if "label" in manifest.table:
            raise ConfigError(f"data.task: classification needs labels, and {manifest.path.name}'s label column is "
                              "empty; fill it")
        from medtl.data.findings import findings_hint

        columns = [c for c in manifest.table.columns if c not in ("image_path", "mask_path")]
        raise ConfigError(f"data.task: classification needs a label column, and {manifest.path.name} has none (it has "
                          f"{', '.join(columns)}); name the column that holds the classes 'label'"
                          + findings_hint(manifest.table, manifest.path))
    if data.task == "classification" and train.loss not in ("ce", "focal"):
        raise ConfigError(f"train.loss: {train.loss} is for segmentation; use ce or focal for classification")
    if data.task == "segmentation" and train.loss not in ("dice_ce", "dice_focal"):
        raise ConfigError(f"train.loss: {train.loss} is for classification; use dice_ce or dice_focal for segmentation")
    classes = class_names(manifest, data.classes)
    if isinstance(train.class_weights, dict):
        unknown = sorted(set(train.class_weights) - set(classes))
        if unknown:
            raise ConfigError(f"train.class_weights: {unknown[0]!r} is not a class; classes are {', '.join(classes)}")
    missing = [c for c in data.subgroups if c not in manifest.table]
    if missing:
        raise ConfigError(f"data.subgroups: {missing[0]!r} is not a column of {manifest.path.name}")
    return manifest


def prepare_cases(data: DataConfig, seed: int, manifest: Manifest, out_dir: Path, check: bool = True) -> PreparedData:
    """Checks every case (header level), drops listed bad cases if allowed, and splits once (splits.csv)."""
    classes = class_names(manifest, data.classes) if data.task == "classification" else data.mask_classes
    if data.task == "classification" and not data.classes and len(classes) == 2:
        _say_positive_class(classes)
    table, skipped, seen = _checked_cases(data, manifest, classes) if check else (manifest.table, [], None)
    seen_views = view_counts(seen) if seen is not None else None
    noted = shortcuts(table, seen or {}, data.subgroups) if data.task == "classification" else []
    for line in noted:
        logger.warning("%s: %s", manifest.path.name, line)
    splits_file, fresh = out_dir / "splits.csv", False
    if table["split"].isna().all():
        if splits_file.is_file():
            table = with_saved_splits(table, splits_file)
        else:
            table, fresh = split_manifest(table, 0.15, 0.15, seed), True
    elif (table["split"] == "train").any() and not (table["split"] == "val").any():
        table, fresh = validation_from_training(table, 0.15, seed), True
    if data.task == "classification":
        present = [c for c, n in zip(classes, train_label_counts(table, classes)) if n]
        if len(present) < 2:  # before the split is saved: fixed labels get a fresh, stratified one
            raise DataError(f"{manifest.path.name}: the training split holds {' and '.join(present) or 'no'} cases "
                            "only; a classifier needs cases of at least two classes there: check the labels, "
                            "data.classes and the split column")
    if fresh:
        out_dir.mkdir(parents=True, exist_ok=True)
        table[["case_id", "split"]].to_csv(splits_file, index=False)
    if data.views is not None or data.spatial_dims == 3:
        views = data.views
        if views and seen_views is not None and not seen_views:
            logger.warning("data.views is %s, and no film of %s states a view (PNG, NIfTI, or DICOM without "
                           "ViewPosition, and no view column): nothing is checked against it, in training or in "
                           "scoring", ", ".join(views), manifest.path.name)
    else:  # the films' own views, from the headers the check read where it ran
        views = (sorted(seen_views) or None) if seen_views is not None else film_views(table)
        if seen_views and len(seen_views) > 1:
            logger.info("films of %d views train one model (%s); data.views names the ones a model is to take alone",
                        len(seen_views), ", ".join(f"{v} {n:,}" for v, n in sorted(seen_views.items())))
    return PreparedData(manifest, table.reset_index(drop=True), classes, skipped, views, noted)


def _checked_cases(data: DataConfig, manifest: Manifest, classes: list[str]
                   ) -> tuple[pd.DataFrame, list[str], dict[str, Geometry]]:
    """The cases fit to train on, the bad ones skipped (where allowed), and each fit image's geometry. A film of a
    view data.views does not name is left out, not a fault: the config chose the views."""
    seen: dict[str, Geometry] = {}
    problems = check_manifest(manifest, classes if data.task == "classification" else None, data.spatial_dims,
                              modality=data.modality, views=data.views, seen=seen)
    other_views = {p.case_id for p in problems if p.kind == OTHER_VIEW}
    table, problems = manifest.table, [p for p in problems if p.case_id not in other_views]
    if other_views and other_views >= set(table["case_id"].astype(str)):
        raise DataError(f"data.views is {', '.join(data.views or [])}, and no film of {manifest.path.name} is of those "
                        f"views; `medtl manifest check {manifest.path}` counts the views its films are")
    if other_views:
        named = ",".join(data.views or [])
        logger.warning("data.views is %s: %d film(s) of other views left out (first: case %s); `medtl manifest check "
                       "%s --set data.views=[%s]` lists them", named, len(other_views), sorted(other_views)[0],
                       manifest.path.name, named)
        table = table[~table["case_id"].isin(other_views)]
    unstated = sorted(case for case, g in seen.items() if not g.view)
    if data.views and unstated and len(unstated) < len(seen):  # where none states one, prepare_cases says so
        logger.warning("data.views is %s: %d film(s) state no view and are kept, unjudged (first: case %s); give them "
                       "a view column in the manifest", ",".join(data.views), len(unstated), unstated[0])
    if not problems:
        return table, [], seen
    bad = sorted({p.case_id for p in problems})
    if not data.skip_bad_cases:
        first = problems[0]
        raise DataError(f"{manifest.path.name}: {len(problems)} problem(s) in {len(bad)} case(s), first: case {first.case_id}: "
                        f"{first.detail}; run `medtl manifest check {manifest.path}` for all, or set data.skip_bad_cases=true")
    logger.warning("skipping %d bad case(s): %s", len(bad), ", ".join(bad))
    return table[~table["case_id"].isin(bad)], bad, seen


def film_views(table: pd.DataFrame) -> list[str] | None:
    """The ViewPositions the manifest's DICOM films state, or its view column for films that state none: the views a
    2-D model then takes alone (CheckAcquisitiond), so a model of frontal chest films refuses a lateral one rather
    than answering for it. None where no film says; a file that cannot be read states nothing (checking the cases is
    ``check_manifest``'s)."""
    stated = table["view"] if "view" in table else pd.Series(pd.NA, index=table.index)
    views = {film_view(ref) or (said if isinstance(said, str) else "")
             for ref, said in zip(table["image_path"], stated) if isinstance(ref, str)} - {""}
    return sorted(views) or None


NEGATIVE_WORDS = {"normal", "negative", "neg", "healthy", "benign", "no", "none", "absent", "control", "clear", "0"}


def _say_positive_class(classes: list[str]) -> None:
    """Classes taken from the manifest are in sorted order, and the second is the positive one (sensitivity,
    prevalence, the threshold): 'abnormal, normal' would make 'normal' the finding. Said, and warned where the
    positive class's name reads like the absence of one."""
    say = logger.warning if classes[1].strip().lower() in NEGATIVE_WORDS else logger.info
    say("classes from the manifest, sorted: %s; the positive class (sensitivity, prevalence, the threshold) is %r; set "
        "data.classes to [%s, %s] to make %r the positive one", ", ".join(classes), classes[1], classes[1], classes[0],
        classes[0])


def device_loader(data: DataConfig, train: TrainConfig, in_channels: int, prepared: PreparedData, rt: Runtime,
                  generator: torch.Generator | None):
    """The training split as a DeviceLoader when ``train.data_on_device`` asks for it (and it fits), else
    None. Samples in the order the DataLoader's sampler would give; image-level augmentation only (flip,
    intensity, and the acquisition changes with their zoom), so the random affine and patch crops of the CPU chain
    stay with the DataLoader path."""
    from medtl.train.acquisition import AcquisitionAugment
    from medtl.train.device_data import DeviceAugment, DeviceLoader, fits_on_device

    seg = data.task == "segmentation"
    wanted = train.data_on_device is True or (train.data_on_device == "auto" and rt.device.type == "cuda")
    if not wanted or rt.distributed or (seg and train.patch_size):
        return None
    part = rows_of_split(prepared.table, "train")
    items = case_items(part, prepared.classes if not seg else None, with_mask=seg)
    transform = build_transforms(data, False, in_channels, seg)
    items, dataset = _dataset_skipping_bad(items, transform, data, "train:device", prepared.skipped)
    first = dataset[0]["image"]
    if not fits_on_device(len(items), tuple(first.shape), rt.device):
        logger.info("training split does not fit in device memory: batches come through the DataLoader")
        return None
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.as_tensor(s["image"]) for s in samples]).to(rt.device)
    key = "mask" if seg else "label"
    targets = torch.stack([torch.as_tensor(s[key]) for s in samples]).to(rt.device) if seg else \
        torch.as_tensor([s["label"] for s in samples], device=rt.device)
    if train.sampler == "balanced" and not seg:
        sampler = balanced_sampler(np.array([it["label"] for it in items]), train.seed)
        if generator is not None:
            sampler.generator = generator
    else:
        sampler = torch.utils.data.RandomSampler(range(len(items)), generator=generator)
    acquisition = AcquisitionAugment.at_strength(data.acquisition_strength) if data.acquisition_augment else None
    augment = DeviceAugment(rt.device, flip=data.modality != "xray", acquisition=acquisition) if data.augment else None
    logger.info("training split on %s: %d images, augmented there", rt.device, len(items))
    return DeviceLoader(images, targets, key, train.batch_size, sampler, augment, generator)


def _dataset_skipping_bad(items: list[dict], transform, data: DataConfig, key: str, skipped: list[str]):
    """The dataset over ``items``; with ``data.skip_bad_cases`` a case that fails while being cached (a NaN
    volume the header check could not see) is dropped, named and added to ``skipped``, like one found in
    preflight, instead of ending the run."""
    while True:
        try:
            return items, make_dataset(items, transform, data, cache_key=key)
        except DataError as err:
            bad = next((it["case_id"] for it in items if str(err).startswith(f"case {it['case_id']}:")), None)
            if bad is None:
                raise
            if not data.skip_bad_cases:  # found while loading, not by the header check: the same way out
                raise DataError(f"{err}; or set data.skip_bad_cases=true to train without it") from None
            logger.warning("skipping case found bad while loading: %s", err)
            skipped.append(bad)
            items = [it for it in items if it["case_id"] != bad]
            if not items:
                raise DataError("every case of a split failed to load; see the warnings above") from None


def train_label_counts(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Training cases per class, in class order (for class weights and the sampler)."""
    labels = table.loc[table["split"] == "train", "label"]
    return np.array([(labels == c).sum() for c in classes])


def make_loader(data: DataConfig, train_cfg: TrainConfig, in_channels: int, prepared: PreparedData, split: str,
                train: bool, rt: Runtime, generator: torch.Generator | None = None) -> DataLoader | None:
    """A loader over one split; the training one draws class-balanced batches when configured."""
    part = rows_of_split(prepared.table, split)
    if part.empty:
        return None
    seg = data.task == "segmentation"
    items = case_items(part, prepared.classes if not seg else None, with_mask=seg)
    transform = build_transforms(data, train, in_channels, seg, train_cfg.patch_size if train else None,
                                 train_cfg.pos_neg_ratio)
    items, inner = _dataset_skipping_bad(items, transform, data, f"{split}:{train}", prepared.skipped)
    dataset = GuardedDataset(inner, skip_bad=data.skip_bad_cases)
    sampler = None
    if train and train_cfg.sampler == "balanced" and not seg:
        sampler = balanced_sampler(np.array([it["label"] for it in items]), train_cfg.seed)
        if generator is not None:
            sampler.generator = generator
    if rt.distributed:
        base = sampler or (torch.utils.data.RandomSampler(dataset, generator=generator) if train else range(len(dataset)))
        sampler = ShardedSampler(base, rt.rank, rt.world)
    size = (train_cfg.patch_size if train and seg else None) or data.image_size
    workers = default_workers(rt.device, data.num_workers, batch_bytes(train_cfg.batch_size, in_channels, size, seg))
    drawn = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=train_cfg.batch_size, shuffle=train and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, pin_memory=rt.device.type == "cuda",
                      drop_last=train and lone_last_batch(drawn, train_cfg.batch_size), persistent_workers=workers > 0)
