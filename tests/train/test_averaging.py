"""The moving average of the weights (``train.ema_epochs``): the debiased formula by hand, the model restored after
validating the average, and a training run whose kept model is the average of the weights its steps visited."""

import numpy as np
import pytest
import torch
from torch import nn

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set
from medtl.models.checkpoint import read_checkpoint
from medtl.train.averaging import WeightAverage
from medtl.train.run import train

from tests.train.test_fit import cls_overrides


def by_hand(iterates: list[np.ndarray], decay: float) -> np.ndarray:
    """Steps 1..T weighted decay**(T - s), the weights summing to one."""
    w = decay ** np.arange(len(iterates))[::-1]
    return np.tensordot(w / w.sum(), np.stack(iterates), axes=1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_average_is_the_debiased_exponential_average_of_the_steps():
    model, seen = tiny(), []
    average = WeightAverage(model, horizon_steps=4)  # decay 0.75
    for step in range(7):
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 3))
        model.train()(torch.randn(5, 3))  # moves the BatchNorm statistics too
        average.update()
        seen.append({k: v.clone().numpy() for k, v in model.state_dict().items()})
    with average.applied():
        for name in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
            np.testing.assert_allclose(model.state_dict()[name].numpy(), by_hand([s[name] for s in seen], 0.75),
                                       rtol=1e-5, atol=1e-6)
        assert int(model.state_dict()["1.num_batches_tracked"]) == 7  # counters are not averaged
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), seen[-1]["0.weight"])


def test_the_model_gets_its_own_weights_back_even_when_the_block_fails():
    model = tiny()
    average = WeightAverage(model, horizon_steps=10)
    average.update()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    own = model[0].weight.detach().clone()
    with pytest.raises(RuntimeError), average.applied():
        assert not torch.equal(model[0].weight, own)
        raise RuntimeError("validation failed")
    assert torch.equal(model[0].weight, own)


def test_a_saved_average_continues_where_it_stopped():
    model = tiny()
    first = WeightAverage(model, horizon_steps=3)
    for _ in range(2):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        first.update()
    again = WeightAverage(model, horizon_steps=3)
    again.load_state_dict(first.state_dict())
    for average in (first, again):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        average.update()
        with torch.no_grad():
            model[0].weight.sub_(1.0)
    with first.applied():
        want = model[0].weight.detach().clone()
    with again.applied():
        assert torch.equal(model[0].weight, want)


@pytest.mark.slow
def test_a_run_keeps_the_average_of_its_steps_and_resumes_it(tmp_path, monkeypatch):
    """Training moves the same way with and without the average; what it keeps is the average of the weights after
    each optimizer step (recorded here by a hook on the optimizer), and a run stopped after an epoch and resumed keeps
    the same average as one that ran through."""
    import medtl.train.loop as loop
    import medtl.train.run as run_module

    m = make_classification_set(tmp_path / "d", n=32, kind="png", size=(32, 32), split=True)
    base = ["data.image_size=[32,32]", "train.epochs=2"]
    steps: list[dict[str, np.ndarray]] = []
    make_optimizer = run_module.make_optimizer

    def recording(schedule, cfg, fused=False):
        optimizer = make_optimizer(schedule, cfg, fused)
        optimizer.register_step_post_hook(lambda *_: steps.append(
            {k: v.detach().clone().numpy() for k, v in schedule.model.state_dict().items() if v.is_floating_point()}))
        return optimizer

    monkeypatch.setattr(run_module, "make_optimizer", recording)
    averaged = train(load_config(None, cls_overrides(m, tmp_path / "runs", [*base, "train.ema_epochs=1", "name=ema"])))
    plain = train(load_config(None, cls_overrides(m, tmp_path / "runs", [*base, "name=plain"])))
    per_run = len(steps) // 2  # two epochs each
    assert per_run >= 4 and len(steps) == 2 * per_run
    ema, own = (read_checkpoint(tmp_path / "runs" / name / "checkpoints" / "last.pt") for name in ("ema", "plain"))
    for name, value in own["state_dict"].items():
        np.testing.assert_array_equal(ema["state_dict"][name].numpy(), value.numpy())  # the same steps
    shadow = ema["train_state"]["average"]["shadow"]
    name = "head.1.weight"
    np.testing.assert_allclose(shadow[name].numpy(), by_hand([s[name] for s in steps[:per_run]], 1 - 2 / per_run), rtol=1e-5, atol=1e-7)
    assert not np.allclose(shadow[name].numpy(), own["state_dict"][name].numpy())
    assert [h["val_loss"] for h in averaged.history] != [h["val_loss"] for h in plain.history]  # the average is validated

    def stop_after_first(name: str, count: int) -> None:
        if name == "after_epoch" and count == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fault_point", stop_after_first)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", [*base, "train.ema_epochs=1", "name=stopped"]))
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    train(cfg, resume=True)
    resumed = read_checkpoint(tmp_path / "runs" / "stopped" / "checkpoints" / "last.pt")["train_state"]["average"]
    assert resumed["steps"] == per_run
    for key, value in shadow.items():
        np.testing.assert_allclose(resumed["shadow"][key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7)
