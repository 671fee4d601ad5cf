"""MLflow end to end against a real `mlflow server` on loopback, the PHI guard, and an unreachable store."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medtl.data.synthetic import make_classification_set
from medtl.models.checkpoint import load_bundle
from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.slow


def overrides(manifest, out, uri, extra=()):
    sets = [f"data.manifest={manifest}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
            "data.subgroups=[site]", f"train.out_dir={out}", "train.epochs=2", "train.batch_size=8",
            "train.early_stopping_patience=null", "evaluate.bootstrap=50", "evaluate.min_subgroup_size=3",
            f"tracking.uri={uri}", "tracking.experiment=test", "tracking.registered_model=tiny",
            "tracking.gate_min_auroc_ci_low=null", "tracking.gate_max_ece=null", *extra]
    return [x for s in sets for x in ("--set", s)]


def test_training_run_is_fully_tracked_and_registered_model_reloads(tmp_path, mlflow_server, monkeypatch):
    from mlflow import MlflowClient

    # every split, and site A within the test split, holds both classes: AUROCs are defined whatever the model learns
    m = make_classification_set(tmp_path / "d", n=40, kind="png", size=(32, 32), split=True)
    res = run_cli("run", "diagnosis", *overrides(m, tmp_path / "runs", mlflow_server), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "models:/tiny@candidate" in res.stdout
    for mlflows_own in ("Successfully registered", "Created version", "View run", "INFO mlflow"):  # medtl's lines only
        assert mlflows_own not in res.stdout + res.stderr, mlflows_own
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("test")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.params["train.epochs"] == "2" and run.data.params["transfer.strategy"] == "fine_tune"
    assert run.data.tags["backbone"] == "efficientnet-lite0" and len(run.data.tags["weights_sha256"]) == 64
    assert len(run.data.tags["manifest_sha256"]) == 64
    history = client.get_metric_history(run.info.run_id, "val_auroc")
    assert [h.step for h in history] == [1, 2]
    for key in ("test_auroc_ci_low", "test_auroc_ci_high", "test_ece", "test_ece_calibrated", "test_brier"):
        assert key in run.data.metrics, key
    preds = pd.read_csv(tmp_path / "runs" / "medtl" / "evaluation_test" / "predictions.csv", dtype={"case_id": str})
    sites = pd.read_csv(m, dtype={"case_id": str}).set_index("case_id")["site"]
    y = (preds["label"] == "lesion").to_numpy()
    assert run.data.metrics["test_auroc"] == pytest.approx(roc_auc_score(y, preds["prob_lesion"]))
    in_a = (preds["case_id"].map(sites) == "A").to_numpy()
    assert run.data.metrics["test_subgroup_site_A_auroc"] == pytest.approx(roc_auc_score(y[in_a], preds["prob_lesion"][in_a]))
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["testing", "training", "validation"]
    logged = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert [lm.name for lm in logged] == ["medtl-fine_tune"]  # named by the run and its strategy, not "model"
    linked = {(x.key, x.dataset_name) for x in logged[0].metrics}  # the model's metrics name the split they were measured on
    assert ("test_auroc", "manifest:test") in linked and ("test_ece_calibrated", "manifest:test") in linked
    assert {"progress.png", "progress.svg"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/roc.png", "evaluation/roc.svg", "evaluation/report.md", "evaluation/predictions.csv",
            "evaluation/gradcam.png", "evaluation/reliability.svg"} <= artifacts
    version = client.get_model_version_by_alias("tiny", "candidate")
    assert version.version == "1"
    assert "## Intended use" in version.description and "NEEDS INPUT" in version.description
    assert float(version.tags["test_auroc"]) == pytest.approx(run.data.metrics["test_auroc"], abs=1e-4)
    assert version.tags["dataset_sha256"] == run.data.tags["manifest_sha256"][:16]
    assert "| AUROC [95% CI] |" in run.data.tags["mlflow.note.content"]
    assert "adaptation.method" not in run.data.params and "data.ct_window" not in run.data.params  # params that apply
    assert "threshold" not in run.data.metrics and "test_threshold" in run.data.metrics  # logged once
    # the registered model, loaded back from the server, gives the probabilities the training process computed
    # (a fresh interpreter loads it too: the Spark test's executors compare it with medtl score row for row)
    import mlflow

    table = pd.read_csv(m)
    images = [str(m.parent / table.set_index("case_id").loc[c, "image"]) for c in preds["case_id"]]
    mlflow.set_tracking_uri(mlflow_server)
    monkeypatch.setenv("MEDTL_DATA_ROOT", str(tmp_path))
    reloaded = mlflow.pyfunc.load_model("models:/tiny@candidate", dst_path=str(tmp_path)).predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(reloaded["prob_lesion"], preds["prob_lesion"], rtol=1e-5, atol=1e-6)
    stated = mlflow.pyfunc.load_model("models:/tiny@candidate", dst_path=str(tmp_path)).predict(
        pd.DataFrame({"image": images, "view": "PA"}))  # the signature takes each film's view beside its path
    np.testing.assert_allclose(stated["prob_lesion"], preds["prob_lesion"], rtol=1e-5, atol=1e-6)
    # medtl score with the registered model gives the same probabilities too
    test_manifest = tmp_path / "test_cases.csv"
    pd.DataFrame({"case_id": preds["case_id"], "image": images}).to_csv(test_manifest, index=False)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # medtl score runs in this process: its temp folder
    scored = run_cli("score", "--model", "models:/tiny@candidate", "--manifest", str(test_manifest), "--out",
                     str(tmp_path / "scores.csv"), env={"MLFLOW_TRACKING_URI": mlflow_server}, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert not any(scratch.iterdir())  # the model downloaded from the server is not left behind in the temp folder
    from medtl.archive_output import model_identity

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    identity = model_identity("models:/tiny@candidate", "spark")  # what the Spark and Ray engines stamp on every row
    tags, schema = identity.tags, identity.spark_schema()
    assert tags["model_name"] == "tiny" and tags["model_version"] == "1" and tags["run_id"] == run.info.run_id
    assert schema.startswith("prob_normal double, prob_lesion double, predicted string") and not any(scratch.iterdir())
    merged = preds.merge(pd.read_csv(tmp_path / "scores.csv", dtype={"case_id": str}), on="case_id", suffixes=("", "_scored"))
    np.testing.assert_allclose(merged["prob_lesion_scored"], merged["prob_lesion"], rtol=1e-5, atol=1e-6)
    threshold = run.data.metrics["test_threshold"]
    for col in ("", "_scored"):  # both apply the stored threshold to their own probabilities, the same way
        called = np.where(merged[f"prob_lesion{col}"] >= threshold, "lesion", "normal")
        assert (merged[f"predicted{col}"] == called).all()
    promoted = run_cli("models", "promote", "tiny", "1", "champion", env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias("tiny", "champion").version == "1"


def test_unreachable_tracking_server_fails_fast_before_training(tmp_path):
    m = make_classification_set(tmp_path / "d", n=8, kind="png", size=(16, 16))
    closed = f"http://127.0.0.1:{free_port()}"  # bound and released just now: nothing listens there
    res = run_cli("run", "diagnosis", *overrides(m, tmp_path / "runs", closed), cwd=tmp_path)
    assert res.returncode == 2
    assert closed in res.stderr and "unreachable" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()
    scored = run_cli("score", "--model", "models:/tiny@champion", "--manifest", str(m), "--out", str(tmp_path / "p.csv"),
                     "--no-track", env={"MLFLOW_TRACKING_URI": closed})  # a registered model from a server that is down
    assert scored.returncode == 2 and f"tracking server {closed} is unreachable" in scored.stderr
    assert len(scored.stderr.strip().splitlines()) == 1
    assert "--no-track" not in scored.stderr  # the model itself is on that server: no flag scores without it


def test_a_scoring_whose_tracking_server_is_down_says_it_can_run_untracked(tmp_path):
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16))
    quick = ("tracking.enabled=false", "model.pretrained=none", "transfer.strategy=scratch", "train.epochs=1",
             "evaluate.bootstrap=0", "evaluate.figures=false", "evaluate.gradcam=0", "data.subgroups=[]")
    trained = run_cli("train", *overrides(m, tmp_path / "runs", "x", quick), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    args = ["score", "--model", str(tmp_path / "runs" / "medtl" / "model.pt"), "--manifest", str(m), "--out"]
    res = run_cli(*args, str(tmp_path / "p.csv"), env={"MLFLOW_TRACKING_URI": closed})
    assert res.returncode == 2 and f"tracking server {closed} is unreachable" in res.stderr, res.stderr
    assert res.stderr.strip().endswith("or score without recording the run: --no-track"), res.stderr
    assert run_cli(*args, str(tmp_path / "q.csv"), "--no-track", env={"MLFLOW_TRACKING_URI": closed}).returncode == 0


def test_an_old_mlruns_folder_store_says_what_to_do_before_training(tmp_path, monkeypatch):
    """MLflow 3 refuses new runs in a folder store; medtl said only 'cannot open experiment (MlflowException)'."""
    m = make_classification_set(tmp_path / "d", n=8, kind="png", size=(16, 16))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    res = run_cli("run", "diagnosis", *overrides(m, tmp_path / "runs", "./mlruns"), cwd=tmp_path)
    assert res.returncode == 2 and "sqlite:///mlflow.db" in res.stderr and "mlflow migrate-filestore" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("uri, said", [
    ("http://mlflow:abc", "tracking server http://mlflow:abc: not a server address; give one like http://"),
    ("https://reader:pw@", "not a server address"),
    ("postgresql://reader:pw@db.example.org/mlflow", "the database driver psycopg is not installed; pip install "
                                                    "psycopg[binary], or give the MLflow server's http(s):// address"),
    ("mysql+nosuchdriver://reader:pw@db/mlflow", "not a database URL SQLAlchemy reads (NoSuchModuleError)"),
    ("ftp://reader:pw@files/mlflow", "not a store MLflow takes; give a tracking server (http://host:5000)"),
])
def test_a_store_address_that_cannot_work_is_one_line_with_its_password_masked(uri, said, monkeypatch):
    """A port that is no number, a database without its driver or a scheme MLflow has no store for was an
    unexpected error (http.client's InvalidURL, ModuleNotFoundError, MLflow's UnsupportedModelRegistryStoreURI)."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # not installed, wherever the suite runs
    res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 2 and said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "pw" not in res.stderr


