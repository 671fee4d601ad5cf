"""Paired comparison: DeLong against a brute-force computation from its definition, AUROCs against
scikit-learn, net benefit against its formula, and the paired bootstrap around the observed difference."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from medtl.evaluate.paired import compare_models, decision_curve, delong_test, write_comparison


def delong_brute_force(y, a, b):
    """DeLong et al. (1988) from the kernel psi(x, z) = 1, 1/2, 0, written out pair by pair."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)

    def psi(p):
        x, z = p[pos][:, None], p[neg][None, :]
        return (x > z) + 0.5 * (x == z)

    ka, kb = psi(a), psi(b)
    v10 = np.stack([ka.mean(1), kb.mean(1)])
    v01 = np.stack([ka.mean(0), kb.mean(0)])
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (ka.mean() - kb.mean()) / np.sqrt(var)
    return ka.mean(), kb.mean(), z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_definition_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(120) < 0.4).astype(int)
    a = np.clip(0.3 * y + rng.normal(0.4, 0.2, 120), 0, 1).round(2)  # rounding makes ties, which DeLong halves
    b = np.clip(0.15 * y + rng.normal(0.4, 0.2, 120), 0, 1).round(2)
    got = delong_test(y, a, b)
    auc_a, auc_b, z, p = delong_brute_force(y, a, b)
    assert got["auroc_a"] == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert got["auroc_b"] == pytest.approx(roc_auc_score(y, b)) == pytest.approx(auc_b)
    assert got["delong_z"] == pytest.approx(z) and got["delong_p"] == pytest.approx(p)


def obuchowski_brute_force(y, a, b, patients):
    """Obuchowski (1997), Biometrics 53:567, written out from the kernel: per patient i, V10_i sums the placements of
    its positive cases among all negatives (V01_i of its negatives among all positives); S10, S01 and S11 are their
    centred sums of products over patients, with I10, I01 and I the patients with a positive, a negative, any case."""
    ids = sorted(set(patients))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)

    def parts(p):
        psi = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
        auc = psi.sum() / (m * n)
        v10 = [sum(psi[j].sum() / n for j, c in enumerate(pos) if patients[c] == i) for i in ids]
        v01 = [sum(psi[:, k].sum() / m for k, c in enumerate(neg) if patients[c] == i) for i in ids]
        m_i = [sum(patients[c] == i for c in pos) for i in ids]
        n_i = [sum(patients[c] == i for c in neg) for i in ids]
        return auc, np.array(v10) - auc * np.array(m_i), np.array(v01) - auc * np.array(n_i)

    (auc_a, x_a, w_a), (auc_b, x_b, w_b) = parts(a), parts(b)
    i10, i01, i = len({patients[c] for c in pos}), len({patients[c] for c in neg}), len(ids)

    def cov(x1, w1, x2, w2):
        return (i10 / ((i10 - 1) * m) * np.sum(x1 * x2) / m + i01 / ((i01 - 1) * n) * np.sum(w1 * w2) / n
                + i / (i - 1) * (np.sum(x1 * w2) + np.sum(x2 * w1)) / (m * n))

    var = cov(x_a, w_a, x_a, w_a) + cov(x_b, w_b, x_b, w_b) - 2 * cov(x_a, w_a, x_b, w_b)
    z = (auc_a - auc_b) / np.sqrt(var)
    return z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1])
def test_delong_by_patient_is_obuchowskis_clustered_test(seed):
    """Patients with one to four films, some with films of both classes (a normal film and a pneumonia film of one
    patient, the S11 term): the p-value follows the patients, as the paired bootstrap does."""
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 5, 45)
    patients = np.repeat([f"p{i}" for i in range(45)], films)
    y = (rng.random(len(patients)) < 0.4).astype(int)
    effect = np.repeat(rng.normal(0, 0.15, 45), films)  # a patient's films look alike
    a = np.clip(0.3 * y + effect + rng.normal(0.4, 0.15, len(y)), 0, 1).round(2)
    b = np.clip(0.15 * y + effect + rng.normal(0.4, 0.15, len(y)), 0, 1).round(2)
    got = delong_test(y, a, b, patients)
    z, p = obuchowski_brute_force(y, a, b, patients)
    assert got["delong_z"] == pytest.approx(z) and got["delong_p"] == pytest.approx(p)
    assert got["auroc_a"] == pytest.approx(roc_auc_score(y, a)) and got["delong_patients"] == 45
    assert got["delong_p"] != pytest.approx(delong_test(y, a, b)["delong_p"])  # films as independent cases: another p


