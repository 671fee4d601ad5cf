"""Where a 2-D classifier looked: Grad-CAM (MONAI) of the positive class on the model's input, for the examples an
evaluation shows and for every case ``score --heatmaps`` scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtl.log import logger
from medtl.models.checkpoint import ModelBundle

CAM_LAYERS = {"efficientnet": "backbone._conv_head", "densenet": "backbone.features.denseblock4",
              "resnet": "backbone.layer4"}
"""The last convolutional layer of each backbone family, whose activations Grad-CAM weighs."""


def cam_layer(bundle: ModelBundle) -> str | None:
    return next((v for k, v in CAM_LAYERS.items() if bundle.spec.model.backbone.startswith(k)), None)


def heatmap_problem(bundle: ModelBundle) -> str | None:
    """Why this model gets no heat maps, or None."""
    if bundle.task != "classification" or len(bundle.classes) != 2 or bundle.spec.data.spatial_dims != 2:
        return "heat maps are drawn for 2-D binary classifiers"
    if cam_layer(bundle) is None:
        return f"no Grad-CAM layer known for {bundle.spec.model.backbone}"
    return None


def cam_maps(bundle: ModelBundle, batch: torch.Tensor, layer: str, device: torch.device) -> list[np.ndarray]:
    """Grad-CAM of the positive class for each input of ``batch``, scaled 0-1; empty where MONAI could not draw
    them (a missing heat map must not cost an evaluation or a scoring run)."""
    from monai.visualize import GradCAM

    model = bundle.model.to(device).eval()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # Grad-CAM needs gradients through the target layer, even in a frozen backbone
        p.requires_grad_(True)
    try:
        maps = GradCAM(nn_module=model, target_layers=layer)(batch.to(device), class_idx=1)
        return list(maps.detach().cpu().numpy()[:, 0])
    except Exception as exc:  # noqa: BLE001
        logger.warning("Grad-CAM maps skipped: %s", exc)
        return []
    finally:
        for p in frozen:
            p.requires_grad_(False)


def write_heatmaps(bundle: ModelBundle, cases: list[dict[str, Any]], folder: Path, device: torch.device,
                   batch_size: int = 16) -> int:
    """``folder/CASE.png`` for each case (``case_id``, ``image``, ``p`` and ``predicted``, as scored): the model's input
    beside its Grad-CAM, titled with the call and its probability. Returns how many were written."""
    from medtl.evaluate.plots import gradcam_plot
    from medtl.log import counted
    from medtl.models.predictor import Predictor

    layer = cam_layer(bundle)
    transform = Predictor.of(bundle, device).transform
    written = 0
    for start in counted(list(range(0, len(cases), batch_size)), "heat maps", len(cases) > batch_size):
        chunk = cases[start:start + batch_size]
        batch = torch.stack([transform({"case_id": c["case_id"], "image": c["image"]})["image"] for c in chunk])
        maps = cam_maps(bundle, batch, layer, device) if layer else []
        for i, case in enumerate(chunk):
            panel = (f"called {case['predicted']}:", case["case_id"], float(case["p"]), batch[i, 0].numpy(),
                     maps[i] if maps else None)
            gradcam_plot([panel], folder / f"{case['case_id']}.png", svg=False, positive=bundle.classes[1])
            written += 1
    return written
