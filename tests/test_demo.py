"""The demo's new-site step: AdaBN on the test films' images, on a copy, labels unused."""

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medtl.config import load_config
from medtl.data.manifest import rows_of_split
from medtl.data.synthetic import make_classification_set
from medtl.demo import _new_site
from medtl.evaluate.run import predict_logits
from medtl.observe import NullTracker
from medtl.steps import adapt_norms, fit_model

pytestmark = pytest.mark.slow


class Recorder(NullTracker):
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics, step=None, dataset=None) -> None:
        self.metrics.update(metrics)


def test_new_site_adapts_a_copy_without_labels_and_evaluates_the_adapted_model(tmp_path):
    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32), split=True, lesion_scale=0.3)
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                             f"train.out_dir={tmp_path / 'runs'}", "train.epochs=1", "train.batch_size=4",
                             "model.pretrained=imagenet", "transfer.strategy=fine_tune", "transfer.freeze_until=block2",
                             "evaluate.bootstrap=20", "evaluate.figures=false", "tracking.enabled=false"])
    result = fit_model(cfg)
    trained = {k: v.clone() for k, v in result.bundle.model.state_dict().items()}
    tracker = Recorder()
    ev = _new_site(result, tracker)
    for k, v in result.bundle.model.state_dict().items():  # the model as trained (the registered one) is untouched
        assert torch.equal(trained[k], v), k
    test = rows_of_split(result.prepared.table, "test")
    assert tracker.metrics["adabn_test_images"] == len(test)  # every test image, the last partial batch too
    p = ev.predictions
    y = (p["label"] == "lesion").to_numpy()
    prob = p["prob_lesion"].to_numpy()
    assert ev.metrics["auroc"] == pytest.approx(roc_auc_score(y, prob))
    as_trained, _ = predict_logits(result.bundle, test, torch.device("cpu"))
    adapted = copy.deepcopy(result.bundle)
    adapted.extra["typicality"] = {"measured on": "the features as trained"}  # too few cases here to measure one
    adapt_norms(adapted, test, result.summary)
    assert "typicality" not in adapted.extra  # AdaBN changed the features it was measured on
    again, _ = predict_logits(adapted, test, torch.device("cpu"))
    assert not np.allclose(as_trained, again, atol=1e-4)  # AdaBN changed the scores
    unlabelled = copy.deepcopy(result.bundle)
    adapt_norms(unlabelled, test.drop(columns=["label"]), result.summary)
    for (k, a), b in zip(adapted.model.state_dict().items(), unlabelled.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k  # the same statistics without the labels


class Artifacts(NullTracker):
    def __init__(self) -> None:
        self.logged: list[tuple[str, str | None]] = []

    def log_artifact(self, path, folder=None) -> None:
        self.logged.append((path.name, folder))


def test_demo_learning_curve_keeps_each_models_auroc_and_ci_and_logs_the_figure(tmp_path):
    import pandas as pd

    from medtl.demo import _learning_curve
    from medtl.pipelines.label_efficiency import curve_metric

    points = [{"strategy": s, "n_labelled": n, "auroc": a, "auroc_ci_low": a - 0.02, "auroc_ci_high": a + 0.02, "ece": 0.1}
              for s, n, a in [("fine_tune", 4708, 0.947), ("scratch", 4708, 0.947), ("fine_tune", 472, 0.938), ("scratch", 472, 0.811)]]
    tracker = Artifacts()  # each model's evaluation metrics, as the demo turns them into curve points
    _learning_curve([{"strategy": p["strategy"], "n_labelled": p["n_labelled"], **curve_metric(p, "auroc")} for p in points],
                    tmp_path, tracker)
    curve = pd.read_csv(tmp_path / "learning_curve.csv")
    assert curve.to_dict("records") == [{k: p[k] for k in ("strategy", "n_labelled", "auroc")} | {"ci_low": p["auroc_ci_low"], "ci_high": p["auroc_ci_high"]}
                                        for p in points]
    assert {("learning_curve.csv", "learning_curve"), ("learning_curve.png", "learning_curve"),
            ("learning_curve.svg", "learning_curve")} <= set(tracker.logged)
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000


def test_a_second_demo_in_the_same_folder_says_what_to_move_and_touches_nothing(tmp_path):
    from tests.conftest import run_cli

    last = tmp_path / "demo_out" / "runs" / "demo-fine_tune" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"an earlier demo's checkpoint")
    res = run_cli("demo", cwd=tmp_path)
    assert res.returncode == 2 and "already holds the demo's runs" in res.stderr and "move or delete" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert last.read_bytes() == b"an earlier demo's checkpoint" and not (tmp_path / "demo_out" / "pneumoniamnist").exists()
