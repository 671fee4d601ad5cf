"""Metrics against scikit-learn and MONAI, calibration, temperature scaling, patient bootstrap, edge cases."""

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from medtl.config import EvaluateConfig
from medtl.errors import MedtlError
from medtl.evaluate.bootstrap import bootstrap_ci
from medtl.evaluate.calibration import apply_temperature, calibration_metrics, ece_binary, fit_temperature
from medtl.evaluate.metrics import binary_metrics, multiclass_metrics
from medtl.evaluate.report import evaluate_classification, fmt
from medtl.evaluate.segmentation import case_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    m = binary_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp)) and m["npv"] == pytest.approx(tn / (tn + fn))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    p = apply_temperature(logits, 1.0)
    m = multiclass_metrics(y, p)
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["auroc_weighted"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))


def test_a_model_of_several_classes_is_summed_up_by_its_own_figures_not_undefined_binary_ones():
    """The closing table and the run's description showed ``sensitivity undefined`` and a 0.5 threshold for a
    three-class model, which calls each case its most probable class."""
    from medtl.evaluate.report import headline
    from medtl.steps import summary_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    m = multiclass_metrics(y, apply_temperature(rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y], 1.0))
    m.update(ece=0.1, ece_calibrated=0.05, threshold=0.5)
    row = summary_table([("fine_tune", m)]).iloc[0].to_dict()
    assert row == {"strategy": "fine_tune", "test AUROC macro [95% CI]": f"{m['auroc_macro']:.3f}",
                   "accuracy": f"{m['accuracy']:.3f}", "balanced accuracy": f"{m['balanced_accuracy']:.3f}",
                   "ECE before": "0.100", "ECE after": "0.050"}
    said = headline(m, "fine_tune")
    assert f"| AUROC macro [95% CI] | {m['auroc_macro']:.3f} |" in said and "| cases | 300 |" in said
    assert "threshold" not in said and "undefined" not in said


def test_the_report_of_a_model_of_several_classes_gives_its_subgroups_own_figures(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(120)], "label": np.array(["a", "b", "c"])[y],
                          "patient_id": range(120), "site": ["X"] * 100 + ["Y"] * 20})
    ev = evaluate_classification(table, rng.normal(size=(120, 3)) + 2 * np.eye(3)[y], ["a", "b", "c"], 0.5, 1.0,
                                 EvaluateConfig(bootstrap=20, min_subgroup_size=30), tmp_path, ["site"])
    report = (tmp_path / "report.md").read_text()
    x = ev.metrics
    assert "| subgroup | n | AUROC macro | accuracy | balanced accuracy | ECE after temperature |" in report
    assert "threshold" not in report
    assert (f"| site_X | 100 | {fmt(x, 'subgroup_site_X_auroc_macro')} | {fmt(x, 'subgroup_site_X_accuracy')} | "
            f"{fmt(x, 'subgroup_site_X_balanced_accuracy')} |") in report
    assert "| site_Y | 20 | too small | too small | too small | too small |" in report and "undefined" not in report


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_matches_sklearn_calibration_curve_and_brier_nll(strategy):
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p**1.5).astype(int)
    frac, mean_p = calibration_curve(y, p, n_bins=10, strategy=strategy)
    edges = np.percentile(p, np.linspace(0, 100, 11)) if strategy == "quantile" else np.linspace(0, 1, 11)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    want = np.sum(counts * np.abs(frac - mean_p)) / len(p)
    assert ece_binary(y, p, 10, strategy)[0] == pytest.approx(want)
    c = calibration_metrics(y, p, 10)
    assert c["brier"] == pytest.approx(brier_score_loss(y, p))
    assert c["nll"] == pytest.approx(log_loss(y, p))


def test_ece_hand_worked_example():
    # two bins of width 0.5: [0.2, 0.4] with outcomes [0, 1] -> |0.5 - 0.3| ; [0.9, 0.9] with [1, 1] -> |1 - 0.9|
    y = np.array([0, 1, 1, 1])
    p = np.array([0.2, 0.4, 0.9, 0.9])
    ece, mce = ece_binary(y, p, bins=2)
    assert ece == pytest.approx((2 * 0.2 + 2 * 0.1) / 4)
    assert mce == pytest.approx(0.2)


def test_temperature_scaling_lowers_nll_and_keeps_auroc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = np.column_stack([np.zeros(400), 1.0 * (2 * y - 1) + rng.normal(0, 1.2, 400)]) * 5  # over-confident
    t = fit_temperature(logits, y)
    assert t > 1.5
    before, after = apply_temperature(logits, 1.0), apply_temperature(logits, t)
    assert log_loss(y, after) < log_loss(y, before)
    assert roc_auc_score(y, after[:, 1]) == pytest.approx(roc_auc_score(y, before[:, 1]))


