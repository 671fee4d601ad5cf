"""Gradient reversal, CORAL, AdaBN, DANN step, and the shift generator."""

import numpy as np
import pytest
import torch

from medtl.config import ModelConfig
from medtl.data.shift import Shift, apply_shift
from medtl.models.adaptation import Adapter, adabn, coral_loss, dann_coefficient, grad_reverse
from medtl.models.registry import build_model


def test_gradient_reversal_flips_and_scales_exactly():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    (grad_reverse(x, 0.3) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)
    y = torch.randn(4)
    assert torch.equal(grad_reverse(y, 2.0), y)
    assert dann_coefficient(0.0) == 0.0 and 0.99 < dann_coefficient(1.0) < 1.0


def test_coral_zero_for_identical_and_hand_computed_otherwise():
    a = torch.randn(16, 4)
    assert float(coral_loss(a, a.clone())) == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0]])      # cov: [[2, 0], [0, 0]]
    t = torch.tensor([[0.0, 0.0], [0.0, 2.0]])      # cov: [[0, 0], [0, 2]]
    want = (4 + 4) / (4 * 2 * 2)                    # ||diff||_F^2 / (4 d^2)
    assert float(coral_loss(s, t)) == pytest.approx(want)
    np.testing.assert_allclose(np.cov(s.numpy().T), [[2, 0], [0, 0]])


def test_adabn_moves_only_bn_statistics_toward_target():
    model = build_model(ModelConfig(pretrained="imagenet"), "classification", 2, 2, [32, 32]).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = [torch.rand(8, 1, 32, 32) * 0.2 + 0.8 for _ in range(3)]  # bright target domain
    assert adabn(model, target, torch.device("cpu")) == 24
    after = model.state_dict()
    for k in before:
        if "running_" in k or "num_batches_tracked" in k:
            continue
        assert torch.equal(before[k], after[k]), k
    x = torch.cat(target)
    stem = model.backbone._bn0
    with torch.no_grad():
        pre = model.backbone._conv_stem(model.backbone._conv_stem_padding(x))
    actual = pre.mean((0, 2, 3))
    assert torch.allclose(stem.running_mean, actual, atol=1e-4)
    assert not torch.allclose(before["backbone._bn0.running_mean"], stem.running_mean, atol=1e-3)


def test_adabn_leaves_the_stages_a_fine_tune_kept_frozen_on_their_imagenet_statistics():
    from medtl.config import TransferConfig
    from medtl.models.transfer import TransferSchedule, frozen_at_end

    built = build_model(ModelConfig(pretrained="imagenet"), "classification", 2, 2, [32, 32])
    model = built.model
    schedule = TransferSchedule(model, built.spec, TransferConfig(strategy="fine_tune", freeze_until="block2"), 1e-3)
    keep = frozen_at_end(model, built.spec, schedule.summary())
    assert keep == schedule.frozen_modules()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adabn(model, [torch.rand(8, 1, 32, 32) * 0.2 + 0.8 for _ in range(2)], torch.device("cpu"), keep)
    after = model.state_dict()
    kept = {n for n, m in model.named_modules() if any(m is k or any(m is c for c in k.modules()) for k in keep)}
    stats = [k for k in before if k.endswith("running_mean")]
    frozen_stats = [k for k in stats if k.rsplit(".", 1)[0] in kept]
    assert frozen_stats and len(frozen_stats) < len(stats)
    for k in stats:  # frozen stages untouched, every other BatchNorm re-estimated on the target
        assert torch.equal(before[k], after[k]) == (k in frozen_stats), k
    none = frozen_at_end(model, built.spec, TransferSchedule(model, built.spec, TransferConfig(strategy="full"), 1e-3).summary())
    assert none == []
    frozen = TransferSchedule(model, built.spec, TransferConfig(strategy="feature_extraction"), 1e-3)
    assert adabn(model, iter(()), torch.device("cpu"), frozen.frozen_modules()) == 0  # nothing left: batches not read


def test_dann_step_reports_the_domain_classifiers_accuracy_and_trains_it():
    model = build_model(ModelConfig(pretrained="none"), "classification", 2, 2, [32, 32]).model
    adapter = Adapter("dann", 1280, 0.5).eval()  # no dropout: the reported numbers can be recomputed
    opt = torch.optim.AdamW(list(model.parameters()) + list(adapter.parameters()), 1e-3)
    xs, xt, y = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32) + 1, torch.tensor([0, 1, 0, 1])
    fs, ft = model.features(xs), model.features(xt)
    extra, info = adapter(fs, ft, progress=0.5)
    with torch.no_grad():
        logits = adapter.domain(torch.cat([fs, ft]))
    domain = torch.tensor([0.0] * 4 + [1.0] * 4)
    assert info["domain_accuracy"] == pytest.approx(float(((logits > 0).float() == domain).float().mean()))
    assert info["domain_loss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, domain)), rel=1e-5)
    assert float(extra.detach()) == pytest.approx(0.5 * info["domain_loss"], rel=1e-5)
    assert info["grl_coefficient"] == pytest.approx(dann_coefficient(0.5))
    loss = torch.nn.functional.cross_entropy(model.head(fs), y) + extra
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert adapter.domain.net[0].weight.grad is not None


def test_shift_is_reproducible_and_changes_intensities():
    img = np.tile(np.linspace(0, 1, 28), (28, 1))
    a = apply_shift(img, Shift(), np.random.default_rng(1))
    b = apply_shift(img, Shift(), np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == img.shape
    assert abs(a.mean() - img.mean()) > 0.02 and a.min() >= 0 and a.max() <= 1



@pytest.mark.parametrize("setting, said", [({"gamma": 0}, "--gamma 0"), ({"contrast": -2}, "--contrast -2"),
                                           ({"blur_sigma": -1}, "--blur -1"), ({"noise_std": -0.1}, "--noise -0.1"),
                                           ({"downsample": 0}, "--downsample 0"), ({"downsample": 3}, "--downsample 3")])
def test_a_shift_that_cannot_be_made_is_refused_naming_its_option(setting, said):
    from medtl.errors import ManifestError

    with pytest.raises(ManifestError, match=said):  # was numpy's "scale < 0", a NaN cast, or silently odd images
        Shift(**setting)
