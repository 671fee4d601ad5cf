"""GPU training and scoring: the plain MONAI-tutorial loop and medtl side by side, same model, same data,
same machine, one table and one JSON file. Run through ``bench/gpu_suite.sh`` on a GPU machine; ``--quick``
runs the same code at toy sizes (on a CPU too) to check that the suite works before device time is spent.

Plain loop: MONAI Dataset + CPU transforms (load, scale, random flip and intensity) in a DataLoader with
workers, fp32, default memory format, ``loss.item()`` every step. medtl: ``medtl.train.run.train`` as a user
runs it (preprocessing cached, the training split kept on the GPU and augmented there, bf16 autocast,
channels_last, fused AdamW, no host sync in the step), validation and checkpoints included in its time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, RandScaleIntensityd, Resized,
                              ScaleIntensityd)

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set, make_segmentation_set
from medtl.models.registry import build_model
from medtl.steps import fit_model

ROWS = {  # name: (backbone, task, dims, size, batch, n cases, epochs)
    "DenseNet121 2D 224 b64": ("densenet121", "classification", 2, 224, 64, 1024, 3),
    "EfficientNet-B0 2D 224 b64": ("efficientnet-b0", "classification", 2, 224, 64, 1024, 3),
    "ResNet-18 3D 128 b8": ("resnet18", "classification", 3, 128, 8, 48, 3),
    "U-Net (ResNet-10 encoder) 3D 96 b8": ("resnet10", "segmentation", 3, 96, 8, 48, 3),
}
QUICK = {name: (bb, task, dims, 32 if dims == 2 else 16, 8, 24, 1) for name, (bb, task, dims, *_rest) in ROWS.items()}


class GpuBusy:
    """Samples the GPU's utilisation (NVML) every 0.2 s while a block runs; mean percent, or None on CPU."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> "GpuBusy":
        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # noqa: BLE001 - no NVML: no figure, never a crash
                return
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        steady = self.samples[len(self.samples) // 5:]  # the first fifth is start-up (caching, cuDNN autotune)
        return sum(steady) / len(steady) if steady else None


def make_data(root: Path, task: str, dims: int, size: int, n: int) -> Path:
    shape = (size,) * dims
    if task == "segmentation":
        return make_segmentation_set(root, n=n, size=shape, lesion_scale=0.2)
    return make_classification_set(root, n=n, kind="png" if dims == 2 else "nifti", size=shape, split=True)


def plain_loop(manifest: Path, backbone: str, task: str, dims: int, size: int, batch: int, epochs: int) -> float:
    table = pd.read_csv(manifest)
    seg = task == "segmentation"
    keys = ["image", "mask"] if seg else ["image"]
    items = [{"image": str(manifest.parent / r.image), **({"mask": str(manifest.parent / r.mask)} if seg else
              {"label": int(r.label == "lesion")})} for r in table.itertuples()]
    t = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), ScaleIntensityd("image"),
                 Resized(keys, [size] * dims, mode=["area" if dims == 2 else "trilinear", "nearest"][: len(keys)]),
                 RandFlipd(keys, prob=0.5, spatial_axis=0), RandScaleIntensityd("image", factors=0.1, prob=0.5)])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = DataLoader(Dataset(items, t), batch_size=batch, shuffle=True, num_workers=4 if device.type == "cuda" else 0)
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=none"])
    model = build_model(cfg.model, task, dims, 2, [size] * dims).model.to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True) if seg else torch.nn.CrossEntropyLoss()
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            x = b["image"].to(device)
            y = b["mask"].to(device).round() if seg else b["label"].to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # what a tutorial loop logs every step
            seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def medtl_run(manifest: Path, out: Path, backbone: str, task: str, dims: int, size: int, batch: int, epochs: int,
              precision: str = "auto") -> tuple[float, dict[str, float], float | None]:
    seg = task == "segmentation"
    sets = [f"data.manifest={manifest}", f"data.task={task}", f"data.spatial_dims={dims}",
            f"data.image_size={[size] * dims}".replace(" ", ""), "data.modality=none", f"model.backbone={backbone}",
            "model.pretrained=none", "transfer.strategy=scratch", f"train.epochs={epochs}", f"train.batch_size={batch}",
            f"train.precision={precision}", f"train.out_dir={out}", f"name={backbone}-{precision}",
            "train.early_stopping_patience=null", "tracking.enabled=false"]
    sets += ["train.loss=dice_ce"] if seg else ["data.classes=[normal,lesion]"]
    with GpuBusy() as busy:
        start = time.perf_counter()
        result = fit_model(load_config(None, sets))
        wall = time.perf_counter() - start
    n_train = int((result.prepared.table["split"] == "train").sum())
    last = {k: v for k, v in result.history[-1].items() if k.startswith("val_")}
    return n_train * epochs / wall, last, busy.mean


