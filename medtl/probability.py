"""The one softmax and the one decision rule: every stage that turns logits into probabilities or labels
(validation, evaluation, scoring, the pyfunc, Grad-CAM) calls these, so they agree bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def probabilities(logits: np.ndarray, temperature: float = 1.0, log_prior_ratio: np.ndarray | None = None) -> np.ndarray:
    """Softmax of ``logits / temperature (+ log_prior_ratio)`` over the last axis, computed in float64.

    float32 logits from the network are widened first, so a probability does not depend on the dtype the
    caller happened to hold. ``log_prior_ratio`` (log target prior - log source prior, per class) is the
    prior-shift correction of Saerens et al. (2002), applied after temperature scaling."""
    z = _scaled(logits, temperature, log_prior_ratio)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _scaled(logits: np.ndarray, temperature: float, log_prior_ratio: np.ndarray | None) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return z if log_prior_ratio is None else z + np.asarray(log_prior_ratio, dtype=np.float64)


def log_odds(logits: np.ndarray, temperature: float = 1.0, log_prior_ratio: np.ndarray | None = None) -> np.ndarray:
    """A binary model's log-odds of the positive class, exactly the logit of ``probabilities``' second column and
    finite where that probability rounds to 1."""
    z = _scaled(logits, temperature, log_prior_ratio)
    return z[:, 1] - z[:, 0]


def decide(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class index per row: binary models call positive at ``p1 >= threshold``, others take the argmax."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if p.shape[1] == 2:
        return (p[:, 1] >= threshold).astype(int)
    return p.argmax(axis=1)


def decide_labels(probs: np.ndarray, threshold: float, classes: Sequence[str]) -> list[str]:
    return [classes[i] for i in decide(probs, threshold)]


def log_prior_ratio(source: np.ndarray | None, target: np.ndarray | None) -> np.ndarray | None:
    """log(target / source) per class, or None when either prior is unknown."""
    if source is None or target is None:
        return None
    return np.log(np.asarray(target, dtype=np.float64)) - np.log(np.asarray(source, dtype=np.float64))
