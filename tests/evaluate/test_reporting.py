"""How the report states what it measured: intervals that few cases cannot narrow, calibration slope and intercept,
subgroups of a number in bands, and figure titles that fit."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medtl.config import EvaluateConfig
from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.evaluate.calibration import apply_temperature
from medtl.evaluate.metrics import binary_metrics
from medtl.evaluate.report import evaluate_classification


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval, by its formula."""
    from scipy.stats import norm

    p, z = k / n, norm.ppf(0.975)
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_a_share_of_few_cases_has_at_least_its_wilson_interval_and_a_perfect_auroc_says_the_cases_are_few(tmp_path):
    """Four positive cases all found gave sensitivity 1.000 [1.000, 1.000]: every resample finds them all, yet 4 of
    4 is as plausible at a sensitivity of 0.6. Shares of cases now cover their Wilson score interval; an AUROC
    interval of no width says why. A large split keeps its patient-bootstrap interval where that is the wider."""
    y = np.array([1] * 4 + [0] * 16)
    logits = np.column_stack([np.zeros(20), np.where(y == 1, 3.0, -3.0)])
    logits[4, 1] = 1.0  # one negative called positive: specificity 15 of 16
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(20)], "label": np.array(["a", "b"])[y],
                          "patient_id": range(20)})
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=200, figures=False), tmp_path)
    m = ev.metrics
    for name, (k, n) in (("sensitivity", (4, 4)), ("specificity", (15, 16)), ("ppv", (4, 5)), ("npv", (15, 15)),
                         ("accuracy", (19, 20))):
        low, high = wilson(k, n)
        assert m[name] == pytest.approx(k / n)
        assert m[f"{name}_ci_low"] <= low + 1e-9 and m[f"{name}_ci_high"] >= high - 1e-9, name
    assert m["sensitivity_ci_low"] == pytest.approx(wilson(4, 4)[0]) and m["sensitivity_ci_high"] == 1.0
    assert m["auroc_ci_low"] == pytest.approx(1.0, abs=1e-12) and m["auroc_ci_high"] == 1.0
    from medtl.evaluate.report import _no_width_notes  # a quantile of ones can come back as 1 - 1e-16

    assert _no_width_notes({"auroc_ci_low": 0.9999999999999999, "auroc_ci_high": 1.0}, 20)
    assert not _no_width_notes({"auroc_ci_low": 0.998, "auroc_ci_high": 1.0}, 20)
    assert any("auroc: its interval has no width, because the 20 cases' classes are separated perfectly" in n
               for n in ev.notes)
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    big = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.array(["a", "b"])[y],
                        "patient_id": np.arange(n) // 4})  # four cases a patient: wider than Wilson, kept
    logits = np.column_stack([np.zeros(n), np.repeat(rng.normal(0, 1, n // 4), 4) + y])
    ev = evaluate_classification(big, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=200, figures=False), tmp_path / "big")
    boot = bootstrap_ci(lambda yy, pp: binary_metrics(yy, pp[:, 1], 0.5), y, apply_temperature(logits, 1.0),
                        big["patient_id"].to_numpy(), 200, 0.95, 0)
    assert (ev.metrics["sensitivity_ci_low"], ev.metrics["sensitivity_ci_high"]) == pytest.approx(boot["sensitivity"])
    assert (ev.metrics["f1_ci_low"], ev.metrics["f1_ci_high"]) == pytest.approx(boot["f1"])  # F1 had no interval
    assert not any("no width" in note for note in ev.notes)


def test_a_numeric_subgroup_of_many_values_is_reported_in_quartile_bands_not_one_subgroup_an_age(tmp_path):
    """An age column reported 60 subgroups of one or two cases, each 'below the minimum; not reported'."""
    rng = np.random.default_rng(1)
    n = 200
    y = rng.integers(0, 2, n)
    age = rng.integers(20, 90, n).astype(float)
    age[:5] = np.nan
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.array(["a", "b"])[y],
                          "patient_id": range(n), "age": [None if np.isnan(a) else f"{a:g}" for a in age],
                          "ward": np.array(["1", "2", "3"])[np.arange(n) % 3]})  # numbers, but few: kept as they are
    logits = np.column_stack([np.zeros(n), y + rng.normal(0, 1, n)])
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=20, min_subgroup_size=5, figures=False),
                                 tmp_path, ["age", "ward"])
    edges = np.quantile(age[5:], [0, 0.25, 0.5, 0.75, 1])
    bands = {k.removeprefix("subgroup_age_").removesuffix("_n"): v for k, v in ev.metrics.items()
             if k.startswith("subgroup_age_") and k.endswith("_n")}
    assert len(bands) == 5 and bands.pop("missing") == 5
    for (name, count), lo, hi, last in zip(bands.items(), edges[:-1], edges[1:], [False] * 3 + [True]):
        assert name == f"{lo:g} to {hi:g}"
        inside = (age >= lo) & ((age <= hi) if last else (age < hi))
        assert count == inside.sum()
        key = f"subgroup_age_{name}"
        assert ev.metrics[f"{key}_auroc"] == pytest.approx(roc_auc_score(y[inside], logits[inside, 1]))
    assert {k for k in ev.metrics if k.startswith("subgroup_ward_") and k.endswith("_n")} == {
        "subgroup_ward_1_n", "subgroup_ward_2_n", "subgroup_ward_3_n"}
    assert any(note.startswith("age: ") and "quartile bands" in note for note in ev.notes)
    few = table.iloc[:20].assign(age=[f"{a}" for a in range(30, 50)])  # 20 cases, 20 ages: bands of 5, not 20 of 1
    ev = evaluate_classification(few, logits[:20], ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=20, min_subgroup_size=5, figures=False),
                                 tmp_path / "few", ["age", "ward"])
    assert sorted(v for k, v in ev.metrics.items() if k.startswith("subgroup_age_") and k.endswith("_n")) == [5] * 4
    assert sum(k.startswith("subgroup_ward_") and k.endswith("_n") for k in ev.metrics) == 3


