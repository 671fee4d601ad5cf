"""Calibration under prevalence shift: EM recovers a new site's prevalence from unlabelled scores, and the
correction is Bayes' rule with the priors swapped."""

import numpy as np
import pytest
from scipy.stats import norm

from medtl.config import EvaluateConfig
from medtl.evaluate.calibration import em_prior
from medtl.evaluate.report import evaluate_classification
from medtl.probability import log_prior_ratio, probabilities


def site(rng, n, prevalence):
    """Scores x ~ N(+1, 1) for positives, N(-1, 1) for negatives; true posterior under a 50 % prior."""
    y = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(2 * y - 1, 1.0)
    p = norm.pdf(x, 1, 1) / (norm.pdf(x, 1, 1) + norm.pdf(x, -1, 1))
    return y, p


@pytest.mark.parametrize("prevalence", [0.15, 0.5, 0.8])
def test_em_recovers_the_new_sites_prevalence_without_labels(prevalence):
    _, p = site(np.random.default_rng(0), 8000, prevalence)
    assert em_prior(p, np.array([0.5, 0.5]))[1] == pytest.approx(prevalence, abs=0.03)


@pytest.mark.parametrize("prevalence", [0.05, 0.4, 0.9])
def test_the_two_class_prior_is_where_the_saerens_iteration_converges(prevalence):
    """The direct two-class solution against the plain EM iteration of Saerens et al. run to convergence."""
    _, p = site(np.random.default_rng(6), 600, prevalence)
    source, prior = np.array([0.3, 0.7]), np.array([0.3, 0.7])
    p2 = np.column_stack([1 - p, p])
    for _ in range(100_000):
        w = p2 * prior / source
        prior, last = (w / w.sum(1, keepdims=True)).mean(0), prior
        if np.abs(prior - last).max() < 1e-12:
            break
    assert em_prior(p, source) == pytest.approx(prior, abs=1e-6)


def test_the_two_class_prior_stops_at_the_end_where_the_likelihood_peaks():
    p = np.full(50, 0.99)  # every case scored positive far beyond the source prior: the likelihood rises to 1
    assert em_prior(p, np.array([0.5, 0.5]))[1] > 0.999


def test_the_correction_is_bayes_rule_with_the_priors_swapped():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 2))
    t, source, target = 1.7, np.array([0.26, 0.74]), np.array([0.375, 0.625])
    p = probabilities(logits, t)[:, 1]
    by_hand = p * 0.625 / 0.74 / (p * 0.625 / 0.74 + (1 - p) * 0.375 / 0.26)
    np.testing.assert_allclose(probabilities(logits, t, log_prior_ratio(source, target))[:, 1], by_hand, rtol=1e-12)


def test_evaluation_reports_calibration_after_the_prior_shift(tmp_path):
    import pandas as pd

    y, p = site(np.random.default_rng(2), 3000, 0.25)
    logits = np.column_stack([np.zeros_like(p), np.log(p / (1 - p))])  # calibrated for a 50 % prior
    table = pd.DataFrame({"case_id": [str(i) for i in range(len(y))], "label": np.where(y == 1, "pos", "neg"),
                          "patient_id": [str(i) for i in range(len(y))]})
    cfg = EvaluateConfig(bootstrap=0, prevalence="em", figures=False)
    ev = evaluate_classification(table, logits, ["neg", "pos"], 0.5, 1.0, cfg, tmp_path, source_prior=[0.5, 0.5])
    m = ev.metrics
    assert m["prevalence_used"] == pytest.approx(0.25, abs=0.03) and ev.target_prior[1] == m["prevalence_used"]
    assert m["ece_prior_adjusted"] < 0.5 * m["ece_calibrated"]  # the shift is what miscalibrated it
    assert "after prior shift" in (tmp_path / "report.md").read_text()
    assert any("labels unused" in n for n in ev.notes)


