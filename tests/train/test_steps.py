"""The steps between training and registration: calibration chosen once, model.pt written once after it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medtl.config import Config
from medtl.evaluate.calibration import fit_temperature
from medtl.evaluate.threshold import choose_threshold
from medtl.models.checkpoint import ModelBundle, read_checkpoint, save_model
from medtl.probability import probabilities
from medtl import steps


def test_calibration_is_chosen_once_and_model_pt_survives_a_failing_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = np.column_stack([np.zeros(200), 3.0 * (labels - 0.5) + rng.normal(0, 1.5, 200)])
    bundle = ModelBundle(torch.nn.Linear(2, 2), Config(), ["normal", "lesion"])
    result = SimpleNamespace(bundle=bundle, model_path=tmp_path / "model.pt", val={"logits": logits, "labels": labels})
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with steps.model_written(result):
            steps.calibrate_step(result, steps.NullTracker())
            raise RuntimeError("evaluation failed")
    saved = read_checkpoint(result.model_path)
    t = fit_temperature(logits, labels)
    assert saved["temperature"] == pytest.approx(t)
    assert saved["threshold"] == pytest.approx(choose_threshold(labels, probabilities(logits, t)[:, 1], "youden"))
    called = probabilities(logits, t)[:, 1] >= saved["threshold"]
    assert saved["extra"]["source_call_rates"] == pytest.approx([called[labels == 0].mean(), called[labels == 1].mean()])
    assert saved["inference"]["task"] == "classification" and "train" not in saved["inference"]
    assert "config" not in saved  # a model carries its inference spec, never the training config
    save_model(bundle, tmp_path / "last.pt", {"epoch": 1})
    assert read_checkpoint(tmp_path / "last.pt")["config"] == Config().to_dict()  # a resumable checkpoint does, to check a resume


@pytest.mark.parametrize("signal, noise, warned", [(40.0, 0.0, "classified correctly"), (0.5, 0.0, "classified correctly"),
                                                  (0.0, 0.3, "barely told apart"), (1.0, 1.0, None),
                                                  (None, 1.0, "one class only"), (0.01, 0.008, "scores so close")])
def test_a_temperature_on_its_bound_is_reported(tmp_path, caplog, signal, noise, warned):
    """Validation that the scores split perfectly (or not at all) has no finite temperature: the user is told."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 10) if signal is not None else np.zeros(20, dtype=int)
    margin = (signal or 0.0) * (labels - 0.5) + rng.normal(0, noise, 20)
    logits = np.column_stack([np.zeros(20), margin])
    result = SimpleNamespace(bundle=ModelBundle(torch.nn.Linear(2, 2), Config(), ["normal", "lesion"]),
                             model_path=tmp_path / "model.pt", val={"logits": logits, "labels": labels})
    steps.logger.addHandler(caplog.handler)
    try:
        steps.calibrate_step(result, steps.NullTracker())
    finally:
        steps.logger.removeHandler(caplog.handler)
    bound = [r.getMessage() for r in caplog.records if "cannot be trusted" in r.getMessage()]
    assert (warned in bound[0] and "20 validation cases" in bound[0]) if warned else not bound


@pytest.mark.parametrize("positives, said", [(100, False), (8, True)])
def test_choices_resting_on_few_cases_of_a_class_are_said_and_kept_with_the_model(tmp_path, caplog, positives, said):
    """A temperature fitted and a threshold chosen on 8 cases of a class are the best those allow, and rest on
    little: the log says so, naming the class and its count, and the model keeps it for its card."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], [200 - positives, positives])
    logits = np.column_stack([np.zeros(200), 2.0 * (labels - 0.5) + rng.normal(0, 1.5, 200)])
    result = SimpleNamespace(bundle=ModelBundle(torch.nn.Linear(2, 2), Config(), ["normal", "lesion"]),
                             model_path=tmp_path / "model.pt", val={"logits": logits, "labels": labels})
    steps.logger.addHandler(caplog.handler)
    try:
        with steps.model_written(result):
            steps.calibrate_step(result, steps.NullTracker())
    finally:
        steps.logger.removeHandler(caplog.handler)
    few = sorted({r.getMessage() for r in caplog.records if "rest on few cases" in r.getMessage()})
    kept = read_checkpoint(result.model_path)["extra"].get("calibration_caveat")
    if said:
        assert len(few) == 1 and "8 of class 'lesion' among the 200 validation cases" in few[0]
        assert kept == few[0]
    else:
        assert not few and kept is None