def test_a_patients_repeated_films_do_not_make_delong_or_mcnemar_surer():
    """Each film three times over, as three films of its patient: the same evidence. By patient, DeLong's z is the
    single films' exactly, and McNemar's statistic (K-1)/K (B-C)^2/(B+C) by hand; as independent films, z grows by
    about the square root of 3."""
    from scipy.stats import chi2

    from medtl.evaluate.paired import mcnemar

    rng = np.random.default_rng(7)
    y = (rng.random(80) < 0.5).astype(int)
    a = np.clip(0.35 * y + rng.normal(0.35, 0.2, 80), 0, 1)
    b = np.clip(0.2 * y + rng.normal(0.4, 0.2, 80), 0, 1)
    once = delong_test(y, a, b)
    y3, a3, b3, patients = np.repeat(y, 3), np.repeat(a, 3), np.repeat(b, 3), np.repeat(np.arange(80), 3)
    assert delong_test(y3, a3, b3, patients)["delong_z"] == pytest.approx(once["delong_z"])
    assert delong_test(y3, a3, b3)["delong_z"] == pytest.approx(np.sqrt(3) * once["delong_z"], rel=0.05)
    calls_a, calls_b = a >= 0.5, b >= 0.5
    by_patient = mcnemar(y3, np.repeat(calls_a, 3), np.repeat(calls_b, 3), patients)
    for name, cls in (("sensitivity", 1), ("specificity", 0)):
        right_a, right_b = (calls_a == cls) & (y == cls), (calls_b == cls) & (y == cls)
        only_a, only_b, k = np.sum(right_a & ~right_b), np.sum(right_b & ~right_a), np.sum(y == cls)
        assert only_a + only_b > 0
        want = chi2.sf((k - 1) / k * (only_a - only_b) ** 2 / (only_a + only_b), 1)
        assert by_patient[f"mcnemar_{name}_p"] == pytest.approx(want) and by_patient[f"{name}_only_a"] == 3 * only_a
    assert mcnemar(y, calls_a, calls_b).keys() == {k for k in by_patient if not k.endswith("_clustered")}


def test_delong_with_one_case_of_a_class_gives_no_test_rather_than_p_1(tmp_path):
    import warnings

    y, a, b = np.array([0, 1, 1]), np.array([0.2, 0.9, 0.1]), np.array([0.3, 0.4, 0.8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "degrees of freedom <= 0" was the only sign anything was wrong
        got = delong_test(y, a, b)
    assert "delong_p" not in got and got["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    write_comparison(compare_models(y, a, b, ("a", "b"), n_resamples=20), tmp_path, figures=False)
    assert "no test: it needs two or more patients of each class" in (tmp_path / "paired_comparison.md").read_text()


def test_decision_curve_is_the_net_benefit_formula():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    p = np.array([0.9, 0.6, 0.7, 0.1, 0.3, 0.2, 0.05, 0.8])
    curve = decision_curve(y, {"m": p}, thresholds=np.array([0.25, 0.5]))
    # t = 0.25: called 0.9, 0.6, 0.7, 0.3, 0.8 -> TP 3, FP 2; t = 0.5: 0.9, 0.6, 0.7, 0.8 -> TP 3, FP 1
    assert curve["m"].tolist() == pytest.approx([3 / 8 - 2 / 8 * (0.25 / 0.75), 3 / 8 - 1 / 8 * 1.0])
    assert curve["treat_all"].tolist() == pytest.approx([0.5 - 0.5 * (1 / 3), 0.5 - 0.5])
    assert (curve["treat_none"] == 0).all()


def test_paired_bootstrap_brackets_the_observed_difference_and_files_are_written(tmp_path):
    rng = np.random.default_rng(4)
    y = (rng.random(200) < 0.5).astype(int)
    a = np.clip(0.5 * y + rng.normal(0.25, 0.15, 200), 0, 1)
    b = np.clip(0.1 * y + rng.normal(0.45, 0.15, 200), 0, 1)
    cmp = compare_models(y, a, b, ("pretrained", "scratch"), n_resamples=300)
    m = cmp.metrics
    assert m["delta_auroc"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert m["delta_auroc_ci_low"] < m["delta_auroc"] < m["delta_auroc_ci_high"] and m["delta_auroc_ci_low"] > 0
    assert m["delta_brier"] == pytest.approx(np.mean((a - y) ** 2) - np.mean((b - y) ** 2))
    files = write_comparison(cmp, tmp_path)
    assert {f.name for f in files} >= {"decision_curve.png", "decision_curve.svg", "paired_comparison.md", "roc_both.png",
                                       "roc_both.svg", "reliability_both.png", "reliability_both.svg"}
    assert all(f.is_file() for f in files)
    assert "DeLong" in (tmp_path / "paired_comparison.md").read_text()


def predictions_of(y, p, classes=("normal", "pneumonia"), **extra):
    import pandas as pd

    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(y))], "label": np.where(y == 1, classes[1], classes[0]),
                         f"prob_{classes[0]}": 1 - p, f"prob_{classes[1]}": p, **extra})