def test_calibration_cis_resample_patients_and_re_estimate_the_prevalence(tmp_path):
    """ECE and Brier after temperature get the patient-bootstrap CI of the scikit-learn-checked ECE and the
    Brier formula; after the prior shift, each resample estimates its own prevalence (EM is part of the CI)."""
    import pandas as pd

    from medtl.evaluate.bootstrap import bootstrap_ci
    from medtl.evaluate.calibration import ece_binary

    y, p = site(np.random.default_rng(7), 400, 0.3)
    logits = np.column_stack([np.zeros_like(p), np.log(p / (1 - p))])
    table = pd.DataFrame({"case_id": [str(i) for i in range(len(y))], "label": np.where(y == 1, "pos", "neg"),
                          "patient_id": [str(i // 2) for i in range(len(y))]})
    cfg = EvaluateConfig(bootstrap=200, prevalence="em", figures=False)
    m = evaluate_classification(table, logits, ["neg", "pos"], 0.5, 1.3, cfg, tmp_path, source_prior=[0.5, 0.5]).metrics
    cal = probabilities(logits, 1.3)[:, 1]

    def by_hand(yy, pp):
        prior = em_prior(pp[:, 0], np.array([0.5, 0.5]))
        adjusted = probabilities(pp[:, 1:], 1.3, log_prior_ratio(np.array([0.5, 0.5]), prior))[:, 1]
        return {"ece": ece_binary(yy, pp[:, 0], cfg.bins)[0], "brier": float(np.mean((pp[:, 0] - yy) ** 2)),
                "ece_shifted": ece_binary(yy, adjusted, cfg.bins)[0]}

    want = bootstrap_ci(by_hand, y, np.column_stack([cal, logits]), table["patient_id"].to_numpy(), 200, 0.95, cfg.seed)
    assert (m["ece_calibrated_ci_low"], m["ece_calibrated_ci_high"]) == pytest.approx(want["ece"])
    assert (m["brier_calibrated_ci_low"], m["brier_calibrated_ci_high"]) == pytest.approx(want["brier"])
    assert (m["ece_prior_adjusted_ci_low"], m["ece_prior_adjusted_ci_high"]) == pytest.approx(want["ece_shifted"])
    assert m["ece_prior_adjusted_ci_low"] <= m["ece_prior_adjusted"] <= m["ece_prior_adjusted_ci_high"]


def test_confusion_prior_is_the_label_shift_formula():
    """q = fpr (1 - π) + tpr π solved for π, with the call rates measured on validation."""
    from medtl.evaluate.calibration import call_rates, confusion_prior

    y_val = np.array([0] * 10 + [1] * 10)
    p_val = np.r_[np.linspace(0, 0.6, 10), np.linspace(0.3, 1, 10)]
    rates = call_rates(y_val, p_val, 0.5)
    assert rates == [pytest.approx(np.mean(np.linspace(0, 0.6, 10) >= 0.5)), pytest.approx(np.mean(np.linspace(0.3, 1, 10) >= 0.5))]
    p_new = np.r_[np.full(30, 0.9), np.full(70, 0.1)]  # 30 % called positive
    assert confusion_prior(p_new, 0.5, rates) == pytest.approx((0.3 - rates[0]) / (rates[1] - rates[0]))
    assert confusion_prior(p_new, 0.5, [0.4, 0.5]) is None  # no separation on validation: no estimate


def test_em_is_not_trusted_when_it_runs_away_from_the_confusion_matrix_estimate(tmp_path):
    """Scores far sharper than calibrated (a model fitted on few cases) drive EM away from the truth; the
    evaluation then uses the confusion-matrix estimate and says so."""
    import pandas as pd

    from medtl.evaluate.calibration import call_rates, em_prior

    rng = np.random.default_rng(4)
    y_val, p_val = site(rng, 4000, 0.5)
    y, p = site(rng, 4000, 0.7)
    z = np.log(p / (1 - p)) * 4 - 2.0  # overconfident and biased towards the negative class
    logits = np.column_stack([np.zeros_like(z), z])
    rates = call_rates(y_val, 1 / (1 + np.exp(-(np.log(p_val / (1 - p_val)) * 4 - 2.0))), 0.5)
    assert abs(em_prior(probabilities(logits), np.array([0.5, 0.5]))[1] - 0.7) > 0.1  # EM alone misses
    table = pd.DataFrame({"case_id": [str(i) for i in range(len(y))], "label": np.where(y == 1, "pos", "neg"),
                          "patient_id": [str(i) for i in range(len(y))]})
    ev = evaluate_classification(table, logits, ["neg", "pos"], 0.5, 1.0,
                                 EvaluateConfig(bootstrap=0, prevalence="em", figures=False), tmp_path,
                                 source_prior=[0.5, 0.5], source_rates=rates)
    assert ev.metrics["prevalence_used"] == pytest.approx(0.7, abs=0.03)
    assert any("not trusted" in n for n in ev.notes)


def test_a_model_that_does_not_separate_the_classes_gets_no_prevalence_estimate(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    logits = np.column_stack([np.zeros(500), rng.normal(1.5, 1.0, 500)])  # scores unrelated to the label
    table = pd.DataFrame({"case_id": [str(i) for i in range(500)], "label": np.where(y == 1, "pos", "neg"),
                          "patient_id": [str(i) for i in range(500)]})
    ev = evaluate_classification(table, logits, ["neg", "pos"], 0.5, 1.0,
                                 EvaluateConfig(bootstrap=0, prevalence="em", figures=False), tmp_path,
                                 source_prior=[0.5, 0.5], source_rates=[0.9, 0.95])
    assert ev.target_prior is None and "ece_prior_adjusted" not in ev.metrics
    assert any("not estimated" in n for n in ev.notes)


def test_logistic_recalibration_matches_scikit_learn_and_stays_finite_on_separable_cases():
    from sklearn.linear_model import LogisticRegression

    from medtl.evaluate.calibration import logistic_recalibration

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.4).astype(int)
    d = rng.normal(0, 1, 400) + 1.5 * y  # a model's logit difference, biased and too sharp below
    logits = np.column_stack([np.zeros(400), 3.0 * d + 1.0])
    slope, intercept = logistic_recalibration(logits, y)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(logits[:, 1:], y)
    assert slope == pytest.approx(lr.coef_[0, 0], rel=1e-4) and intercept == pytest.approx(lr.intercept_[0], rel=1e-4, abs=1e-5)
    separable = np.column_stack([np.zeros(40), np.where(np.arange(40) < 20, -1.0, 1.0)])
    assert logistic_recalibration(separable, (np.arange(40) >= 20).astype(int))[0] == pytest.approx(20.0)  # its bound


def test_evaluate_takes_a_sites_prevalence_or_em_in_place_of_the_models_own(tmp_path):
    """``medtl evaluate --prevalence``: an external site's known prevalence, or EM on its cases' scores; the
    model's own setting otherwise. It used to take only the one the model was trained with."""
    import json

    from medtl.config import load_config
    from medtl.data.synthetic import make_classification_set
    from medtl.steps import fit_model
    from tests.conftest import run_cli

    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32))
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                             "train.epochs=1", "train.max_steps_per_epoch=2", f"train.out_dir={tmp_path / 'runs'}",
                             "evaluate.figures=false", "evaluate.gradcam=0", "tracking.enabled=false"])
    model = str(fit_model(cfg).model_path)
    said = {}
    for given in (None, "0.3", "em"):
        out = tmp_path / f"ev_{given}"
        res = run_cli("evaluate", "--model", model, "--manifest", str(m), "--split", "all", "--out", str(out),
                      "--bootstrap", "20", "--no-figures", *(["--prevalence", given] if given else []))
        assert res.returncode == 0, res.stderr[-2000:]
        said[given] = json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()
        step = "_calibrated" if given is None else "_prior_adjusted"  # the last step's calibration, said at once
        slope = said[given][0][f"calibration_slope{step}"]
        assert (slope is None and "calibration slope undefined" in res.stdout) or f"calibration slope {slope:.3f}" in res.stdout
    assert "prevalence_used" not in said[None][0]  # the model's own: no prior shift configured
    assert said["0.3"][0]["prevalence_used"] == pytest.approx(0.3) and "0.300 (given" in said["0.3"][1]
    assert "prevalence_used" in said["em"][0] and "48 cases" in said["em"][1] and "labels unused" in said["em"][1]
    assert "ece_calibrated_ci_low" in said[None][0]  # --bootstrap 20: intervals still, from fewer resamples
    site = run_cli("evaluate", "--model", model, "--manifest", str(m), "--split", "all", "--out", str(tmp_path / "site"),
                   "--bootstrap", "0", "--no-figures", "--site-temperature", "--prevalence", "em")
    assert site.returncode == 0, site.stderr[-2000:]
    fitted = json.loads((tmp_path / "site" / "metrics.json").read_text())
    own = said[None][0]["temperature"]
    assert (fitted.get("model_temperature") == pytest.approx(own) and "PseudoCal" in (tmp_path / "site" / "report.md").read_text()
            or fitted["temperature"] == pytest.approx(own) and "too few" in site.stderr)  # a model that calls all alike
    res = run_cli("evaluate", "--model", model, "--manifest", str(m), "--out", str(tmp_path / "x"), "--prevalence", "1")
    assert res.returncode == 2 and "'1': give the positive-class fraction" in res.stderr and not (tmp_path / "x").exists()


def test_a_prevalence_for_a_model_that_is_not_a_binary_classifier_is_refused_not_ignored():
    import torch

    from medtl.config import Config
    from medtl.errors import MedtlError
    from medtl.evaluate.run import evaluation_config
    from medtl.models.checkpoint import ModelBundle

    cfg = Config.model_validate({"data": {"image_size": [8, 8]}, "tracking": {"enabled": False}})
    three = ModelBundle(torch.nn.Linear(1, 3), cfg, ["a", "b", "c"])
    assert evaluation_config(three).prevalence is None
    with pytest.raises(MedtlError, match="model of 3 classes; a prevalence shifts a binary classifier's"):
        evaluation_config(three, "em")
    two = ModelBundle(torch.nn.Linear(1, 2), cfg, ["a", "b"])
    assert evaluation_config(two, 0.2).prevalence == 0.2 and evaluation_config(two, "em").prevalence == "em"
