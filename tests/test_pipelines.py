"""Every pipeline through the CLI on tiny synthetic data; every shipped config validates."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medtl.data.synthetic import make_classification_set, make_segmentation_set
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


@pytest.mark.parametrize("config", sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "medtl" / "configs").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_shipped_config_validates(config):
    res = run_cli("config", "validate", str(config))
    assert res.returncode == 0, res.stderr


def test_a_users_own_pipeline_file_runs_by_path_and_unknown_names_are_one_line(tmp_path):
    own = tmp_path / "mine.py"
    own.write_text("def run(cfg, folds=3):\n    return {'summary': f'{cfg.name} with {folds} folds'}\n")
    res = run_cli("run", str(own), "--folds", "4", "--set", "name=study")
    assert res.returncode == 0 and "study with 4 folds" in res.stdout, res.stderr
    res = run_cli("run", str(own), "--resume")  # not silently ignored by a pipeline that has no resume
    assert res.returncode == 2 and "cannot resume" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("run", "diagnosys")
    assert res.returncode == 2 and "diagnosis" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("pipeline, task, other", [("diagnosis", "segmentation", "segmentation"),
                                                   ("segmentation", "classification", "diagnosis")])
def test_a_config_for_the_other_task_is_refused_naming_the_pipeline_to_run(tmp_path, pipeline, task, other):
    res = run_cli("run", pipeline, "--set", f"data.task={task}", "--set", f"train.out_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert res.returncode != 0 and f"medtl run {other}" in res.stderr and "data.task" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_batch_score_pipeline_without_a_registered_model_is_one_clear_line(tmp_path):
    m = make_classification_set(tmp_path / "d", n=4, kind="png", size=(16, 16))
    res = run_cli("run", "batch_score", *sets(f"data.manifest={m}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                              "tracking.registered_model=nobody"), cwd=tmp_path)
    assert res.returncode != 0 and "nobody" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_compare_pipeline_trains_every_strategy_and_its_models_score(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    import medtl.steps as steps

    written, real_save = [], steps.save_model
    monkeypatch.setattr(steps, "save_model", lambda b, path, *a: (written.append(Path(path)), real_save(b, path, *a))[1])

    m = make_classification_set(tmp_path / "d", n=30, kind="png", size=(32, 32), split=True)
    common = sets(f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                  f"train.out_dir={tmp_path / 'runs'}", "train.epochs=1", "train.batch_size=8", "evaluate.bootstrap=20", "evaluate.figures=false",
                  f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.registered_model=cmp", "name=cmp")
    res = run_cli("run", "compare", *common, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for strategy in ("scratch", "feature_extraction", "fine_tune", "full"):
        assert strategy in res.stdout
        assert (tmp_path / "runs" / f"cmp-{strategy}" / "model.pt").is_file()
    # model.pt is written once per run, when calibration and evaluation have set what it carries
    assert sorted(p.parent.name for p in written) == sorted(f"cmp-{s}" for s in ("scratch", "feature_extraction", "fine_tune", "full"))
    preds = {s: pd.read_csv(tmp_path / "runs" / f"cmp-{s}" / "evaluation_test" / "predictions.csv") for s in ("fine_tune", "scratch")}
    y = preds["fine_tune"]["label"] == "lesion"
    want = roc_auc_score(y, preds["fine_tune"]["prob_lesion"]) - roc_auc_score(y, preds["scratch"]["prob_lesion"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("medtl").experiment_id])
                  if r.info.run_name == "cmp-compare")
    assert parent.data.metrics["paired_delta_auroc"] == pytest.approx(want)
    assert {"paired/decision_curve.png", "paired/decision_curve.svg", "paired/paired_comparison.md", "paired/roc_both.png",
            "paired/reliability_both.svg"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id, "paired")}
    cli = run_cli("compare", str(tmp_path / "runs" / "cmp-fine_tune" / "evaluation_test" / "predictions.csv"),
                  str(tmp_path / "runs" / "cmp-scratch" / "evaluation_test" / "predictions.csv"), "--out",
                  str(tmp_path / "cmp"), "--names", "fine_tune,scratch", "--bootstrap", "50")
    assert cli.returncode == 0 and "DeLong" in cli.stdout, cli.stderr
    model = tmp_path / "runs" / "cmp-fine_tune" / "model.pt"
    res = run_cli("score", "--model", str(model), "--manifest", str(m), "--out", str(tmp_path / "s.csv"), "--no-track")
    assert res.returncode == 0, res.stderr
    scored = pd.read_csv(tmp_path / "s.csv", dtype={"case_id": str})
    assert sorted(scored["case_id"]) == sorted(pd.read_csv(m, dtype={"case_id": str})["case_id"])
    assert (scored["status"] == "ok").all()
    np.testing.assert_allclose(scored["prob_normal"] + scored["prob_lesion"], 1.0, rtol=1e-12)


@pytest.mark.slow
def test_label_efficiency_trains_nested_subsets_and_logs_the_curve(tmp_path):
    from mlflow import MlflowClient

    m = make_classification_set(tmp_path / "d", n=40, kind="png", size=(16, 16), split=True)
    common = [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[16,16]",
              f"train.out_dir={tmp_path / 'runs'}", "train.epochs=1", "train.batch_size=8", "evaluate.bootstrap=20",
              "evaluate.figures=false", "study.strategies=[scratch,feature_extraction]", "study.fractions=[0.5,1.0]",
              "study.seeds=1", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "name=le"]
    refused = run_cli("run", "label_efficiency", *sets(*common), cwd=tmp_path)  # the default pair, fine_tune vs scratch
    assert refused.returncode == 2 and "study.compare names fine_tune, which study.strategies" in refused.stderr
    assert not (tmp_path / "runs" / "le").exists()  # refused before training, not a study without its comparison
    res = run_cli("run", "label_efficiency", *sets(*common, "study.compare=[feature_extraction,scratch]"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    curve = pd.read_csv(tmp_path / "runs" / "le" / "learning_curve.csv")
    assert sorted(zip(curve["strategy"], curve["fraction"])) == [("feature_extraction", 0.5), ("feature_extraction", 1.0),
                                                                  ("scratch", 0.5), ("scratch", 1.0)]
    half = pd.read_csv(tmp_path / "runs" / "le" / "f0.5_s0.csv", dtype=str)
    full = pd.read_csv(tmp_path / "runs" / "le" / "f1_s0.csv", dtype=str)
    assert set(half.loc[half["split"] == "train", "case_id"]) < set(full.loc[full["split"] == "train", "case_id"])
    assert (half["split"] != "train").sum() == (full["split"] != "train").sum()  # the same val and test cases
    assert set(half.loc[half["split"] == "train", "label"]) == {"normal", "lesion"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("medtl").experiment_id])
                  if r.info.run_name == "le-label-efficiency")
    assert {"learning_curve.png", "learning_curve.svg", "learning_curve.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(pd.read_csv(tmp_path / "runs" / "le" / "paired_by_size.csv")) == 2


def test_label_efficiency_of_several_classes_draws_macro_auroc_and_skips_the_binary_comparison(tmp_path):
    """Its curve was of the binary AUROC, undefined for three classes: every point NaN."""
    m = make_classification_set(tmp_path / "d", n=45, kind="png", size=(16, 16), split=True)
    table = pd.read_csv(m, dtype=str)
    table["label"] = np.array(["a", "b", "c"])[np.arange(len(table)) % 3]
    table.to_csv(m, index=False)
    res = run_cli("run", "label_efficiency", *sets(
        f"data.manifest={m}", "data.image_size=[16,16]", f"train.out_dir={tmp_path / 'runs'}", "train.epochs=1",
        "evaluate.bootstrap=20", "evaluate.figures=false", "study.strategies=[scratch,feature_extraction]",
        "study.compare=[feature_extraction,scratch]", "study.fractions=[1.0]", "study.seeds=1", "tracking.enabled=false",
        "name=le3"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    curve = pd.read_csv(tmp_path / "runs" / "le3" / "learning_curve.csv")
    assert "auroc_macro" in curve and curve["auroc_macro"].notna().all() and curve["ci_low"].notna().all()
    assert "--positive CLASS" in res.stderr  # no paired ΔAUROC of an arbitrary class against the rest


def test_a_studys_models_spend_no_pass_on_typicality(tmp_path):
    """Dozens of models measured for a curve, not put to scoring: each would read up to 3,000 cases once more."""
    from medtl.config import load_config
    from medtl.pipelines.label_efficiency import study_variant

    cfg = load_config(None, ["data.classes=[normal,lesion]"])
    variant = study_variant(cfg, "scratch", tmp_path / "f0.5_s0.csv", tmp_path, "0.5-s0")
    assert cfg.evaluate.typicality and not variant.evaluate.typicality


@pytest.mark.slow
def test_label_efficiency_for_segmentation_pairs_dice_at_every_size(tmp_path):
    """Dice stands in for AUROC: the curve carries its CI and each size a paired ΔDice with its CI and
    Wilcoxon; a half-size subset (3 training scans, batch 2) must not end an epoch in a batch of one."""
    m = make_segmentation_set(tmp_path / "s", n=10, size=(32, 32, 16))
    res = run_cli("run", "label_efficiency", *sets(
        f"data.manifest={m}", "data.task=segmentation", "data.spatial_dims=3", "data.image_size=[32,32,16]",
        "data.modality=ct", "model.backbone=resnet10", "model.pretrained=none", "study.strategies=[scratch,full]",
        "study.compare=[full,scratch]", "study.fractions=[0.5,1.0]", "study.seeds=1", "train.loss=dice_ce",
        "train.epochs=1", "train.batch_size=2", f"train.out_dir={tmp_path / 'runs'}", "evaluate.bootstrap=50",
        "evaluate.figures=false", "tracking.enabled=false", "name=sle"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "runs" / "sle"
    curve = pd.read_csv(out / "learning_curve.csv")
    assert {"dice_mean", "ci_low", "ci_high"} <= set(curve.columns) and curve["ci_low"].notna().all()
    paired = pd.read_csv(out / "paired_by_size.csv")
    assert list(paired["fraction"]) == [0.5, 1.0]
    assert {"delta_dice", "delta_dice_ci_low", "delta_dice_ci_high", "wilcoxon_p"} <= set(paired.columns)
    assert (out / "paired_f0.5" / "paired_comparison.md").read_text().startswith("# full vs scratch")


@pytest.mark.slow
def test_segmentation_pipeline_and_evaluate_command(tmp_path):
    m = make_segmentation_set(tmp_path / "s", n=8, size=(32, 32, 16))
    res = run_cli("run", "segmentation", *sets(
        f"data.manifest={m}", "data.task=segmentation", "data.spatial_dims=3", "data.image_size=[32,32,16]",
        "data.modality=ct", "model.backbone=resnet10", "model.pretrained=none", "transfer.strategy=scratch",
        "train.loss=dice_ce", "train.epochs=2", "train.batch_size=2", f"train.out_dir={tmp_path / 'runs'}",
        "tracking.enabled=false", "name=seg"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "seg"
    per_case = pd.read_csv(run / "evaluation_test" / "per_case.csv")
    report = (run / "evaluation_test" / "report.md").read_text()
    mean = f"{per_case['dice'].mean():.3f}"
    assert f"| dice | {mean} [" in report and f"] | {per_case['dice'].median():.3f} |" in report  # mean [CI] | median
    assert (run / "evaluation_test" / "overlays.png").stat().st_size > 0
    out = tmp_path / "ev"
    res = run_cli("evaluate", "--model", str(run), "--manifest", str(m), "--split", "all", "--out", str(out),
                  "--no-figures")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dice_mean" in res.stdout and (out / "per_case.csv").is_file() and not list(out.glob("*.png"))
    reference = m.parent / "masks"
    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    res = run_cli("score", "--model", str(run / "model.pt"), "--manifest", str(m), "--out", str(tmp_path / "ref.csv"),
                  "--masks-out", str(reference), "--no-track")  # the reference masks' own folder
    assert res.returncode == 2 and "holds files medtl did not write" in res.stderr, res.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before  # predictions used to overwrite them
    masks = tmp_path / "masks"
    res = run_cli("score", "--model", str(run / "model.pt"), "--manifest", str(m), "--out", str(tmp_path / "seg.csv"),
                  "--masks-out", str(masks), "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    import nibabel as nib

    scored = pd.read_csv(tmp_path / "seg.csv").set_index("case_id")
    evaluated = pd.read_csv(out / "per_case.csv").set_index("case_id")
    assert len(list(masks.glob("*.nii.gz"))) == 8
    for case in scored.index:
        src = nib.load(str(m.parent / "images" / f"{case}.nii.gz"))
        written = nib.load(str(masks / f"{case}.nii.gz"))
        assert written.shape == src.shape and np.allclose(written.affine, src.affine, atol=1e-5)
        pred = np.asarray(written.dataobj) > 0
        voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
        assert scored.loc[case, "lesion_volume_ml"] == pytest.approx(pred.sum() * voxel_ml)
        ref = np.asarray(nib.load(str(m.parent / "masks" / f"{case}.nii.gz")).dataobj) > 0
        dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) if pred.sum() + ref.sum() else 1.0
        assert evaluated.loc[case, "dice"] == pytest.approx(dice)  # the scored mask is the evaluated one


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dann", "adabn"])
def test_adaptation_pipeline_logs_source_and_target_metrics(tmp_path, method, monkeypatch):
    from mlflow import MlflowClient

    import medtl.data.manifest as manifests

    m = make_classification_set(tmp_path / "d", n=32, kind="png", size=(32, 32), split=True)
    res = run_cli("manifest", "shift", str(m), "--out", str(tmp_path / "shifted"))
    assert res.returncode == 0, res.stderr
    reads, real_read = [], manifests.read_manifest
    monkeypatch.setattr(manifests, "read_manifest", lambda path, *a, **k: (reads.append(Path(path).parent.name), real_read(path, *a, **k))[1])
    import medtl.train.run
    monkeypatch.setattr(medtl.train.run, "read_manifest", manifests.read_manifest)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_cli("run", "adaptation", *sets(
        f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]", f"train.out_dir={tmp_path / 'runs'}",
        "train.epochs=2", "train.batch_size=8", "evaluate.bootstrap=20", "evaluate.figures=false", f"adaptation.method={method}",
        f"adaptation.target_manifest={tmp_path / 'shifted' / 'manifest.csv'}", f"tracking.uri={uri}", "name=ad"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("medtl").experiment_id])[0]
    for key in ("source_test_auroc", "source_test_ece", "target_test_auroc", "target_test_ece"):
        assert key in run.data.metrics, key  # both classes in every test split: every metric is defined
    assert reads.count("shifted") == 1  # the target manifest is read once for training, AdaBN and its evaluation
    if method == "dann":
        assert [h.step for h in client.get_metric_history(run.info.run_id, "domain_accuracy")] == [1, 2]
    else:
        assert run.data.metrics["adabn_target_images"] > 0


@pytest.mark.slow
def test_crossval_nested_fold_runs_and_parent_mean_sd(tmp_path):
    from mlflow import MlflowClient

    m = make_classification_set(tmp_path / "d", n=36, kind="png", size=(32, 32))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_cli("run", "crossval", "--folds", "3", *sets(
        f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]", f"train.out_dir={tmp_path / 'runs'}",
        "train.epochs=1", "train.batch_size=8", "evaluate.bootstrap=10", "evaluate.figures=false", "transfer.strategy=feature_extraction",
        f"tracking.uri={uri}", "name=cv"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medtl").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "cv-cv3")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    aurocs = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["cv_test_accuracy_mean"] == pytest.approx(float(np.mean(aurocs)))
    assert parent.data.metrics["cv_test_accuracy_sd"] == pytest.approx(float(np.std(aurocs, ddof=1)))
    tests = pd.concat([pd.read_csv(tmp_path / "runs" / "cv" / f"fold{k}_manifest.csv").query("split == 'test'") for k in range(3)])
    assert sorted(tests["case_id"]) == sorted(pd.read_csv(m)["case_id"])  # every case tested exactly once


def test_crossval_sums_up_what_every_fold_reports_without_failing_on_a_figure_one_fold_lacks():
    """A fold whose test cases were all of one class had no sensitivity, and the summary ended in a KeyError; a model
    of several classes is summed up by its macro AUROC."""
    from medtl.pipelines.crossval import summarise_folds, summary_lines

    folds = [{"auroc": 0.9, "sensitivity": 0.8, "ece": 0.1}, {"auroc": 0.8, "sensitivity": float("nan"), "ece": 0.2}]
    said = summary_lines(summarise_folds(folds))
    assert said.splitlines() == [f"auroc: 0.850 ± {np.std([0.9, 0.8], ddof=1):.3f}", f"ece: 0.150 ± {np.std([0.1, 0.2], ddof=1):.3f}"]
    several = summarise_folds([{"auroc_macro": 0.7, "balanced_accuracy": 0.5}, {"auroc_macro": 0.9, "balanced_accuracy": 0.7}])
    assert summary_lines(several).splitlines()[0].startswith("auroc_macro: 0.800 ± ")


def test_crossval_of_a_segmentation_config_nests_the_segmentation_pipeline(tmp_path, monkeypatch):
    """Each fold runs the pipeline of the config's task and the summary reports its metrics (Dice, not AUROC)."""
    from medtl.config import load_config
    from medtl.errors import ConfigError
    from medtl.pipelines import crossval, segmentation

    m = make_segmentation_set(tmp_path / "s", n=6, size=(16, 16), kind="png")
    seen = []

    def fold(cfg, nested=False):
        seen.append(cfg.data.task)
        assert not cfg.evaluate.typicality  # a fold's model estimates; no pass is spent making it fit for scoring
        return {"evaluation": SimpleNamespace(metrics={"dice_mean": 0.5 + 0.1 * len(seen), "n": 2.0})}

    monkeypatch.setattr(segmentation, "run", fold)
    cfg = load_config(None, [f"data.manifest={m}", "data.task=segmentation", f"train.out_dir={tmp_path / 'runs'}",
                             "tracking.enabled=false"])
    with pytest.raises(ConfigError, match="--folds 2: cross-validation needs at least 3 folds"):
        crossval.run(cfg, folds=2)  # fold k tests, fold k+1 validates: two folds would leave nothing to train
    out = crossval.run(cfg, folds=3)
    assert seen == ["segmentation"] * 3
    assert out["cv"]["cv_test_dice_mean_mean"] == pytest.approx(0.7) and "dice_mean: 0.700 ± 0.100" in out["summary"]