def _grep_tree(root: Path, needle: bytes, skip: Path) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and skip not in path.parents:
            if needle in path.read_bytes():
                hits.append(path)
    return hits


def test_no_patient_tag_reaches_store_artifacts_or_logs(tmp_path):
    data = tmp_path / "data"
    m = make_classification_set(data, n=16, kind="dicom", size=(32, 32))
    pd.read_csv(m).assign(secret_note="PHISENTINEL in a manifest column").to_csv(m, index=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = overrides(m, tmp_path / "runs", store, ["train.epochs=1", "evaluate.bootstrap=10"])
    train = run_cli("run", "diagnosis", *sets, cwd=tmp_path, env={"MEDTL_LOG_LEVEL": "DEBUG"})
    assert train.returncode == 0, train.stderr[-3000:]
    assert load_bundle(next((tmp_path / "runs").glob("*/model.pt"))).spec.data.views == ["PA"]  # the films' own view
    assert "evaluation_test/report.md" in train.stdout  # the run says where its model and report are, and how to score
    assert "score new studies with: medtl score --model models:/tiny@candidate --input DIR" in train.stdout
    score = run_cli("score", "--model", "models:/tiny@candidate", "--input", str(data / "images"),
                    "--out", str(tmp_path / "scores.csv"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
    assert score.returncode == 0, score.stderr[-3000:]
    assert b"PHISENTINEL" in next((data / "images").glob("*.dcm")).read_bytes()  # the sentinel is really there
    for text in (train.stdout, train.stderr, score.stdout, score.stderr):
        assert "PHISENTINEL" not in text
    assert _grep_tree(tmp_path, b"PHISENTINEL", data) == []


def test_promotion_is_gated_on_ci_and_calibration_and_forcing_is_recorded(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from medtl.mlflow_model import register

    monkeypatch.chdir(tmp_path)  # MLflow puts a registered local folder's copy under ./mlruns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    import mlflow

    mlflow.set_tracking_uri(uri)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    version = register(str(model_dir), "gated", "candidate", "card", {"test_auroc_ci_low": "0.65", "test_ece_calibrated": "0.02"},
                       {"min_auroc_ci_low": 0.7, "max_ece": 0.1})
    refused = run_cli("models", "promote", "gated", str(version), "champion", env={"MLFLOW_TRACKING_URI": uri})
    assert refused.returncode == 2 and "AUROC CI lower bound 0.650 is below the gate 0.700" in refused.stderr
    client = MlflowClient(uri)
    assert "champion" not in client.get_registered_model("gated").aliases
    forced = run_cli("models", "promote", "gated", str(version), "champion", "--force", env={"MLFLOW_TRACKING_URI": uri})
    assert forced.returncode == 0 and "forced past" in forced.stdout
    mv = client.get_model_version("gated", str(version))
    assert "AUROC CI lower bound" in mv.tags["forced.champion"]
    assert str(client.get_model_version_by_alias("gated", "champion").version) == str(version)
    for alias in ("latest", "v2", "best model"):  # MLflow's registry would refuse them, as its own exception
        bad = run_cli("models", "promote", "gated", str(version), alias, "--force", env={"MLFLOW_TRACKING_URI": uri})
        assert bad.returncode == 2 and f"alias {alias!r}" in bad.stderr and "unexpected" not in bad.stderr


def test_models_of_several_classes_and_segmentation_models_are_gated_and_listed_on_their_own_figures(tmp_path, monkeypatch):
    """A segmentation model, or one of three classes, was refused promotion for an "AUROC CI lower bound nan": the
    gate read a binary AUROC neither has. A model of several classes is gated and listed on its macro AUROC, and its
    card reports that, accuracy and balanced accuracy; a segmentation model has no AUROC or ECE gate to meet."""
    import mlflow

    from medtl.config import load_config
    from medtl.mlflow_model import model_versions, register
    from medtl.model_card import card_tags, model_card

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    (tmp_path / "m").mkdir()
    gates = {"min_auroc_ci_low": 0.7, "max_ece": 0.1}
    three = {"auroc_macro": 0.9, "auroc_macro_ci_low": 0.8, "auroc_macro_ci_high": 0.95, "accuracy": 0.7,
             "balanced_accuracy": 0.65, "ece": 0.2, "ece_calibrated": 0.05, "temperature": 1.2, "n": 90.0}
    weak = {**three, "auroc_macro_ci_low": 0.6}
    versions = {name: register(str(tmp_path / "m"), name, "candidate", "card", card_tags(m, "0" * 64), gates)
                for name, m in (("three", three), ("weak", weak), ("seg", {"dice_mean": 0.8}))}
    for name, ok in (("three", True), ("seg", True), ("weak", False)):
        res = run_cli("models", "promote", name, str(versions[name]), "champion", env={"MLFLOW_TRACKING_URI": uri})
        assert (res.returncode == 0) == ok, (name, res.stderr)
    assert "AUROC CI lower bound 0.600 is below the gate 0.700" in res.stderr
    listed = model_versions(uri).set_index("model")
    assert listed.loc["three", "test AUROC [95% CI]"] == "0.900 [0.800, 0.950] (macro)"
    card = model_card(load_config(None, []), pd.DataFrame({"split": ["test"], "label": ["a"]}), three, "0" * 64, [])
    assert "| AUROC macro (one-vs-rest) | 0.900 [0.800, 0.950] |" in card and "| balanced accuracy | 0.650 |" in card
    assert "sensitivity" not in card


def test_model_card_and_params_name_the_objective_that_shaped_the_model():
    from medtl.config import load_config
    from medtl.model_card import model_card
    from medtl.run_record import applied_params

    table = pd.DataFrame({"split": ["train", "test"], "label": ["normal", "lesion"]})
    cfg = load_config(None, ["train.loss=focal", "train.focal_gamma=3", "train.class_weights=inverse_frequency",
                             "train.mixup_alpha=0.2", "train.epochs=4"])
    assert "Trained with focal loss (gamma 3), inverse-frequency class weights, mixup (alpha 0.2), up to 4 epochs." \
        in model_card(cfg, table, {}, "0" * 64, [])
    probed = load_config(None, ["transfer.probe_first=true", "train.epochs=3"])
    assert "Trained with the head started from a logistic probe on the frozen features (LP-FT), cross-entropy loss, " \
        "up to 3 epochs." in model_card(probed, table, {}, "0" * 64, [])
    assert applied_params(probed)["transfer.probe_first"] is True
    averaged = load_config(None, ["train.ema_epochs=1", "train.epochs=3"])
    assert "cross-entropy loss, up to 3 epochs, its weights averaged over about 1 epoch of steps (exponential moving " \
        "average)." \
        in model_card(averaged, table, {}, "0" * 64, [])
    assert applied_params(averaged)["train.ema_epochs"] == 1
    frozen = load_config(None, ["transfer.strategy=feature_extraction", "transfer.head=logistic",
                                "train.mixup_alpha=0.2", "transfer.probe_first=true", "train.ema_epochs=1"])
    assert "Trained with a logistic head fitted on the frozen backbone's features." \
        in model_card(frozen, table, {}, "0" * 64, [])
    segmentation = load_config(None, ["data.task=segmentation", "train.loss=dice_ce", "train.class_weights=none"])
    assert "Trained with Dice + cross-entropy loss, up to 10 epochs." in model_card(segmentation, table, {}, "0" * 64, [])
    assert applied_params(cfg)["train.mixup_alpha"] == 0.2 and not {"train.mixup_alpha", "train.ema_epochs"} & set(applied_params(frozen))
    from_manifest = model_card(cfg, table, {}, "0" * 64, [], classes=["normal", "lesion"], views=["AP", "PA"])
    assert "classes: normal, lesion. Trained" in from_manifest  # a config that names no classes used to leave them out
    assert "Takes AP, PA films only (DICOM ViewPosition, or the manifest's view column)" in from_manifest
    line = {"calibration_slope_calibrated": 0.812, "calibration_slope_calibrated_ci_low": 0.7,
            "calibration_slope_calibrated_ci_high": 0.93, "calibration_intercept_calibrated": -0.25}
    assert ("Calibration slope 0.812 [0.700, 0.930] and intercept -0.250 after temperature (1 and 0 are perfect)."
            in model_card(cfg, table, line, "0" * 64, []))
    assert "transfer.probe_first" not in applied_params(frozen)  # the probe is the whole of feature extraction
    assert "train.mixup_alpha" not in applied_params(load_config(None, []))  # not configured: not a param


def test_a_store_password_never_reaches_a_message_a_saved_config_or_the_run_folder(tmp_path, monkeypatch):
    from medtl.config import dump_config, load_config, redact_uri
    from medtl.errors import TrackingError
    from medtl.tracking import _store_of

    secret = "postgresql://u:s3cret@127.0.0.1:1/db"
    assert redact_uri(secret) == "postgresql://***@127.0.0.1:1/db"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db" and redact_uri("http://h:5000") == "http://h:5000"
    cfg = load_config(None, [f"tracking.uri={secret}"])
    assert cfg.tracking.uri == secret  # the run still connects with it
    assert "s3cret" not in dump_config(cfg) and "s3cret" not in str(cfg.to_dict())  # config.yaml, model.pt, the registry
    m = make_classification_set(tmp_path / "d", n=12, kind="png", size=(16, 16), split=True)
    res = run_cli("run", "diagnosis", "--set", f"tracking.uri={secret}", "--set", f"data.manifest={m}", cwd=tmp_path)
    assert res.returncode == 2 and "tracking store postgresql://***@127.0.0.1:1/db" in res.stderr, res.stderr
    assert "s3cret" not in res.stdout + res.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret)
    assert _store_of("postgresql://***@127.0.0.1:1/db") == secret  # sync finds the credentials where the user keeps them
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:s3cret@elsewhere/db")
    with pytest.raises(TrackingError, match=r"tracked at postgresql://\*\*\*@127.0.0.1:1/db; set MLFLOW_TRACKING_URI"):
        _store_of("postgresql://***@127.0.0.1:1/db")


def test_a_value_the_store_refuses_is_left_out_without_sending_the_run_offline(tmp_path, caplog):
    """A refusal (a metric name MLflow rejects) is no outage: queued for `tracking sync` it would fail there
    forever, and going offline left the rest of the run, the model included, unlogged."""
    import mlflow

    from medtl.config import TrackingConfig
    from medtl.tracking import tracked_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="refusals")
    with tracked_run(cfg, "r", checkpoint_dir=tmp_path / "run" / "checkpoints") as tracker:
        tracker.log_metrics({"site (north)": 1.0})
        tracker.log_metrics({"auroc": 0.9})
        assert not tracker.offline
    run = mlflow.MlflowClient(cfg.uri).get_run(tracker.run_id)
    assert run.data.metrics == {"auroc": 0.9} and run.info.status == "FINISHED"
    assert not (tmp_path / "run" / "tracking_offline.jsonl").exists()
    assert any("refused one metrics call (INVALID_PARAMETER_VALUE)" in r.getMessage() for r in caplog.records)


def test_the_model_card_lists_a_segmentation_models_sites_by_dice():
    from medtl.config import load_config
    from medtl.model_card import model_card

    cfg = load_config(None, ["data.task=segmentation", "data.spatial_dims=3", "data.image_size=[32,32,16]",
                             "data.subgroups=[site]"])
    table = pd.DataFrame({"split": ["train", "test"], "site": ["A", "A"]})
    metrics = {"dice_mean": 0.8, "subgroup_site_A_n": 12.0, "subgroup_site_A_dice_mean": 0.81,
               "subgroup_site_A_dice_mean_ci_low": 0.75, "subgroup_site_A_dice_mean_ci_high": 0.86}
    card = model_card(cfg, table, metrics, "0" * 64, [])
    assert "- site_A: n 12, Dice 0.810 [0.750, 0.860]" in card and "| Dice core |" not in card
    several = {**metrics, "dice_core_mean": 0.7, "dice_core_mean_ci_low": 0.6, "dice_core_mean_ci_high": 0.78,
               "dice_oedema_mean": 0.9, "subgroup_site_A_dice_core_mean": 0.5}
    card = model_card(cfg, table, several, "0" * 64, [], classes=["background", "core", "oedema"])
    assert "| Dice core | 0.700 [0.600, 0.780] |" in card and "| Dice oedema | 0.900 |" in card


def test_models_list_shows_each_version_with_its_aliases_and_test_figures(tmp_path, monkeypatch):
    import mlflow

    from medtl.mlflow_model import register

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    (tmp_path / "m").mkdir()
    tags = {"test_auroc": "0.9512", "test_auroc_ci_low": "0.9301", "test_auroc_ci_high": "0.9688",
            "test_ece_calibrated": "0.0412", "dataset_sha256": "abcdef0123456789"}
    register(str(tmp_path / "m"), "cxr", "candidate", "card", tags)
    register(str(tmp_path / "m"), "cxr", "candidate", "card", {**tags, "test_auroc": "0.9600"})
    res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if "cxr" in line]
    assert "│ 2 " in lines[0] and "candidate" in lines[0] and "0.960 [0.930, 0.969]" in lines[0]
    assert "│ 1 " in lines[1] and "candidate" not in lines[1] and "0.951 [0.930, 0.969]" in lines[1] and "0.041" in lines[1]
    missing = run_cli("models", "list", "nope", env={"MLFLOW_TRACKING_URI": uri})
    assert missing.returncode == 2 and "no registered model 'nope'" in missing.stderr


def test_commands_that_read_the_store_never_create_one(tmp_path):
    """`models list`, `models promote` and scoring a models:/ URI from a folder with no store say so, and leave no
    empty mlflow.db behind (MLflow would create one, and then report the model as not registered)."""
    elsewhere = tmp_path / "elsewhere"  # this module's tests get a store in tmp_path itself
    elsewhere.mkdir()
    (elsewhere / "new.png").write_bytes(b"")
    for args in (("models", "list"), ("models", "promote", "cxr", "1", "champion"),
                 ("score", "--model", "models:/cxr@champion", "--input", str(elsewhere), "--out", str(elsewhere / "p.csv"))):
        res = run_cli(*args, cwd=elsewhere)
        assert res.returncode == 2 and "no MLflow store at" in res.stderr and "MLFLOW_TRACKING_URI" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not (elsewhere / "mlflow.db").exists()


def test_models_list_never_prints_a_store_password(monkeypatch):
    from medtl.errors import TrackingError
    from medtl.mlflow_model import model_versions

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError) as info:
        model_versions(f"http://u:s3cret@127.0.0.1:{free_port()}", "cxr")
    assert "s3cret" not in str(info.value) and "http://***@127.0.0.1" in str(info.value)