def test_bootstrap_resamples_patients_not_images():
    # one patient holds 50 positive images; the others hold one image each
    y = np.array([1] * 50 + [0] * 25 + [1] * 25)
    groups = np.array(["big"] * 50 + [f"p{i}" for i in range(50)])
    p = np.where(np.arange(100) < 50, 0.9, np.linspace(0.1, 0.6, 100))
    mean_fn = lambda yy, pp: {"share_big": float(np.mean(pp == 0.9))}  # noqa: E731
    image_ci = bootstrap_ci(mean_fn, y, p, None, 300, seed=0)["share_big"]
    patient_ci = bootstrap_ci(mean_fn, y, p, groups, 300, seed=0)["share_big"]
    # resampling the big patient as a unit makes its share jump in steps of ~50 images: a much wider interval
    assert (patient_ci[1] - patient_ci[0]) > 2 * (image_ci[1] - image_ci[0])


def test_edge_cases_answer_with_reasons(tmp_path):
    y = np.zeros(10, int)
    p = np.linspace(0, 1, 10)
    m = binary_metrics(y, p)
    assert np.isnan(m["auroc"]) and np.isnan(m["sensitivity"]) and m["specificity"] == pytest.approx(0.5)
    with pytest.raises(MedtlError, match="NaN"):
        binary_metrics(y, np.full(10, np.nan))
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(10)], "label": ["a"] * 10, "patient_id": range(10),
                          "site": ["X"] * 9 + ["Y"]})
    logits = np.column_stack([np.zeros(10), np.linspace(-2, 2, 10)])
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=20, min_subgroup_size=5, figures=False),
                                 tmp_path, ["site"])
    assert any("one class" in n for n in ev.notes) and any("site=Y" in n for n in ev.notes)
    assert "subgroup_site_Y_auroc" not in ev.metrics and ev.metrics["subgroup_site_Y_n"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "undefined" in report and "| site_Y | 1 | too small" in report


def test_subgroups_take_any_site_name_mlflow_accepts_and_carry_patient_bootstrap_cis(tmp_path):
    """A site named "St. Mary's (north)" failed MLflow's metric-name check and sent the whole run offline;
    subgroup figures had no interval, unlike every other figure of the report."""
    from mlflow.utils.validation import _validate_metric_name
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 90
    y = rng.integers(0, 2, n)
    site = np.array(["St. Mary's (north)", "Hôpital: CT/2", None], dtype=object)[np.arange(n) % 3]
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.array(["a", "b"])[y],
                          "patient_id": np.arange(n) // 2, "site": site, "Sex (M/F)": np.array(["M", "F"])[np.arange(n) % 2]})
    logits = np.column_stack([np.zeros(n), y + rng.normal(0, 1, n)])
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=100, min_subgroup_size=5, figures=False),
                                 tmp_path, ["site", "Sex (M/F)"])  # a column headed as CheXpert's or a form's are
    keys = [k for k in ev.metrics if k.startswith("subgroup_")]
    for key in keys:
        _validate_metric_name(key)
    assert ev.metrics["subgroup_Sex _M_F__M_n"] == 45
    m = ev.metrics
    for name, rows in (("St. Mary_s _north_", site == "St. Mary's (north)"), ("Hôpital_ CT_2", site == "Hôpital: CT/2"),
                       ("missing", pd.isna(site))):
        key = f"subgroup_site_{name}"
        assert m[f"{key}_n"] == rows.sum()
        assert m[f"{key}_auroc"] == pytest.approx(roc_auc_score(y[rows], logits[rows, 1]))
        assert m[f"{key}_auroc_ci_low"] < m[f"{key}_auroc"] < m[f"{key}_auroc_ci_high"]
        p = apply_temperature(logits[rows], 1.0)[:, 1]  # calibration per subgroup: a hand ECE of 15 equal bins
        bins = np.minimum((p * 15).astype(int), 14)
        hand = sum(abs(y[rows][bins == b].mean() - p[bins == b].mean()) * (bins == b).mean() for b in np.unique(bins))
        assert m[f"{key}_ece_calibrated"] == pytest.approx(hand)
        assert m[f"{key}_ece_calibrated_ci_low"] <= m[f"{key}_ece_calibrated_ci_high"]
    assert "| site_missing | 30 |" in (tmp_path / "report.md").read_text()


