"""Typicality: the feature density is scikit-learn's probabilistic PCA, its p-values keep their false-alarm rate, and a
scored case carries the typicality of the features the model's head reads."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set
from medtl.models.checkpoint import load_bundle
from medtl.typicality import LEVEL, MIN_CALIBRATION, Typicality, UnlikeTraining, card_note, fit_density
from tests.conftest import run_cli


def _gaussian(rng: np.random.Generator, n: int, d: int = 12) -> np.ndarray:
    scales = np.linspace(3.0, 0.2, d)
    return rng.normal(size=(n, d)) * scales + 5.0


def test_the_density_is_scikit_learns_probabilistic_pca():
    rng = np.random.default_rng(0)
    reference, calibration, new = _gaussian(rng, 300), _gaussian(rng, 150), _gaussian(rng, 50) * 1.5
    density = fit_density(reference, calibration, components=4)
    scale = reference.std(0)  # standardised first, so that features of many scales weigh alike
    log_likelihood = PCA(n_components=4, svd_solver="full").fit(reference / scale).score_samples(new / scale)
    gap = density.atypicality(new) + log_likelihood  # equal up to the normalising constant
    assert np.ptp(gap) < 1e-8 * np.abs(log_likelihood).max()
    assert len(density.calibration) == 150 and np.all(np.diff(density.calibration) >= 0)


def test_p_values_count_the_validation_cases_at_least_as_atypical():
    rng = np.random.default_rng(1)
    density = fit_density(_gaussian(rng, 300), _gaussian(rng, 99), components=4)
    new = np.vstack([_gaussian(rng, 20), density.mean + 50.0])
    scores, cal = density.atypicality(new), density.calibration
    by_hand = [(1 + sum(c >= s for c in cal)) / (len(cal) + 1) for s in scores]
    np.testing.assert_allclose(density.p_values(new), by_hand)
    assert density.p_values(new)[-1] == pytest.approx(1 / 100)  # beyond every validation case: the smallest p-value


def test_scans_like_the_training_scans_are_called_unlike_them_one_time_in_a_hundred():
    rng = np.random.default_rng(2)
    rates, shifted = [], []
    for _ in range(60):  # the guarantee is over calibration sets: average the rate over many
        density = fit_density(_gaussian(rng, 400), _gaussian(rng, MIN_CALIBRATION))
        rates.append(np.mean(density.p_values(_gaussian(rng, 2000)) <= LEVEL))
        other = _gaussian(rng, 200)
        other[:, -1] += 3.0  # another scanner: one direction the training features hardly vary along
        shifted.append(np.mean(density.p_values(other) <= LEVEL))
    assert np.mean(rates) == pytest.approx(LEVEL, abs=0.003)
    assert np.mean(shifted) > 0.9


def test_features_that_do_not_vary_give_no_density_and_non_finite_ones_set_no_rarity():
    flat = np.ones((200, 8))
    assert fit_density(flat, flat) is None
    rng = np.random.default_rng(6)
    calibration = _gaussian(rng, 100)
    calibration[3, 0] = np.nan  # a diverged case's features
    density = fit_density(_gaussian(rng, 300), calibration)
    assert len(density.calibration) == 99 and np.isfinite(density.calibration).all()


def test_a_channel_constant_but_for_rounding_weighs_nothing_so_the_thread_count_cannot_move_a_p_value():
    """A barely trained network's channels vary little (spread 1e-3 here) and some not at all: 1.040781 in every case,
    but for float32 rounding, which moves with the kernels a thread count picks (a Spark executor against a scorer).
    Standardised by that rounding-level spread, the channel's rounding would weigh as much as a real feature."""
    rng = np.random.default_rng(7)

    def features(n):
        real = 1.0 + 1e-3 * _gaussian(rng, n)
        constant = np.float32(1.040781) + rng.normal(0, 1e-7, (n, 1))  # rounding only
        return np.hstack([real, constant])

    density = fit_density(features(300), features(99), components=4)
    new = features(40)
    other_kernels = new.copy()
    other_kernels[:, -1] += rng.normal(0, 2e-7, 40)
    np.testing.assert_allclose(density.atypicality(other_kernels), density.atypicality(new), rtol=1e-6)
    new[:, 0] += 0.03  # a real feature moved by ten of its spreads (3e-3): still heard
    assert np.all(density.p_values(new) <= 0.02)


