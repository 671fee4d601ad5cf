"""Two segmentation models on the same cases: paired ΔDice with a patient-bootstrap CI, and Wilcoxon by patient."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from medtl.evaluate.paired_segmentation import compare_segmentations, write_segmentation_comparison


def per_case(dice: np.ndarray, hd95: np.ndarray, patients: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(dice))], "dice": dice, "iou": dice / (2 - dice),
                         "hd95_mm": hd95, "asd_mm": hd95 / 3, "patient_id": patients})


def test_paired_dice_difference_matches_a_hand_computation_and_resamples_patients(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    dice_b = np.clip(rng.normal(0.7, 0.1, n), 0, 1)
    dice_a = np.clip(dice_b + rng.normal(0.05, 0.03, n), 0, 1)
    hd_a, hd_b = rng.uniform(1, 5, n), rng.uniform(2, 6, n)
    hd_a[2] = np.nan  # an empty prediction: no distance, so no difference for that case
    a = per_case(dice_a, hd_a, np.arange(n) // 2)
    b = per_case(dice_b, hd_b, np.arange(n) // 2).sample(frac=1, random_state=0)  # rows in another order
    cmp = compare_segmentations(a, b, ("pretrained", "scratch"), n_resamples=400)
    m = cmp.metrics
    assert m["n"] == n and m["delta_dice"] == pytest.approx(np.mean(dice_a - dice_b))
    assert m["delta_hd95_mm"] == pytest.approx(np.nanmean(hd_a - hd_b))
    by_patient = (dice_a - dice_b).reshape(-1, 2).mean(1)  # 20 patients of two scans each: the test's units
    assert m["wilcoxon_p"] == pytest.approx(wilcoxon(by_patient).pvalue) and m["wilcoxon_patients"] == n // 2
    assert 0 < m["delta_dice_ci_low"] < m["delta_dice"] < m["delta_dice_ci_high"]
    twice_a, twice_b = (pd.concat([t, t.assign(case_id=t.case_id + "x")]) for t in (a, b))  # each scan twice
    grouped = compare_segmentations(twice_a, twice_b, ("a", "b"), n_resamples=400).metrics
    naive = compare_segmentations(twice_a.assign(patient_id=range(2 * n)), twice_b.assign(patient_id=range(2 * n)),
                                  ("a", "b"), n_resamples=400).metrics
    width = {k: v["delta_dice_ci_high"] - v["delta_dice_ci_low"] for k, v in (("grouped", grouped), ("naive", naive))}
    assert width["grouped"] > 1.25 * width["naive"]  # a patient's scans are drawn together
    assert grouped["wilcoxon_p"] == pytest.approx(m["wilcoxon_p"])  # and give one difference: no surer for twice the scans
    assert naive["wilcoxon_p"] == pytest.approx(wilcoxon(np.tile(dice_a - dice_b, 2)).pvalue)
    assert naive["wilcoxon_p"] < m["wilcoxon_p"]
    files = write_segmentation_comparison(cmp, tmp_path / "cmp")
    assert {f.name for f in files} >= {"paired_comparison.md", "paired_per_case.csv", "paired_dice.png", "paired_dice.svg"}
    text = (tmp_path / "cmp" / "paired_comparison.md").read_text()
    assert f"| ΔDice | {m['delta_dice']:+.3f} [{m['delta_dice_ci_low']:+.3f}, {m['delta_dice_ci_high']:+.3f}] |" in text
    assert f"Wilcoxon signed-rank p = {m['wilcoxon_p']:.3g} (by patient: each of the 20 patients' mean ΔDice)" in text


def test_identical_models_have_no_test_and_a_zero_difference():
    a = per_case(np.full(5, 0.8), np.ones(5), np.arange(5))
    m = compare_segmentations(a, a.copy(), ("a", "b"), n_resamples=50).metrics
    assert m["delta_dice"] == 0 and "wilcoxon_p" not in m and m["delta_dice_ci_low"] == m["delta_dice_ci_high"] == 0


def test_the_compare_command_takes_two_segmentation_per_case_files(tmp_path):
    from tests.conftest import run_cli

    rng = np.random.default_rng(1)
    dice_b = rng.uniform(0.5, 0.8, 12)
    for name, dice in (("a", dice_b + 0.1), ("b", dice_b)):
        per_case(dice, np.full(12, 3.0), np.arange(12)).drop(columns="patient_id").to_csv(tmp_path / f"{name}.csv", index=False)
    res = run_cli("compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--names", "pre,scratch",
                  "--out", str(tmp_path / "cmp"), "--bootstrap", "100")
    assert res.returncode == 0, res.stderr
    assert "# pre vs scratch on the same 12 cases" in res.stdout and "| ΔDice | +0.100 [+0.100, +0.100] |" in res.stdout
    pd.DataFrame({"case_id": ["c0"], "dice": [0.5]}).to_csv(tmp_path / "thin.csv", index=False)
    res = run_cli("compare", str(tmp_path / "thin.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "cmp2"))
    assert res.returncode == 2 and "thin.csv: missing column(s) iou, hd95_mm, asd_mm" in res.stderr, res.stderr
