"""The one softmax and the one decision rule: every stage that turns logits into probabilities or labels
(validation, evaluation, scoring, the pyfunc, Grad-CAM) calls these, so they agree bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the last axis, computed in float64.

    float32 logits from the network are widened first, so a probability does not depend on the dtype the
    caller happened to hold."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def decide(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class index per row: binary models call positive at ``p1 >= threshold``, others take the argmax."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if p.shape[1] == 2:
        return (p[:, 1] >= threshold).astype(int)
    return p.argmax(axis=1)


def decide_labels(probs: np.ndarray, threshold: float, classes: Sequence[str]) -> list[str]:
    return [classes[i] for i in decide(probs, threshold)]
