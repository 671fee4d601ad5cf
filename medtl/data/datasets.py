"""Datasets over manifest rows, with MONAI's caching of deterministic preprocessing."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from medtl.config import DataConfig
from medtl.data.transforms import find_data_error
from medtl.errors import DataError
from medtl.host import usable_cpus
from medtl.log import progress_enabled


def case_items(table: pd.DataFrame, classes: list[str] | None, with_mask: bool = False) -> list[dict[str, Any]]:
    """Plain dicts MONAI transforms read: image path, class index, mask path, case id, and the manifest's view."""
    index = {name: i for i, name in enumerate(classes or [])}
    items = []
    for row in table.itertuples(index=False):
        item: dict[str, Any] = {"case_id": str(row.case_id), "image": row.image_path}
        label = getattr(row, "label", None)
        if classes and isinstance(label, str):
            if label not in index:
                raise DataError(f"case {row.case_id}: label {label!r} is not one of {', '.join(classes)}")
            item["label"] = index[label]
        if with_mask:
            item["mask"] = row.mask_path
        if isinstance(getattr(row, "view", None), str):  # checked where the film states no view (CheckAcquisitiond)
            item["view"] = row.view
        items.append(item)
    return items


def make_dataset(items: list[dict[str, Any]], transform: Compose, cfg: DataConfig, cache_key: str = "") -> Dataset:
    """``cache: memory`` → CacheDataset, ``disk`` → PersistentDataset under ``cache_dir``, ``none`` → Dataset.

    Errors while caching are re-raised as the DataError that names the case.
    """
    try:
        if cfg.cache == "memory":
            return _memory_dataset(items, transform, cfg)
        if cfg.cache == "disk":
            root = Path(cfg.cache_dir or Path.home() / ".cache" / "medtl" / "preprocessed")
            digest = hashlib.sha256((cache_key + repr(cfg.model_dump(mode="json"))).encode()).hexdigest()[:16]
            return PersistentDataset(items, transform, cache_dir=root / digest, hash_func=stamped_hash)
        return Dataset(items, transform)
    except Exception as exc:  # noqa: BLE001
        err = find_data_error(exc)
        if err is not None:
            raise err from None
        raise


def stamped_hash(item: dict[str, Any]) -> bytes:
    """The disk cache's key for one case: its entries, each scan file's size and modification time (a detached
    header's data file too), and medtl's version. A scan re-exported under its old name, or read by a fixed reader, is preprocessed again rather
    than trained on from the cache of what it replaced."""
    from medtl import __version__
    from medtl.data.dicom import parse_series_ref
    from medtl.data.itk_formats import data_files

    stamps = []
    for key in ("image", "mask"):
        if isinstance(item.get(key), str):
            path, _ = parse_series_ref(item[key])
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path, *data_files(path)]
            stamps += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    blob = json.dumps([item, stamps, __version__], sort_keys=True, default=str)
    return hashlib.md5(blob.encode(), usedforsecurity=False).hexdigest().encode()


_MEMO: dict[str, list] = {}


def _memory_dataset(items: list[dict[str, Any]], transform: Compose, cfg: DataConfig) -> CacheDataset:
    """CacheDataset whose cached (deterministic) items are shared between datasets over the same cases and
    data config in one process: a pretrained-vs-scratch comparison decodes each scan once, not once per run."""
    key = hashlib.sha256(json.dumps([items, cfg.model_dump(mode="json")], sort_keys=True, default=str).encode()).hexdigest()
    shared = _MEMO.get(key)
    if shared is not None:
        return CacheDataset(items, transform, runtime_cache=shared, copy_cache=False)
    workers = None if len(items) < 64 else (usable_cpus() if cfg.num_workers == "auto" else int(cfg.num_workers) or None)
    before = set(threading.enumerate())
    try:
        ds = CacheDataset(items, transform, num_workers=workers, progress=progress_enabled() and sys.stderr.isatty(),
                          copy_cache=False)
    except Exception:
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=300)  # the cache's pool leaves its threads mid-scan; exiting under them aborts Python
        raise
    if len(_MEMO) >= 4:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = ds._cache
    return ds


class GuardedDataset(Dataset):
    """Wraps a dataset so that a failing case raises its DataError rather than MONAI's nested wrapping.

    With ``skip_bad`` a case that fails at load time is reported once and replaced by the next case, so a
    scan that only shows its fault when read does not end a run that was told to skip bad cases."""

    def __init__(self, inner: Dataset, skip_bad: bool = False) -> None:
        self.inner, self.skip_bad = inner, skip_bad
        self.reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Any:
        for attempt in range(len(self.inner)):
            try:
                return self.inner[(index + attempt) % len(self.inner)]
            except Exception as exc:  # noqa: BLE001
                err = find_data_error(exc)
                if err is None:
                    raise
                if not self.skip_bad:
                    raise err from None
                if str(err) not in self.reported:
                    self.reported.add(str(err))
                    from medtl.log import logger

                    logger.warning("skipping a case that failed to load: %s", err)
        raise DataError("every case failed to load; see the warnings above")
