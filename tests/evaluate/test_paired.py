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