def scoring(manifest: Path, model: Path, out: Path) -> tuple[float, float]:
    """Cases/s of medtl's scorer and of a plain per-batch loop (transform each file, stack, forward)."""
    from medtl.data.transforms import build_transforms
    from medtl.models.checkpoint import load_bundle
    from medtl.scoring import score

    table = pd.read_csv(manifest)
    cases = [{"case_id": str(r.case_id), "image": str(manifest.parent / r.image)} for r in table.itertuples()]
    bundle = load_bundle(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    score(bundle, cases, out, batch_size=64)
    ours = len(cases) / (time.perf_counter() - start)
    t = build_transforms(bundle.config.data, False, bundle.config.model.in_channels)
    net = bundle.model.to(device).eval()
    start = time.perf_counter()
    for i in range(0, len(cases), 64):
        x = torch.stack([t(dict(c))["image"] for c in cases[i:i + 64]]).to(device)
        with torch.no_grad():
            torch.softmax(net(x), 1).cpu()
    plain = len(cases) / (time.perf_counter() - start)
    return plain, ours


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="toy sizes, to check the suite (CPU works)")
    ap.add_argument("--json", type=Path, default=Path("gpu_suite.json"))
    ap.add_argument("--rows", nargs="*", help="row names to run (default all)")
    args = ap.parse_args()
    rows = QUICK if args.quick else ROWS
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    import monai

    report = {"device": device, "torch": torch.__version__, "monai": monai.__version__, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (backbone, task, dims, size, batch, n, epochs) in rows.items():
            if args.rows and name not in args.rows:
                continue
            m = make_data(Path(tmp) / name.split()[0], task, dims, size, n)
            plain = plain_loop(m, backbone, task, dims, size, batch, epochs)
            ours, val, busy = medtl_run(m, Path(tmp) / "runs", backbone, task, dims, size, batch, epochs)
            row = {"row": name, "plain_img_s": plain, "medtl_img_s": ours, "ratio": ours / plain, "gpu_busy_pct": busy,
                   "val_bf16": val}
            if name == next(iter(rows)):  # the fp32 check: same data, same seed, full precision
                _, val32, _ = medtl_run(m, Path(tmp) / "runs", backbone, task, dims, size, batch, epochs, "fp32")
                row["val_fp32"] = val32
                model = Path(tmp) / "runs" / f"{backbone}-auto" / "model.pt"
                row["score_plain_cases_s"], row["score_medtl_cases_s"] = scoring(m, model, Path(tmp) / "scores.csv")
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\n{device}, torch {report['torch']}, MONAI {report['monai']}")
    print(f"{'row':<38} {'plain img/s':>12} {'medtl img/s':>12} {'ratio':>7} {'GPU busy':>9}")
    for r in report["rows"]:
        busy = f"{r['gpu_busy_pct']:.0f}%" if r["gpu_busy_pct"] is not None else "n/a"
        print(f"{r['row']:<38} {r['plain_img_s']:>12.1f} {r['medtl_img_s']:>12.1f} {r['ratio']:>6.2f}x {busy:>9}")
    for r in report["rows"]:
        if "score_medtl_cases_s" in r:
            print(f"scoring ({r['row']} model): plain per-batch {r['score_plain_cases_s']:.1f} cases/s, medtl "
                  f"{r['score_medtl_cases_s']:.1f} cases/s, ratio {r['score_medtl_cases_s'] / r['score_plain_cases_s']:.2f}x")
            print(f"validation bf16 {r['val_bf16']} vs fp32 {r['val_fp32']}")


if __name__ == "__main__":
    main()
