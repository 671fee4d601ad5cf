"""Losses against hand-computed values, the balanced sampler's frequencies, and threshold rules."""

import math

import numpy as np
import pytest
import torch

from medtl.config import TrainConfig
from medtl.errors import ConfigError
from medtl.train.losses import FocalLoss, build_loss, class_weights
from medtl.train.samplers import balanced_sampler
from medtl.evaluate.threshold import choose_threshold


def test_class_weight_rules():
    counts = np.array([90, 10])
    w = class_weights(counts, "inverse_frequency", ["a", "b"])
    np.testing.assert_allclose(w, np.array([100 / 180, 100 / 20]) / np.mean([100 / 180, 100 / 20]))
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta**90), (1 - beta) / (1 - beta**10)])
    np.testing.assert_allclose(class_weights(counts, "effective_number", ["a", "b"], beta), raw / raw.mean())
    np.testing.assert_allclose(class_weights(counts, {"b": 3.0}, ["a", "b"]), np.array([1.0, 3.0]) / 2.0)
    with pytest.raises(ConfigError, match="'c' is not a class"):
        class_weights(counts, {"c": 2.0}, ["a", "b"])


def test_focal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    target = torch.tensor([0, 1])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))
    gamma, alpha = 2.0, 0.25
    want = np.mean([-(1 - alpha) * (1 - p0) ** gamma * math.log(p0), -alpha * (1 - p1) ** gamma * math.log(p1)])
    got = FocalLoss(gamma, alpha)(logits, target)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # gamma 0 and no alpha is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert float(FocalLoss(0.0)(logits, target)) == pytest.approx(float(ce), rel=1e-6)


def test_weighted_ce_matches_hand_computation():
    loss, w = build_loss(TrainConfig(loss="ce", class_weights={"b": 4.0}), "classification", np.array([5, 5]), ["a", "b"])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    lp = torch.log_softmax(logits, 1)
    want = -(w[0] * lp[0, 0] + w[1] * lp[1, 1]) / (w[0] + w[1])
    assert float(loss(logits, target)) == pytest.approx(float(want), rel=1e-6)


def test_losses_refuse_wrong_task():
    with pytest.raises(ConfigError, match="segmentation loss"):
        build_loss(TrainConfig(loss="dice_ce"), "classification", np.array([1, 1]), ["a", "b"])
    seg, _ = build_loss(TrainConfig(loss="dice_ce"), "segmentation", None, ["bg", "fg"])
    assert float(seg(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)).float())) > 0


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 900 + [1] * 100)
    drawn = labels[list(balanced_sampler(labels, seed=0, num_samples=20000))]
    assert abs(drawn.mean() - 0.5) < 0.02
    assert list(balanced_sampler(labels, 1, 50)) == list(balanced_sampler(labels, 1, 50))


def test_threshold_rules_on_crafted_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # Youden: threshold 0.7 gives sens 0.75, spec 1.0 (J 0.75); 0.4 gives sens 1.0 spec 0.75 (J 0.75); first max wins.
    # Any threshold in (0.6, 0.7] gives that point: the middle of the gap in logit space is chosen, not its edge.
    mid = lambda a, b: 1 / (1 + np.exp(-(np.log(a / (1 - a)) + np.log(b / (1 - b))) / 2))  # noqa: E731
    assert choose_threshold(y, p, "youden") == pytest.approx(mid(0.7, 0.6))
    assert choose_threshold(y, p, "sensitivity", 1.0) == pytest.approx(mid(0.4, 0.3))
    assert choose_threshold(y, p, "sensitivity", 0.5) == pytest.approx(mid(0.8, 0.7))
    for rule, target in (("youden", 0.9), ("sensitivity", 1.0), ("sensitivity", 0.5)):
        t = choose_threshold(y, p, rule, target)
        edge = {"youden": 0.7, 1.0: 0.4, 0.5: 0.8}[rule if rule == "youden" else target]
        assert ((p >= t) == (p >= edge)).all()  # the same validation operating point as the edge
    separated = np.array([0.0001, 0.001, 0.999999, 1.0])  # a perfectly separated, saturated validation split
    assert 0.5 < choose_threshold(np.array([0, 0, 1, 1]), separated, "youden") < 0.99  # not the edge, 0.999999
    assert choose_threshold(y, p, "fixed") == 0.5
    assert choose_threshold(np.ones(4), p[:4], "youden") == 0.5


def test_mixup_loss_is_cross_entropy_against_the_mixed_labels():
    from medtl.tasks import Mixup

    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    torch.manual_seed(4)
    got, _ = Mixup(torch.nn.CrossEntropyLoss(), 0.4)(model, x, y, 0.0)
    torch.manual_seed(4)  # the same draws, made by hand
    lam = float(torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample())
    pair = torch.randperm(6)
    soft = lam * torch.nn.functional.one_hot(y, 2) + (1 - lam) * torch.nn.functional.one_hot(y[pair], 2)
    want = torch.nn.functional.cross_entropy(model(lam * x + (1 - lam) * x[pair]), soft.float())
    assert 0.0 < lam < 1.0 and float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_training_takes_the_mixup_objective_when_configured():
    from medtl.config import load_config
    from medtl.tasks import Mixup, make_task
    from medtl.train.run import _objective

    task = make_task("classification", torch.nn.CrossEntropyLoss())
    _, objective = _objective(load_config(None, ["train.mixup_alpha=0.2"]), None, None, task, None)
    assert isinstance(objective, Mixup) and objective.loss_fn is task.loss_fn
    assert _objective(load_config(None, []), None, None, task, None)[1] == task.objective