def test_an_https_server_signed_by_a_hospital_ca_is_used_as_mlflow_is_told_to_trust_it(tmp_path):
    """medtl's check of the server went through urllib, which knows neither MLflow's certificate setting nor
    REQUESTS_CA_BUNDLE: it refused a server MLflow would use, and called it unreachable ("start it")."""
    import os
    import ssl
    import subprocess
    import time
    import urllib.request

    from tests.conftest import seed_mlflow_store, self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    (tmp_path / "server").mkdir()
    seed_mlflow_store(tmp_path / "server" / "mlflow.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", "--workers", "1", "--uvicorn-opts",
         f"--ssl-keyfile {key} --ssl-certfile {cert}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"https://127.0.0.1:{port}"
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=1, context=trusting)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri})
        assert res.returncode == 2 and res.stderr.strip() == (
            f"error: tracking server {uri}: its TLS certificate is not trusted here (self-signed certificate); give the "
            "certificate of the CA that signed it in MLFLOW_TRACKING_SERVER_CERT_PATH (a .pem file), then rerun")
        for trust in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "REQUESTS_CA_BUNDLE"):
            res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri, trust: str(cert)})
            assert res.returncode == 0 and res.stdout.startswith(f"no registered model in {uri}"), (trust, res.stderr)
    finally:
        os.killpg(proc.pid, 9)  # not a graceful stop: uvicorn would wait on the client's kept-alive connection
        proc.wait(timeout=30)