def test_a_payload_round_trip_keeps_every_p_value():
    rng = np.random.default_rng(3)
    density = fit_density(_gaussian(rng, 300), _gaussian(rng, 120))
    again = Typicality.from_payload(density.to_payload())
    new = _gaussian(rng, 30) * 2
    np.testing.assert_allclose(again.p_values(new), density.p_values(new))


def test_the_model_card_says_what_scoring_marks_and_against_how_many_cases():
    rng = np.random.default_rng(4)
    note = card_note(fit_density(_gaussian(rng, 300), _gaussian(rng, 120)).to_payload())
    assert len(note) == 1 and "300 training cases" in note[0] and "1% of 120 validation cases" in note[0]
    assert card_note(None) == []


def test_a_batch_far_more_often_unlike_than_chance_says_so():
    few = UnlikeTraining(500, ["a", "b", "c", "d", "e"])  # 1%, what chance gives
    many = UnlikeTraining(500, [f"c{i}" for i in range(40)])
    assert not few.more_than_chance and "5 of the 500" in few.message() and "far more" not in few.message()
    assert many.more_than_chance and "and 35 more" in many.message() and "far more than chance" in many.message()
    assert "none of the 20" in UnlikeTraining(20, []).message()


def _train(root, n: int, *overrides: str):
    from medtl.steps import fit_model

    m = make_classification_set(root / "data", n=n, size=(16, 16))
    table = pd.read_csv(m)
    table["patient_id"] = table["case_id"]
    table["split"] = np.where(np.arange(n) % 2 == 0, "train", "val")
    table.to_csv(m, index=False)
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]",
                             "model.backbone=resnet10", "model.pretrained=none", "transfer.strategy=scratch",
                             "train.epochs=1", "train.batch_size=32", f"train.out_dir={root / 'runs'}",
                             "tracking.enabled=false", "evaluate.figures=false", "evaluate.bootstrap=20", *overrides])
    return fit_model(cfg).model_path, m


