"""DICOM series load throughput (slices/s): medtl's reader chain vs a plain pydicom loop, and the
speed-up of cached preprocessing on the second epoch. Run: python bench/dicom_load.py [--series N]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from medtl.config import DataConfig
from medtl.data.datasets import case_items, make_dataset
from medtl.data.manifest import read_manifest
from medtl.data.synthetic import make_classification_set
from medtl.data.transforms import build_transforms


def plain_loop(folders: list[Path]) -> int:
    """What a script would do: read every file, sort by InstanceNumber, stack, rescale."""
    n = 0
    for folder in folders:
        slices = [pydicom.dcmread(p) for p in folder.iterdir()]
        slices.sort(key=lambda d: int(d.InstanceNumber))
        vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices], -1)
        n += vol.shape[-1]
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--size", type=int, nargs=3, default=[128, 128, 48])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_classification_set(Path(tmp) / "d", n=args.series, kind="dicom", size=args.size)
        m = read_manifest(manifest)
        slices = args.series * args.size[2]
        t0 = time.perf_counter()
        plain_loop([Path(p) for p in m.table["image_path"]])
        plain = time.perf_counter() - t0
        cfg = DataConfig(spatial_dims=3, image_size=[64, 64, 32], modality="ct", cache="memory", augment=False)
        t0 = time.perf_counter()
        ds = make_dataset(case_items(m.table, ["normal", "lesion"]), build_transforms(cfg, train=False), cfg)
        for i in range(len(ds)):
            ds[i]
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        second = time.perf_counter() - t0
    print(f"{args.series} series x {args.size[2]} slices of {args.size[0]}x{args.size[1]}")
    print(f"plain pydicom loop (read+sort+stack):          {slices / plain:9.0f} slices/s")
    print(f"medtl chain, epoch 1 (read+order+resample+cache): {slices / first:6.0f} slices/s  ratio {plain / first:.2f}x")
    print(f"medtl chain, epoch 2 (cached):                  {slices / second:9.0f} slices/s  speed-up over epoch 1 {first / second:.0f}x")


if __name__ == "__main__":
    main()