def test_a_server_behind_a_login_says_which_variables_give_the_account(tmp_path, monkeypatch):
    """A proxy in front of MLflow, or MLflow's auth app, answers 401: medtl called the server unreachable ("start
    it"), or printed MLflow's error with the proxy's HTML page as an unexpected error."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from medtl.tracking_store import check_store

    account = "Basic " + base64.b64encode(b"reader:s3cret").decode()
    health_open = []

    class Login(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") == account or (self.path == "/health" and health_open):
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
                return
            page = b"<html><body><h1>401 Authorization Required</h1></body></html>"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    said = (f"error: tracking server {uri} refused access (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account it accepts")
    try:
        res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri})  # the login guards every path
        assert res.returncode == 2 and res.stderr.strip() == said, res.stderr
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        check_store(uri)  # the account is sent, as MLflow sends it
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        health_open.append(True)  # its health check open, its API not
        res = run_cli("models", "list", env={"MLFLOW_TRACKING_URI": uri})
        assert res.returncode == 1 and res.stderr.strip() == said, res.stderr
        m = make_classification_set(tmp_path / "d", n=8, kind="png", size=(16, 16))
        res = run_cli("run", "diagnosis", *overrides(m, tmp_path / "runs", uri), cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.strip() == said, res.stderr
        assert not (tmp_path / "runs").exists()  # refused before any training
    finally:
        httpd.shutdown()
        httpd.server_close()