def test_segmentation_metrics_match_monai_and_empty_conventions():
    ref = np.zeros((20, 20, 10), bool)
    ref[5:12, 5:12, 3:7] = True
    pred = np.zeros_like(ref)
    pred[6:13, 5:12, 3:8] = True
    m = case_metrics(pred, ref, (0.5, 0.5, 2.0))
    inter = (pred & ref).sum()
    assert m["dice"] == pytest.approx(2 * inter / (pred.sum() + ref.sum()))
    assert m["iou"] == pytest.approx(inter / (pred | ref).sum())
    want = compute_hausdorff_distance(torch.tensor(pred)[None, None].float(), torch.tensor(ref)[None, None].float(),
                                      percentile=95, spacing=[0.5, 0.5, 2.0])
    assert m["hd95_mm"] == pytest.approx(float(want))
    empty = np.zeros_like(ref)
    assert case_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    one = case_metrics(empty, ref, (1, 1, 1))
    assert one["dice"] == 0.0 and np.isnan(one["hd95_mm"])


def test_several_classes_are_measured_one_by_one_and_a_swap_is_no_success(tmp_path):
    """Measured as one foreground, a model that calls the core oedema and the oedema core is perfect. Class by class
    (Dice by hand on each label), it is wrong everywhere; validation follows the same headline."""
    from medtl.evaluate.segmentation import mean_dice, summarise

    ref = np.zeros((20, 20, 10), np.int64)
    ref[5:12, 5:12, 3:7] = 1
    ref[8:10, 8:10, 4:6] = 2
    classes = ["background", "oedema", "core"]
    swapped = np.where(ref == 1, 2, np.where(ref == 2, 1, 0))
    assert case_metrics(swapped, ref, (1, 1, 1))["dice"] == 1.0  # one foreground, as before
    m = case_metrics(swapped, ref, (1, 1, 1), classes)
    assert m["dice"] == 0.0 and m["dice_oedema"] == 0.0 and m["dice_core"] == 0.0
    shifted = np.roll(ref, 1, axis=0)
    m = case_metrics(shifted, ref, (0.5, 0.5, 2.0), classes)
    by_hand = {name: 2 * ((shifted == k) & (ref == k)).sum() / ((shifted == k).sum() + (ref == k).sum())
               for k, name in enumerate(classes) if k}
    assert m["dice_oedema"] == pytest.approx(by_hand["oedema"]) and m["dice_core"] == pytest.approx(by_hand["core"])
    assert m["dice"] == pytest.approx(np.mean(list(by_hand.values())))
    want = compute_hausdorff_distance(torch.tensor(shifted == 2)[None, None].float(), torch.tensor(ref == 2)[None, None].float(),
                                      percentile=95, spacing=[0.5, 0.5, 2.0])
    assert m["hd95_mm_core"] == pytest.approx(float(want))
    assert mean_dice(shifted, ref, 3) == pytest.approx(m["dice"]) and mean_dice(swapped, ref, 3) == 0.0
    summary = summarise([{"case_id": "a", **m}, {"case_id": "b", **case_metrics(ref, ref, (1, 1, 1), classes)}])
    assert summary["dice_core_mean"] == pytest.approx((by_hand["core"] + 1) / 2)


def test_segmentation_means_carry_patient_bootstrap_cis():
    """Dice and distances had no interval, unlike every classification figure; a patient's scans resample
    together, so scans that repeat a patient widen the interval, and an undefined distance stays out of it."""
    from medtl.evaluate.segmentation import summarise

    rng = np.random.default_rng(0)
    dice = np.clip(rng.normal(0.8, 0.1, 40), 0, 1)
    rows = [{"dice": d, "iou": d / (2 - d), "hd95_mm": 2.0, "asd_mm": float("nan") if i == 3 else 1.0}
            for i, d in enumerate(dice)]
    per_scan = summarise(rows, np.arange(40), n_resamples=400)
    assert per_scan["dice_mean"] == pytest.approx(dice.mean())
    assert per_scan["dice_mean_ci_low"] < dice.mean() < per_scan["dice_mean_ci_high"]
    assert per_scan["hd95_mm_mean_ci_low"] == per_scan["hd95_mm_mean_ci_high"] == 2.0  # no spread, no width
    assert per_scan["asd_mm_mean"] == 1.0 and per_scan["asd_mm_mean_ci_high"] == 1.0 and per_scan["asd_mm_undefined"] == 1
    twice = summarise(rows + rows, np.r_[np.arange(40), np.arange(40)], n_resamples=400)
    naive = summarise(rows + rows, np.arange(80), n_resamples=400)
    width = {k: m["dice_mean_ci_high"] - m["dice_mean_ci_low"] for k, m in (("twice", twice), ("naive", naive))}
    assert width["twice"] > 1.25 * width["naive"]
    assert "dice_mean_ci_low" not in summarise(rows)  # no resampling asked: no interval claimed