@pytest.mark.slow
def test_each_scored_case_carries_the_typicality_of_the_features_its_call_was_made_from(tmp_path):
    from medtl.data.transforms import build_transforms
    from medtl.mlflow_model import signature

    model_path, manifest = _train(tmp_path, 2 * (MIN_CALIBRATION + 1))
    bundle = load_bundle(model_path)
    density = Typicality.from_payload(bundle.extra["typicality"])
    assert density.reference_cases == MIN_CALIBRATION + 1 and len(density.calibration) == MIN_CALIBRATION + 1
    assert {"typicality", "unlike_training"} <= set(signature(bundle).outputs.input_names())
    odd = tmp_path / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(odd / "noise.png")
    white = np.full((40, 40), 255, np.uint8)
    white[0] = 0  # one dark row: a blank film is the case's error, not a typicality
    Image.fromarray(white).save(odd / "white.png")
    for case in ("case001", "case002"):
        (odd / f"{case}.png").write_bytes((manifest.parent / "images" / f"{case}.png").read_bytes())
    res = run_cli("score", "--model", str(model_path), "--input", str(odd), "--out", str(tmp_path / "p.csv"),
                  "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    out = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("case_id").sort_index()
    assert density.layers == ["backbone.layer1", "backbone.layer2", "backbone.layer3"]  # strides 4, 8 and 16
    heard: dict[str, np.ndarray] = {}  # each stage's output, caught by hand: the mean and sd of each channel
    for name in density.layers:
        bundle.model.get_submodule(name).register_forward_hook(
            lambda module, args, result, name=name: heard.update({name: result.detach().numpy()}))
    transform = build_transforms(bundle.spec.data, train=False, in_channels=bundle.spec.model.in_channels)
    rows = []
    with torch.no_grad():
        for case in out.index:
            bundle.model.eval()(torch.as_tensor(transform({"image": str(odd / f"{case}.png")})["image"])[None])
            rows.append(np.concatenate([np.r_[a[0].mean((1, 2)), a[0].std((1, 2))]
                                        for a in (heard[n] for n in density.layers)]))
    expected = density.p_values(np.stack(rows))
    # scoring forwards the cases as one batch, this loop one by one: float32 kernels for the two shapes round apart
    # (on an AVX-512 CPU enough to move a case past one validation case), so a rank may differ by one of the 101
    step = 1 / (len(density.calibration) + 1)
    np.testing.assert_allclose(out["typicality"].astype(float), expected, rtol=0, atol=step + 1e-9)
    assert list(out["unlike_training"]) == ["yes" if p <= LEVEL else "no" for p in out["typicality"].astype(float)]
    flagged = int((out["unlike_training"] == "yes").sum())
    assert f"{flagged} of the 4 cases scored" in res.stdout or (flagged == 0 and "none of the 4" in res.stdout)
    from medtl.evaluate.run import evaluate_bundle

    from medtl.config import EvaluateConfig

    ev = evaluate_bundle(bundle, manifest, "val", tmp_path / "ev", EvaluateConfig(figures=False, bootstrap=20))  # the same
    # measure in an evaluation's predictions
    evaluated = pd.read_csv(tmp_path / "ev" / "predictions.csv", keep_default_na=False).set_index("case_id")
    assert evaluated.loc["case001", "typicality"] == pytest.approx(out.loc["case001", "typicality"], rel=1e-4)
    assert ev.metrics["unlike_training_share"] == pytest.approx((evaluated["typicality"] <= LEVEL).mean())
    assert (evaluated["unlike_training"] == np.where(evaluated["typicality"] <= LEVEL, "yes", "no")).all()


@pytest.mark.slow
def test_a_model_with_too_few_validation_cases_scores_without_typicality(tmp_path):
    model_path, manifest = _train(tmp_path, 40)
    assert "typicality" not in load_bundle(model_path).extra
    asked_not_to, _ = _train(tmp_path / "off", 2 * (MIN_CALIBRATION + 1), "evaluate.typicality=false")
    assert "typicality" not in load_bundle(asked_not_to).extra
    res = run_cli("score", "--model", str(model_path), "--manifest", str(manifest), "--out", str(tmp_path / "p.csv"),
                  "--no-track")
    assert res.returncode == 0 and "typicality" not in pd.read_csv(tmp_path / "p.csv").columns
    assert "unlike the training" not in res.stdout


@pytest.mark.slow
def test_rows_are_never_appended_under_another_header(tmp_path):
    model_path, manifest = _train(tmp_path, 40)
    out = tmp_path / "p.csv"
    table = pd.read_csv(manifest).iloc[:3]
    first = manifest.parent / "first.csv"
    table.to_csv(first, index=False)
    first_run = run_cli("score", "--model", str(model_path), "--manifest", str(first), "--out", str(out), "--no-track")
    assert first_run.returncode == 0
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    written.insert(3, "typicality", "0.5")  # as a medtl that measured typicality would have begun it
    written.to_csv(out, index=False)
    res = run_cli("score", "--model", str(model_path), "--manifest", str(manifest), "--out", str(out), "--no-track")
    assert res.returncode != 0 and "its columns differ" in res.stderr and "typicality" in res.stderr
    assert "Traceback" not in res.stderr and len(pd.read_csv(out)) == 3


def test_the_scores_figure_shows_the_typicality_beside_the_scores(tmp_path, monkeypatch):
    import medtl.figures
    from medtl.batch_prevalence import BatchPrevalence, scores_plot

    drawn = []
    monkeypatch.setattr(medtl.figures, "save_figure", lambda fig, path, svg=True: drawn.append(fig) or path)
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(50)], "status": "ok", "prob_lesion": rng.random(50),
                          "typicality": np.r_[np.full(10, 0.005), 0.02 + 0.98 * rng.random(40)]})
    bundle = type("B", (), {"threshold": 0.5})()
    batch = BatchPrevalence("lesion", 50, 0.5, 0.5, "EM", 0.5)
    scores_plot(bundle, table, batch, tmp_path / "s.png")
    scores_plot(bundle, table.drop(columns="typicality"), batch, tmp_path / "t.png")
    assert [len(f.axes) for f in drawn] == [2, 1]
    assert drawn[0].axes[1].get_title().startswith("10 of 50 (20.0%) unlike the training cases")