@pytest.mark.slow
def test_2d_segmentation_from_png_with_masks_beside_their_images(tmp_path):
    from PIL import Image

    make_segmentation_set(tmp_path / "s", n=12, size=(32, 32), kind="png", lesion_scale=0.3)
    built = run_cli("manifest", "build", str(tmp_path / "s" / "images"), "--out", str(tmp_path / "m.csv"))
    assert built.returncode == 0, built.stderr
    table = pd.read_csv(tmp_path / "m.csv", dtype=str)
    assert len(table) == 12 and not table["case_id"].str.endswith("_mask").any()  # masks are never cases
    assert (table["mask"] == table["image"].str.replace(".png", "_mask.png")).all()
    res = run_cli("run", "compare", str(REPO / "configs" / "xray_segmentation.yaml"), *sets(
        f"data.manifest={tmp_path / 'm.csv'}", "data.image_size=[32,32]", "train.epochs=1", "train.batch_size=4",
        f"train.out_dir={tmp_path / 'runs'}", "tracking.enabled=false", "name=seg2d"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test Dice (mean)" in res.stdout and "scratch" in res.stdout and "fine_tune" in res.stdout
    per_case = pd.read_csv(tmp_path / "runs" / "seg2d-fine_tune" / "evaluation_test" / "per_case.csv", dtype={"case_id": str})
    out = tmp_path / "masks"
    res = run_cli("score", "--model", str(tmp_path / "runs" / "seg2d-fine_tune" / "model.pt"), "--manifest", str(tmp_path / "m.csv"),
                  "--out", str(tmp_path / "p.csv"), "--masks-out", str(out), "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    for case in table["case_id"]:
        with Image.open(out / f"{case}.png") as written, Image.open(tmp_path / "s" / "images" / f"{case}.png") as src:
            assert written.size == src.size
    for case, dice in zip(per_case["case_id"], per_case["dice"]):  # the written mask is the evaluated one
        pred = np.asarray(Image.open(out / f"{case}.png")) > 0
        ref = np.asarray(Image.open(tmp_path / "s" / "images" / f"{case}_mask.png")) > 0
        hand = 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) if pred.sum() + ref.sum() else 1.0
        assert dice == pytest.approx(hand)