def test_segmentation_subgroups_report_each_sites_dice_with_its_interval():
    from medtl.evaluate.segmentation import subgroup_summaries

    rng = np.random.default_rng(3)
    site = np.array(["North (A)", "South", None, "South"] * 10, dtype=object)
    dice = np.where(site == "South", 0.6, 0.8) + rng.normal(0, 0.05, 40)
    rows = [{"dice": d, "iou": d, "hd95_mm": 2.0, "asd_mm": 1.0} for d in dice]
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(40)], "site": site})
    notes: list[str] = []
    m = subgroup_summaries(table, rows, np.arange(40), ["site"], 12, 200, 0.95, 0, notes)
    south = dice[site == "South"]
    assert m["subgroup_site_South_n"] == 20 and m["subgroup_site_South_dice_mean"] == pytest.approx(south.mean())
    assert m["subgroup_site_South_dice_mean_ci_low"] < south.mean() < m["subgroup_site_South_dice_mean_ci_high"]
    assert m["subgroup_site_North _A__n"] == 10 and "subgroup_site_North _A__dice_mean" not in m  # below 12 cases
    assert m["subgroup_site_missing_n"] == 10 and any("site=North (A): 10 cases" in n for n in notes)


def test_report_writes_plots_and_ci(tmp_path, monkeypatch):
    from medtl.evaluate import plots

    drawn = {}
    roc_plot = plots.roc_plot
    monkeypatch.setattr(plots, "roc_plot", lambda *a, **k: drawn.update(k) or roc_plot(*a, **k))
    rng = np.random.default_rng(0)
    n = 120
    lab = rng.integers(0, 2, n)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.where(lab, "b", "a"),
                          "patient_id": [f"p{i // 2}" for i in range(n)], "site": np.where(np.arange(n) % 2, "A", "B")})
    logits = np.column_stack([np.zeros(n), 2.5 * (2 * lab - 1) + rng.normal(0, 1.5, n)])
    ev = evaluate_classification(table, logits, ["a", "b"], 0.5, 1.7, EvaluateConfig(bootstrap=100), tmp_path, ["site"])
    m = ev.metrics
    assert m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
    assert m["auroc"] == pytest.approx(roc_auc_score(lab, logits[:, 1]))
    assert "ece_calibrated" in m and "subgroup_site_A_auroc" in m
    assert drawn["auroc_ci"] == (m["auroc_ci_low"], m["auroc_ci_high"])  # the figure's 200 resamples gave another
    for name in ("roc", "reliability", "confusion_matrix", "precision_recall"):
        for suffix in (".png", ".svg"):  # the dashboard's and the paper's
            assert (tmp_path / f"{name}{suffix}").stat().st_size > 0
            assert tmp_path / f"{name}{suffix}" in ev.files
    for name in ("report.md", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_reliability_figure_takes_a_bin_whose_cases_are_all_one_class(tmp_path, monkeypatch):
    """A pure bin of 6 positives puts the Wilson bound on the frequency up to rounding (-1e-16): no crash. The
    legend's ECE is over the diagram's bins, and says so: it used to read as the report's, over other bins."""
    import medtl.evaluate.plots as plots

    labels, errorbar = [], plots.plt.Axes.errorbar
    monkeypatch.setattr(plots.plt.Axes, "errorbar", lambda ax, *a, **k: labels.append(k["label"]) or errorbar(ax, *a, **k))
    y = np.array([0] * 6 + [1] * 6)
    p = np.linspace(0.05, 0.95, 12)
    path = plots.reliability_plot(y, {"model": p}, tmp_path / "rel.png", bins=2)
    assert path.is_file() and path.with_suffix(".svg").is_file()
    by_hand = 0.5 * abs(p[:6].mean() - 0) + 0.5 * abs(p[6:].mean() - 1)  # two bins of six: all 0, all 1
    assert labels == [f"model: ECE {by_hand:.3f} over these bins"]


def test_every_figure_title_names_the_model_and_the_split(tmp_path, monkeypatch):
    import medtl.evaluate.plots as plots
    from medtl.evaluate.run import figure_subject

    titles = []
    monkeypatch.setattr(plots.plt.Axes, "set_title", lambda ax, t, *a, **k: titles.append(t))
    real_set = plots.plt.Axes.set

    def record_set(ax, **kw):
        if "title" in kw:
            titles.append(kw["title"])
        return real_set(ax, **kw)

    monkeypatch.setattr(plots.plt.Axes, "set", record_set)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(20)], "label": ["a", "b"] * 10, "patient_id": range(20),
                          "split": ["test"] * 20})
    logits = np.column_stack([np.zeros(20), np.tile([-1.0, 1.0], 10) + np.linspace(-0.5, 0.5, 20)])
    subject = figure_subject(type("B", (), {"spec": type("S", (), {"name": "pneu-fine_tune"})()})(), table)
    assert subject == "pneu-fine_tune, test split"
    evaluate_classification(table, logits, ["a", "b"], 0.5, 1.0, EvaluateConfig(bootstrap=20), tmp_path, subject=subject)
    assert len(titles) >= 4 and all("pneu-fine_tune, test split" in t and "n = 20" in t for t in titles), titles