def test_two_evaluations_are_compared_by_patient_and_predictions_csv_never_holds_patients(tmp_path):
    """The in-memory predictions of an evaluation carry the patients (two films each here), so the paired CI
    resamples patients exactly as ``compare_models`` does with them; the written file has no patient column."""
    import pandas as pd

    from medtl.config import EvaluateConfig
    from medtl.evaluate.paired import compare_predictions
    from medtl.evaluate.report import evaluate_classification

    rng = np.random.default_rng(5)
    y = np.repeat((rng.random(60) < 0.5).astype(int), 2)
    patients = np.repeat([f"p{i}" for i in range(60)], 2)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(120)], "label": np.where(y == 1, "pos", "neg"),
                          "patient_id": patients})
    cfg = EvaluateConfig(bootstrap=20, figures=False)
    evals = []
    for k, signal in enumerate((2.0, 0.7)):
        logits = np.column_stack([np.zeros(120), signal * (2 * y - 1) + rng.normal(0, 1.0, 120)])
        evals.append(evaluate_classification(table, logits, ["neg", "pos"], 0.5, 1.0, cfg, tmp_path / str(k)))
    assert "patient_id" not in pd.read_csv(tmp_path / "0" / "predictions.csv").columns
    got = compare_predictions(evals[0].predictions, evals[1].predictions, ("a", "b"), 200).metrics
    pa, pb = (e.predictions["prob_pos"].to_numpy() for e in evals)
    by_patient = compare_models(y, pa, pb, ("a", "b"), patients, 200).metrics
    by_film = compare_models(y, pa, pb, ("a", "b"), None, 200).metrics
    assert (got["delta_auroc_ci_low"], got["delta_auroc_ci_high"]) == pytest.approx(
        (by_patient["delta_auroc_ci_low"], by_patient["delta_auroc_ci_high"]))
    assert got["delta_auroc_ci_low"] != pytest.approx(by_film["delta_auroc_ci_low"])
    assert got["delong_p"] == pytest.approx(by_patient["delong_p"]) and got["delong_patients"] == 60
    assert "delong_patients" not in by_film and by_film["delong_p"] != pytest.approx(got["delong_p"])
    write_comparison(compare_predictions(evals[0].predictions, evals[1].predictions, ("a", "b"), 20), tmp_path / "cmp",
                     figures=False)
    said = (tmp_path / "cmp" / "paired_comparison.md").read_text()
    assert "DeLong by patient (Obuchowski 1997, 60 patients): " in said and "McNemar by patient (Obuchowski 1998), " in said


def test_only_cases_both_scored_are_compared_and_mismatches_are_refused(caplog):
    from medtl.errors import MedtlError
    from medtl.evaluate.paired import compare_predictions, shared_cases
    from medtl.log import logger

    rng = np.random.default_rng(6)
    y = (rng.random(40) < 0.5).astype(int)
    a = predictions_of(y, np.clip(0.6 * y + rng.uniform(0, 0.4, 40), 0, 1))
    b = predictions_of(y, rng.uniform(0, 1, 40)).iloc[5:].copy()
    b.loc[b.index[:2], ["prob_normal", "prob_pneumonia"]] = np.nan  # two cases model B failed on
    logger.addHandler(caplog.handler)
    try:
        merged = shared_cases(a, b, ("A", "B"))
    finally:
        logger.removeHandler(caplog.handler)
    assert sorted(merged["case_id"]) == sorted(f"c{i}" for i in range(7, 40))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "2 case(s) that B could not score" in said and "33 cases both scored: 7 only in A, 0 only in B" in said
    want = roc_auc_score(y[7:], a["prob_pneumonia"][7:]) - roc_auc_score(y[7:], b["prob_pneumonia"].iloc[2:])
    assert compare_predictions(a, b, ("A", "B"), 10).metrics["delta_auroc"] == pytest.approx(want)
    relabelled = a.assign(label=np.where(a["case_id"] == "c9", "normal" if y[9] else "pneumonia", a["label"]))
    with pytest.raises(MedtlError, match="case c9: labelled"):
        shared_cases(relabelled, a, ("A", "B"))
    with pytest.raises(MedtlError, match="same classes"):
        shared_cases(a, predictions_of(y, a["prob_pneumonia"].to_numpy(), ("normal", "effusion")), ("A", "B"))
    with pytest.raises(MedtlError, match="B: missing column.*prob_<class>"):
        shared_cases(a, a[["case_id", "label"]], ("A", "B"))
    with pytest.raises(MedtlError, match="share no case"):
        shared_cases(a, a.assign(case_id="x" + a["case_id"]), ("A", "B"))


