"""Feature extraction: the frozen backbone runs once per case, then only the head is fitted on the cached
features (scikit-learn logistic regression, or a linear layer trained with torch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from medtl.config import TrainConfig
from medtl.log import make_progress
from medtl.train.runtime import Runtime


@torch.no_grad()
def extract(model: nn.Module, loader: Any, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    feats, labels = [], []
    with make_progress() as progress:
        task = progress.add_task("frozen features", total=len(loader), info="")
        for batch in loader:
            with rt.autocast():
                feats.append(model.features(batch["image"].to(rt.device)).float().cpu())
            labels.append(batch["label"])
            progress.advance(task)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def fit_head(model: nn.Module, loader: Any, head: str, cfg: TrainConfig, class_weights: np.ndarray | None,
             rt: Runtime) -> None:
    """Fits ``model.head`` on the frozen backbone's features of the training cases in ``loader`` (validated by
    the caller, through the same predictor as every other strategy)."""
    train_x, train_y = extract(model, loader, rt)
    linear: nn.Linear = model.head[1]
    k = linear.out_features
    if head == "logistic":
        cw = None if class_weights is None else {i: float(w) for i, w in enumerate(class_weights)}
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight=cw).fit(train_x, train_y)
        coef, bias = clf.coef_, clf.intercept_
        if k == 2:  # sklearn's binary model is one logit; a 2-way softmax over [0, z] is the same model
            coef, bias = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, bias]
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
            linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    else:
        _train_linear(linear, train_x, train_y, cfg, class_weights, rt)


def _train_linear(linear: nn.Linear, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, w: np.ndarray | None, rt: Runtime) -> None:
    xt, yt = torch.as_tensor(x).to(rt.device), torch.as_tensor(y).long().to(rt.device)
    loss_fn = nn.CrossEntropyLoss(weight=None if w is None else torch.as_tensor(w, dtype=torch.float32, device=rt.device))
    opt = torch.optim.AdamW(linear.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs * 10):
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            loss = loss_fn(linear(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
