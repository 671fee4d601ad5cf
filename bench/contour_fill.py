"""Contours to voxels: medtl's even-odd scanline fill (``medtl.data.structures.inside_polygon``) against the plain
alternative, matplotlib's point-in-polygon test of every pixel centre in the contour's box, on body outlines of a
512 x 512 planning CT, slice by slice. Both mark the same pixels (checked here too). Run: python bench/contour_fill.py
[--slices N] [--vertices V]"""

from __future__ import annotations

import argparse
import time

import numpy as np
from matplotlib.path import Path as Polygon

from medtl.data.structures import inside_polygon


def outlines(slices: int, vertices: int, seed: int = 0) -> list[np.ndarray]:
    """Body-like outlines: an ellipse 480 x 400 pixels with a wobbling edge, one per slice."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    shapes = []
    for _ in range(slices):
        r = 1 + 0.03 * np.sin(5 * t + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 0.002, vertices)
        shapes.append(np.c_[256.3 + 240 * r * np.cos(t), 256.3 + 200 * r * np.sin(t)])
    return shapes


def box(polygon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(polygon.min(0)).astype(int), 0, None)
    return lo, np.minimum(np.ceil(polygon.max(0)).astype(int) + 1, 512)


def matplotlib_fill(polygon: np.ndarray) -> np.ndarray:
    lo, hi = box(polygon)
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    return Polygon(polygon).contains_points(np.c_[ii.ravel(), jj.ravel()]).reshape(ii.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=60)
    ap.add_argument("--vertices", type=int, default=500)
    args = ap.parse_args()
    shapes = outlines(args.slices, args.vertices)
    start = time.perf_counter()
    ours = [inside_polygon(p, *box(p)) for p in shapes]
    medtl_s = time.perf_counter() - start
    start = time.perf_counter()
    plain = [matplotlib_fill(p) for p in shapes]
    plain_s = time.perf_counter() - start
    differ = sum(int((a != b).sum()) for a, b in zip(ours, plain))
    print(f"{args.slices} body outlines of {args.vertices} vertices on a 512 x 512 grid")
    print(f"medtl scanline fill:          {1000 * medtl_s / args.slices:7.1f} ms a slice")
    print(f"matplotlib point-in-polygon:  {1000 * plain_s / args.slices:7.1f} ms a slice")
    print(f"ratio: {plain_s / medtl_s:.1f}x; pixels marked differently: {differ}")


if __name__ == "__main__":
    main()