def test_models_of_several_classes_are_compared_on_the_class_named_against_the_rest(tmp_path, caplog):
    """The last class's probability was compared with the rest unasked (a 3-class model's 'AUROC' was viral against
    the others). Now the class is named (``--positive``), or the comparison is refused; pipelines skip it, saying so."""
    import pandas as pd

    from medtl.errors import MedtlError
    from medtl.evaluate.paired import compare_predictions
    from medtl.log import logger
    from medtl.observe import NullTracker
    from medtl.steps import paired_step

    rng = np.random.default_rng(8)
    classes = np.array(["bacterial", "normal", "viral"])
    y = rng.integers(0, 3, 90)

    def table(noise):
        p = np.exp(2 * np.eye(3)[y] + noise * rng.normal(size=(90, 3)))
        p /= p.sum(1, keepdims=True)
        return pd.DataFrame({"case_id": [f"c{i}" for i in range(90)], "label": classes[y],
                             **{f"prob_{c}": p[:, k] for k, c in enumerate(classes)}})

    a, b = table(1.0), table(3.0)
    with pytest.raises(MedtlError, match=r"predict 3 classes \(bacterial, normal, viral\).*--positive CLASS"):
        compare_predictions(a, b, ("A", "B"), 10)
    with pytest.raises(MedtlError, match="--positive covid: not a class"):
        compare_predictions(a, b, ("A", "B"), 10, positive="covid")
    cmp = compare_predictions(a, b, ("A", "B"), 10, positive="normal")
    want = roc_auc_score(y == 1, a["prob_normal"]) - roc_auc_score(y == 1, b["prob_normal"])
    assert cmp.metrics["delta_auroc"] == pytest.approx(want) and cmp.positive == "normal"
    write_comparison(cmp, tmp_path / "cmp", figures=False)
    assert "on the same 90 cases, normal against the other classes" in (tmp_path / "cmp" / "paired_comparison.md").read_text()
    logger.addHandler(caplog.handler)
    try:
        assert paired_step(NullTracker(), a, b, ("A", "B"), tmp_path / "p", 10) is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "--positive CLASS" in caplog.text and not (tmp_path / "p").exists()


def test_sensitivity_and_specificity_at_each_models_threshold_are_compared_with_mcnemars_exact_test(tmp_path):
    """Two models' calls on the same films: a reviewer asks whether one finds more of the positives, not only whether
    it ranks better. Δsensitivity and Δspecificity against hand counts, McNemar's p against the binomial sum."""
    from math import comb

    import pandas as pd

    from medtl.evaluate.paired import compare_predictions

    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    p_a, p_b = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1), np.clip(y * 0.2 + rng.random(n) * 0.8, 0, 1)
    call_a, call_b = p_a >= 0.5, p_b >= 0.6  # each at its own threshold
    tables = [pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": np.array(["neg", "pos"])[y],
                            "prob_neg": 1 - p, "prob_pos": p, "predicted": np.array(["neg", "pos"])[c.astype(int)]})
              for p, c in ((p_a, call_a), (p_b, call_b))]
    cmp = compare_predictions(*tables, ("a", "b"), n_resamples=200)
    m = cmp.metrics
    pos, neg = y == 1, y == 0
    assert m["delta_sensitivity"] == pytest.approx(call_a[pos].mean() - call_b[pos].mean())
    assert m["delta_specificity"] == pytest.approx((~call_a)[neg].mean() - (~call_b)[neg].mean())
    assert m["delta_sensitivity_ci_low"] < m["delta_sensitivity"] < m["delta_sensitivity_ci_high"]
    for name, among, right_a, right_b in (("sensitivity", pos, call_a, call_b), ("specificity", neg, ~call_a, ~call_b)):
        b, c = int(np.sum(among & right_a & ~right_b)), int(np.sum(among & right_b & ~right_a))
        assert (m[f"{name}_only_a"], m[f"{name}_only_b"]) == (b, c)
        hand = min(1.0, 2 * sum(comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))
        assert m[f"mcnemar_{name}_p"] == pytest.approx(hand)
    write_comparison(cmp, tmp_path / "cmp", figures=False)
    text = (tmp_path / "cmp" / "paired_comparison.md").read_text()
    assert "Δsensitivity, each at its own threshold" in text and "McNemar (exact), sensitivity:" in text