def test_calibration_slope_and_intercept_match_an_independent_logistic_fit_and_read_as_they_should(tmp_path):
    """Van Calster et al. (2019): a reviewer reads slope and intercept beside the plot. The slope against scikit-learn's
    unpenalised logistic regression, the intercept against the root of its score equation, the intervals against a
    finite-difference information; probabilities too extreme give a slope near 1/2, a lower prevalence an intercept
    below 0."""
    from scipy.optimize import brentq
    from scipy.special import expit, logit
    from sklearn.linear_model import LogisticRegression

    from medtl.evaluate.calibration_line import calibration_line

    rng = np.random.default_rng(3)
    n = 3000
    true = expit(rng.normal(0, 1.5, n))
    y = (rng.random(n) < true).astype(int)
    extreme = expit(2 * logit(true))  # twice the true log-odds: too extreme
    z = logit(extreme)
    line = calibration_line(y, z)
    fit = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(z[:, None], y)
    assert line["calibration_slope"] == pytest.approx(fit.coef_[0, 0], abs=1e-5)
    assert line["calibration_slope_ci_low"] < 0.5 < line["calibration_slope_ci_high"]
    a = brentq(lambda a: np.sum(y - expit(a + z)), -10, 10, xtol=1e-12)
    assert line["calibration_intercept"] == pytest.approx(a, abs=1e-6)

    def nll(b0: float, b1: float) -> float:
        s = b0 + b1 * z
        return float(np.sum(np.logaddexp(0, s) - y * s))

    b0, b1, h = fit.intercept_[0], fit.coef_[0, 0], 1e-4
    info = np.array([[nll(b0 + h, b1) - 2 * nll(b0, b1) + nll(b0 - h, b1),
                      (nll(b0 + h, b1 + h) - nll(b0 + h, b1 - h) - nll(b0 - h, b1 + h) + nll(b0 - h, b1 - h)) / 4],
                     [0.0, nll(b0, b1 + h) - 2 * nll(b0, b1) + nll(b0, b1 - h)]]) / h ** 2
    info[1, 0] = info[0, 1]
    se = np.sqrt(np.linalg.inv(info)[1, 1])
    assert line["calibration_slope_ci_high"] - line["calibration_slope"] == pytest.approx(1.959964 * se, rel=1e-3)
    honest = calibration_line(y, logit(true))
    assert honest["calibration_slope_ci_low"] < 1 < honest["calibration_slope_ci_high"]
    assert honest["calibration_intercept_ci_low"] < 0 < honest["calibration_intercept_ci_high"]
    rare = y.copy()
    rare[(y == 1) & (rng.random(n) < 0.5)] = 0  # half the positives gone: risks overestimated
    assert calibration_line(rare, logit(true))["calibration_intercept_ci_high"] < 0
    separated = calibration_line(np.array([0, 0, 1, 1]), logit(np.array([0.1, 0.2, 0.8, 0.9])))
    assert np.isnan(separated["calibration_slope"])  # no finite maximum: no figure, rather than a huge one
    far_apart = calibration_line(np.array([0, 0, 1, 1] * 5), np.array([-20.0, -18.0, 18.0, 20.0] * 5))
    assert np.isnan(far_apart["calibration_intercept"])  # its interval was ±4,713: the cases say nothing of it
    assert separated["calibration_intercept_ci_high"] - separated["calibration_intercept"] < 3  # informative: kept
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.array(["a", "b"])[y], "patient_id": range(n)})
    logits = np.column_stack([np.zeros(n), z])
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 2.0, EvaluateConfig(bootstrap=0, figures=False), tmp_path)
    assert ev.metrics["calibration_slope_calibrated"] == pytest.approx(2 * ev.metrics["calibration_slope"], rel=1e-6)
    assert ev.metrics["calibration_slope"] == pytest.approx(line["calibration_slope"], rel=1e-9)  # from the logits
    assert "| calibration_slope | " in (tmp_path / "report.md").read_text()


def test_a_figure_title_too_long_for_its_axes_is_broken_into_lines_it_holds():
    """Titles naming the model, the split and n ran past the figure's edges, cut off on both sides."""
    import matplotlib.pyplot as plt

    from medtl.figures import wrap_titles

    fig, (ax, short) = plt.subplots(1, 2, figsize=(8, 4))
    ax.set_title("Reliability, pneumonia — demo-fine_tune, test split (n = 624, 10 equal-mass bins)")
    short.set_title("ROC")
    wrap_titles(fig)
    fig.canvas.draw()
    lines = ax.title.get_text().split("\n")
    assert len(lines) >= 2 and " ".join(lines) == "Reliability, pneumonia — demo-fine_tune, test split (n = 624, 10 equal-mass bins)"
    box, axes_box = ax.title.get_window_extent(), ax.get_window_extent()
    assert box.width <= axes_box.width * 1.1 and short.title.get_text() == "ROC"
    plt.close(fig)
