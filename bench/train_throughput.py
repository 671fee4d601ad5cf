"""Training throughput (images/s, end to end with data loading): a plain MONAI-tutorial loop (fp32, default
memory format, transforms on every epoch) vs medtl's loop (cached preprocessing; bf16 autocast on GPU,
channels_last on GPU and for 2D on CPU), same model and data. Prints both and the ratio.

    python bench/train_throughput.py --dims 2 --size 224 --batch 64 --n 512     # GPU: DenseNet121 2D
    python bench/train_throughput.py --dims 3 --size 96 --batch 8 --n 64        # GPU: 3D U-Net-like seg
    python bench/train_throughput.py                                             # small CPU defaults
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set
from medtl.models.registry import build_model
from medtl.train.run import train


def plain_loop(manifest: Path, size: int, dims: int, batch: int, epochs: int, backbone: str) -> float:
    import pandas as pd

    table = pd.read_csv(manifest)
    items = [{"image": str(manifest.parent / r.image), "label": int(r.label == "lesion")} for r in table.itertuples()]
    t = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
                 Resized("image", [size] * dims)])
    loader = DataLoader(Dataset(items, t), batch_size=batch, shuffle=True, num_workers=0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=none"])
    model = build_model(cfg.model, "classification", dims, 2, [size] * dims).model.to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            x, y = b["image"].to(device), b["label"].to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def medtl_loop(manifest: Path, out: Path, size: int, dims: int, batch: int, epochs: int, backbone: str) -> float:
    cfg = load_config(None, [f"data.manifest={manifest}", "data.classes=[normal,lesion]", f"data.spatial_dims={dims}",
                             f"data.image_size={[size] * dims}".replace(" ", ""), "data.modality=none", "data.augment=false",
                             f"model.backbone={backbone}", "model.pretrained=none", "transfer.strategy=scratch",
                             f"train.epochs={epochs}", f"train.batch_size={batch}", f"train.out_dir={out}",
                             "train.early_stopping_patience=null", "tracking.enabled=false"])
    start = time.perf_counter()
    result = train(cfg)
    n_train = int((result.prepared.table["split"] == "train").sum())
    return n_train * epochs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--backbone", default=None)
    args = ap.parse_args()
    backbone = args.backbone or ("densenet121" if args.dims == 2 else "resnet18")
    with tempfile.TemporaryDirectory() as tmp:
        kind = "png" if args.dims == 2 else "nifti"
        shape = (args.size,) * args.dims
        m = make_classification_set(Path(tmp) / "d", n=args.n, kind=kind, size=shape)
        plain = plain_loop(m, args.size, args.dims, args.batch, args.epochs, backbone)
        ours = medtl_loop(m, Path(tmp) / "runs", args.size, args.dims, args.batch, args.epochs, backbone)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{backbone} {args.dims}D {args.size}px batch {args.batch}, {args.epochs} epochs on {device}")
    print(f"plain MONAI loop: {plain:8.1f} img/s")
    print(f"medtl train:      {ours:8.1f} img/s (includes validation and checkpoints)  ratio {ours / plain:.2f}x")


if __name__ == "__main__":
    main()
