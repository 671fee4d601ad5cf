"""Batch scoring: mixed good and bad inputs, resume after SIGKILL, agreement with pyfunc and evaluation."""

import os
import signal
import subprocess

import numpy as np
import pandas as pd
import pydicom
import pytest

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set, synthetic_volume, write_ct_series, write_nifti
from medtl.errors import MedtlError
from medtl.steps import fit_model
from tests.conftest import medtl_exe, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m3d")
    m = make_classification_set(tmp / "d", n=16, kind="nifti", size=(16, 16, 8))
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.spatial_dims=3",
                             "data.image_size=[16,16,8]", "data.modality=ct", "model.backbone=resnet10",
                             "model.pretrained=none", "transfer.strategy=scratch", "train.epochs=1",
                             "train.batch_size=4", f"train.out_dir={tmp / 'runs'}", "tracking.enabled=false"])
    return fit_model(cfg).model_path


def test_mixed_directory_scores_good_cases_and_reports_each_bad_one(tmp_path, model_3d):
    rng = np.random.default_rng(0)
    vol, _ = synthetic_volume(rng, (16, 16, 8), True)
    d = tmp_path / "in"
    write_ct_series(d / "good_series", vol, seed=1)
    write_nifti(d / "good_nifti.nii.gz", vol)
    nan = vol.copy()
    nan[1, 1, 1] = np.nan
    write_nifti(d / "nan_vol.nii.gz", nan)
    write_nifti(d / "flat.nii.gz", vol[:, :, 0])
    write_ct_series(d / "blank_series", np.full_like(vol, -1000.0), seed=4)  # an export that lost its image
    write_nifti(d / "phase.nii.gz", vol.astype(np.complex64))  # scored as its real part, and an uncaught warning
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(vol.shape)
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # was "RuntimeError: applying transform <...Orientationd>"
    nib.Nifti1Image(vol, None, header).to_filename(d / "flat_affine.nii.gz")
    write_ct_series(d / "gap_series", vol, seed=2, skip_slices=[3])
    (d / "broken").mkdir()
    (d / "broken" / "junk.dcm").write_bytes(b"GIF89a, not a DICOM file" * 20)
    write_ct_series(d / "tilted", vol, seed=3)
    import pydicom

    f = sorted((d / "tilted").iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(f)
    f2 = sorted((d / "good_series").iterdir())[0]
    nopix = pydicom.dcmread(f2)
    del nopix.PixelData
    (d / "nopixels").mkdir()
    nopix.SeriesInstanceUID = "1.2.3.4.5"
    nopix.save_as(d / "nopixels" / "x.dcm")
    res = run_cli("score", "--model", str(model_3d), "--input", str(d), "--out", str(tmp_path / "p.csv"), "--no-track")
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    out = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("case_id")
    assert out.loc["good_series", "status"] == "ok" and out.loc["good_nifti", "status"] == "ok"
    reasons = {"nan_vol": "NaN", "flat": "model expects 3-D", "gap_series": "missing slice", "tilted": "ImageOrientationPatient",
               "nopixels": "pixel data", "junk": "not a readable DICOM", "blank_series": "blank: every voxel is",
               "phase": "complex-valued voxels", "flat_affine": "voxel size of 0"}
    for case, reason in reasons.items():
        assert out.loc[case, "status"] == "error" and reason in out.loc[case, "error"], (case, out.loc[case, "error"])
    missing = tmp_path / "m.csv"
    pd.DataFrame({"case_id": ["gone", "ok"], "image": ["nope.nii.gz", "in/good_nifti.nii.gz"]}).to_csv(missing, index=False)
    res = run_cli("score", "--model", str(model_3d), "--manifest", str(missing), "--out", str(tmp_path / "q.csv"), "--no-track")
    q = pd.read_csv(tmp_path / "q.csv", keep_default_na=False).set_index("case_id")
    assert res.returncode == 1 and q.loc["gone", "status"] == "error" and "not found" in q.loc["gone", "error"]
    assert float(q.loc["ok", "prob_lesion"]) == pytest.approx(float(out.loc["good_nifti", "prob_lesion"]))
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "empty" / "notes" / "readme.txt").write_text("no scan here")
    res = run_cli("score", "--model", str(model_3d), "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "e.csv"), "--no-track")
    assert res.returncode != 0 and "no DICOM, NIfTI, MetaImage, NRRD or image file found" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "e.csv").exists()  # a wrong folder is not an empty, successful scoring
    res = run_cli("score", "--model", str(model_3d), "--input", str(d), "--out", str(tmp_path / "p.txt"), "--no-track")
    assert res.returncode != 0 and "--out" in res.stderr and "give a .csv or .parquet file" in res.stderr
    assert not list(tmp_path.glob("p.txt*"))  # nothing scored into a file of a kind nobody asked for
    res = run_cli("score", "--model", str(model_3d), "--input", str(d / "good_nifti.nii.gz"), "--out", str(tmp_path / "one.csv"),
                  "--no-track")  # one scan by itself: the same row as in its folder (was "not a folder")
    one = pd.read_csv(tmp_path / "one.csv", keep_default_na=False).set_index("case_id")
    assert res.returncode == 0 and list(one.index) == ["good_nifti"], res.stderr
    assert float(one.loc["good_nifti", "prob_lesion"]) == pytest.approx(float(out.loc["good_nifti", "prob_lesion"]))
    for args, said in ((["--device", "tpu"], "'tpu': use auto, cpu or cuda"), (["--batch-size", "0"], "--batch-size"),
                       (["--engine", "spark", "--spark-chunk", "0"], "--spark-chunk")):
        res = run_cli("score", "--model", str(model_3d), "--manifest", str(missing), "--out", str(tmp_path / "r.csv"), "--no-track", *args)
        assert res.returncode == 2 and said in res.stderr and "unexpected" not in res.stderr, res.stderr
    res = run_cli("score", "--model", str(model_3d), "--manifest", str(missing), "--out", str(tmp_path / "pq"), "--no-track",
                  "--engine", "spark")  # a model.pt is not an MLflow model: said before Spark starts
    assert res.returncode == 2 and "no MLflow model there" in res.stderr and "models:/NAME@ALIAS" in res.stderr, res.stderr


def test_cuda_asked_for_where_there_is_none_is_one_line(monkeypatch):
    import torch

    from medtl.errors import ConfigError
    from medtl.models.predictor import device_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no GPU is visible here; use auto or cpu"):
        device_for("cuda")  # was torch's "Torch not compiled with CUDA enabled" from deep in evaluate


def test_sigkill_then_rerun_scores_each_case_once_with_same_probabilities(tmp_path):
    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32))
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                             "train.epochs=1", "train.max_steps_per_epoch=2", f"train.out_dir={tmp_path / 'runs'}",
                             "tracking.enabled=false", "evaluate.figures=false", "evaluate.bootstrap=20"])
    model = str(fit_model(cfg).model_path)
    whole = tmp_path / "whole.csv"
    assert run_cli("score", "--model", model, "--manifest", str(m), "--out", str(whole), "--no-track").returncode == 0
    out = tmp_path / "killed.csv"
    killed = subprocess.run([medtl_exe(), "score", "--model", model, "--manifest", str(m), "--out", str(out),
                             "--batch-size", "1", "--no-track"], capture_output=True, timeout=600,
                            env={**os.environ, "MEDTL_PROGRESS": "0", "MEDTL_FAULT": "after_rows:20"})
    assert killed.returncode == -signal.SIGKILL
    assert len(pd.read_csv(out)) == 20
    with open(out, "a") as fh:  # a crash in the middle of a write leaves half a row
        fh.write("case999,0.1")
    res = run_cli("score", "--model", model, "--manifest", str(m), "--out", str(out), "--no-track")
    assert res.returncode == 0, res.stderr
    got, want = pd.read_csv(out), pd.read_csv(whole)
    assert sorted(got["case_id"]) == sorted(want["case_id"]) and not got["case_id"].duplicated().any()
    merged = got.merge(want, on="case_id", suffixes=("", "_w"))
    # the first 20 were scored one at a time: float32 convolutions round differently by batch size (~1e-7
    # on logits), which the fitted temperature scales; a duplicated or misattributed row would be off by far more
    np.testing.assert_allclose(merged["prob_lesion"], merged["prob_lesion_w"], rtol=2e-5)
    parquet = tmp_path / "p.parquet"
    assert run_cli("score", "--model", model, "--manifest", str(m), "--out", str(parquet), "--no-track").returncode == 0
    assert len(pd.read_parquet(parquet)) == 48


@pytest.mark.parametrize("engine", ["spark", "ray"])
def test_batch_score_pipeline_hands_the_archive_engine_its_settings(tmp_path, monkeypatch, engine):
    """`score.engine: spark` (or ray) in a config runs the same path as `medtl score --engine spark` (or ray)."""
    import medtl.ray_scoring as ray_scoring
    import medtl.spark_scoring as spark_scoring
    from medtl.archive_output import ArchiveSummary

    seen = {}

    def fake_spark(model_uri, manifest, out, master, data_root, chunk):
        seen.update(engine="spark", model=model_uri, out=out, where=master, chunk=chunk)
        return ArchiveSummary(out, 3, 1, 0, 1.0)

    def fake_ray(model_uri, manifest, out, address, data_root, chunk, batch_size, workers, gpus):
        seen.update(engine="ray", model=model_uri, out=out, where=address, chunk=chunk, workers=workers, gpus=gpus)
        return ArchiveSummary(out, 3, 1, 0, 1.0)

    monkeypatch.setattr(spark_scoring, "score_spark", fake_spark)
    monkeypatch.setattr(ray_scoring, "score_ray", fake_ray)
    m = make_classification_set(tmp_path / "d", n=4, kind="png", size=(16, 16))
    where = {"spark": "score.spark_master=spark://head:7077", "ray": "score.ray_address=head:6379"}[engine]
    chunk = {"spark": "score.spark_chunk=50", "ray": "score.chunk=50"}[engine]  # the earlier key is still read
    res = run_cli("run", "batch_score", "--set", f"data.manifest={m}", "--set", f"score.engine={engine}", "--set", where,
                  "--set", chunk, "--set", "score.ray_workers=3", "--set", "tracking.registered_model=x",
                  "--set", f"train.out_dir={tmp_path / 'runs'}")
    assert res.returncode == 0, res.stderr
    assert seen["engine"] == engine and seen["model"] == "models:/x@candidate" and seen["chunk"] == 50
    assert seen["where"] == where.split("=", 1)[1] and seen.get("workers", 3) == 3 and seen.get("gpus") is None
    assert seen["out"] == tmp_path / "runs" / "medtl" / "predictions.parquet" and "3 scored now, 1 already there" in res.stdout


def test_a_film_of_a_view_the_model_never_saw_is_that_cases_error(tmp_path):
    """A model of frontal films (the views its manifest's films state) refuses a lateral film, in check and in
    scoring, where it used to answer for it; a film that states no view is not judged."""
    import torch

    from medtl.config import Config
    from medtl.data.check import check_manifest
    from medtl.data.manifest import read_manifest
    from medtl.data.synthetic import write_xray_dicom
    from medtl.models.checkpoint import ModelBundle
    from medtl.scoring import read_predictions, score
    from medtl.train.data import film_views

    film = np.arange(256.0).reshape(16, 16) * 10
    for case, view in (("pa", "PA"), ("ap", "AP"), ("lateral", "LL"), ("unstated", "")):
        write_xray_dicom(tmp_path / f"{case}.dcm", film, view=view)
    pd.DataFrame({"case_id": ["pa", "ap", "lateral", "unstated"], "image": ["pa.dcm", "ap.dcm", "lateral.dcm", "unstated.dcm"],
                  "label": "normal"}).to_csv(tmp_path / "m.csv", index=False)
    m = read_manifest(tmp_path / "m.csv")
    assert film_views(m.table) == ["AP", "LL", "PA"]
    frontal = Config.model_validate({"data": {"image_size": [16, 16], "views": ["pa", "AP"]}, "tracking": {"enabled": False}})
    assert frontal.data.views == ["AP", "PA"]
    for deep in (False, True):  # reading every voxel used to drop the view the header states
        problems = check_manifest(m, spatial_dims=2, views=frontal.data.views, deep=deep)
        assert [(p.case_id, p.kind) for p in problems if p.kind != "duplicate image"] == [("lateral", "other view")]
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    cases = [{"case_id": c, "image": str(p)} for c, p in zip(m.table["case_id"], m.table["image_path"])]
    score(ModelBundle(net, frontal, ["normal", "lesion"]), cases, tmp_path / "p.csv", device="cpu")
    scored = read_predictions(tmp_path / "p.csv").set_index("case_id")
    assert scored["status"].to_dict() == {"pa": "ok", "ap": "ok", "lateral": "error", "unstated": "ok"}
    assert "a LL film (DICOM ViewPosition), and the model takes AP, PA films only" in scored.loc["lateral", "error"]


class _Recorder:
    """The tracker calls scoring makes, kept."""

    def __init__(self):
        self.metrics, self.artifacts = {}, []

    def log_metrics(self, metrics, step=None, dataset=None):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        pass

    def log_artifact(self, path, folder=None):
        self.artifacts.append(path)


def _em_by_hand(p: np.ndarray, prior: float, steps: int = 5000) -> float:
    """Saerens et al. (2002), as the paper writes it: reweight the posteriors by the prior ratio, average."""
    q = prior
    for _ in range(steps):
        w1, w0 = p * q / prior, (1 - p) * (1 - q) / (1 - prior)
        q = float(np.mean(w1 / (w1 + w0)))
    return q


def _dark_site(tmp_path, n=60):
    """A model calibrated where 70 % had the finding (brighter films score higher), and ``n`` mostly dark films."""
    import torch
    from PIL import Image

    from medtl.config import Config
    from medtl.models.checkpoint import ModelBundle

    rng = np.random.default_rng(0)
    cases = []
    for i, level in enumerate(rng.beta(2, 5, n) * 255):  # mostly dark films: a site with few findings
        film = np.clip(np.full((8, 8), level) + np.indices((8, 8)).sum(0) % 2, 0, 255)  # a blank film is refused
        Image.fromarray(film.astype(np.uint8)).save(tmp_path / f"c{i}.png")
        cases.append({"case_id": f"c{i}", "image": str(tmp_path / f"c{i}.png")})
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[0.0], [0.03]]))
        net[2].bias.copy_(torch.tensor([0.0, -1.5]))
    cfg = Config.model_validate({"data": {"image_size": [8, 8], "modality": "none"}, "tracking": {"enabled": False}})
    return ModelBundle(net, cfg, ["normal", "lesion"], extra={"source_prior": [0.3, 0.7]}), cases


@pytest.mark.parametrize("given", [None, 0.2])
def test_a_scored_batch_reports_how_often_the_finding_is_called_and_the_prevalence_its_scores_imply(tmp_path, given):
    """A batch whose scores imply a prevalence far from the one the probabilities assume (0.7 here, or the
    --prevalence given) says so, with the figure of its scores; figures match a hand count and a hand EM."""

    from medtl.scoring import read_predictions, score, set_prevalence

    bundle, cases = _dark_site(tmp_path)
    if given is not None:
        set_prevalence(bundle, given)
    tracker = _Recorder()
    summary = score(bundle, cases, tmp_path / "p.csv", device="cpu", tracker=tracker)
    scored = read_predictions(tmp_path / "p.csv")
    p = scored["prob_lesion"].to_numpy()
    assumed = 0.7 if given is None else given
    batch = summary.batch
    assert batch.cases == 60 and batch.assumed == assumed
    assert batch.called == pytest.approx(np.mean(p >= 0.5))
    assert batch.implied == pytest.approx(_em_by_hand(p, assumed), abs=1e-4)
    assert tracker.metrics["batch_prevalence_implied"] == batch.implied
    assert tracker.artifacts == [tmp_path / "p.scores.png"] and (tmp_path / "p.scores.png").is_file()
    assert batch.far == (abs(batch.implied - assumed) > 0.1) and ("--prevalence" in batch.message()) == batch.far
    assert given is not None or batch.far  # the dark site is far from the 0.7 the model was calibrated at


def test_prevalence_em_writes_what_the_prevalence_the_batch_implies_would_and_keeps_the_scores_it_came_from(tmp_path):
    """``score --prevalence em``: the file holds the rows ``--prevalence P`` writes, P the EM estimate from the batch's
    own scores (checked by hand); the journal beside it holds the rows at the model's own prevalence, so a rerun
    resumes; a plain rerun cannot append to it, and too few cases leave the probabilities as they were, said."""
    import copy

    from medtl.scoring import read_predictions, score, set_prevalence

    bundle, cases = _dark_site(tmp_path)
    tracker = _Recorder()
    em = score(copy.deepcopy(bundle), cases, tmp_path / "em.csv", device="cpu", tracker=tracker, estimate_prevalence=True)
    plain = score(copy.deepcopy(bundle), cases, tmp_path / "plain.csv", device="cpu")
    journal, written = read_predictions(tmp_path / "em.csv.partial.csv"), read_predictions(tmp_path / "em.csv")
    p = read_predictions(tmp_path / "plain.csv")["prob_lesion"].to_numpy()
    np.testing.assert_array_equal(journal["prob_lesion"].to_numpy(), p)
    assert em.prevalence_applied == pytest.approx(_em_by_hand(p, 0.7), abs=1e-4) == plain.batch.implied
    assert tracker.metrics["batch_prevalence_applied"] == em.prevalence_applied and "0.7" not in em.prevalence_note
    known = copy.deepcopy(bundle)
    set_prevalence(known, em.prevalence_applied)
    score(known, cases, tmp_path / "known.csv", device="cpu")
    want = read_predictions(tmp_path / "known.csv")
    np.testing.assert_allclose(written["prob_lesion"], want["prob_lesion"], rtol=1e-9)
    assert list(written["predicted"]) == list(want["predicted"]) and set(written["model_id"]) == set(want["model_id"])
    assert (written["predicted"] == "lesion").mean() < (journal["predicted"] == "lesion").mean()
    again = score(copy.deepcopy(bundle), cases, tmp_path / "em.csv", device="cpu", estimate_prevalence=True)
    assert again.scored == 0 and again.skipped_existing == 60
    pd.testing.assert_frame_equal(read_predictions(tmp_path / "em.csv"), written)
    with pytest.raises(MedtlError, match="holds predictions of another model"):
        score(copy.deepcopy(bundle), cases, tmp_path / "em.csv", device="cpu")
    with pytest.raises(MedtlError, match="this file exists, and --prevalence em"):
        score(copy.deepcopy(bundle), cases, tmp_path / "plain.csv", device="cpu", estimate_prevalence=True)
    few = score(copy.deepcopy(bundle), cases[:10], tmp_path / "few.csv", device="cpu", estimate_prevalence=True)
    assert few.prevalence_applied is None and "prevalence not estimated: fewer than 20 cases" in few.prevalence_note
    np.testing.assert_array_equal(read_predictions(tmp_path / "few.csv")["prob_lesion"], p[:10])
    res = run_cli("score", "--model", "x.pt", "--input", str(tmp_path), "--out", str(tmp_path / "y.csv"), "--prevalence", "half")
    assert res.returncode == 2 and "'half': give the positive-class fraction" in res.stderr, res.stderr


def test_batch_score_pipeline_takes_a_prevalence_or_em_as_score_does(tmp_path, monkeypatch):
    """``score.prevalence`` in a batch_score config: a known value as ``--prevalence P``, ``em`` as ``--prevalence
    em``; with the spark engine, which scores the model as registered, it is refused."""
    import copy

    import medtl.pipelines.batch_score as batch_score
    from medtl.config import load_config
    from medtl.errors import ConfigError
    from medtl.scoring import read_predictions, score, set_prevalence

    bundle, cases = _dark_site(tmp_path)
    pd.DataFrame({"case_id": [c["case_id"] for c in cases], "image": [c["image"] for c in cases]}).to_csv(
        tmp_path / "m.csv", index=False)
    monkeypatch.setattr(batch_score, "load_any_model", lambda uri: copy.deepcopy(bundle))
    for prevalence in ("0.2", "em"):
        cfg = load_config(None, [f"data.manifest={tmp_path / 'm.csv'}", f"score.prevalence={prevalence}",
                                 "tracking.enabled=false", f"train.out_dir={tmp_path / prevalence}"])
        result = batch_score.run(cfg, model="m.pt")
        known = copy.deepcopy(bundle)
        set_prevalence(known, 0.2 if prevalence == "0.2" else result["score"].prevalence_applied)
        score(known, cases, tmp_path / f"want_{prevalence}.csv", device="cpu")
        got = read_predictions(tmp_path / prevalence / "medtl" / "predictions.csv")
        np.testing.assert_allclose(got["prob_lesion"], read_predictions(tmp_path / f"want_{prevalence}.csv")["prob_lesion"],
                                   rtol=1e-9)
    assert "probabilities and calls at prevalence" in result["summary"]
    cfg = load_config(None, [f"data.manifest={tmp_path / 'm.csv'}", "score.prevalence=em", "score.engine=spark",
                             "tracking.registered_model=x", "tracking.enabled=false"])
    with pytest.raises(ConfigError, match="score.prevalence: the spark engine"):
        batch_score.run(cfg)


def test_heatmaps_are_drawn_for_each_case_scored_and_a_rerun_draws_only_the_missing(tmp_path):
    """``score --heatmaps``: one Grad-CAM figure per case scored without error, named by case; a case that failed
    gets none, a rerun draws only what is missing, and a model without heat maps says so before scoring."""
    from PIL import Image

    from medtl.config import Config
    from medtl.errors import MedtlError
    from medtl.models.checkpoint import ModelBundle
    from medtl.models.registry import build_model
    from medtl.scoring import score

    cfg = Config.model_validate({"data": {"image_size": [32, 32]}, "model": {"pretrained": "none"},
                                 "tracking": {"enabled": False}})
    bundle = ModelBundle(build_model(cfg.model, "classification", 2, 2, [32, 32]).model.eval(), cfg, ["normal", "lesion"])
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
        cases.append({"case_id": f"c{i}", "image": str(tmp_path / f"c{i}.png")})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases.append({"case_id": "broken", "image": str(tmp_path / "broken.png")})
    maps = tmp_path / "maps"
    score(bundle, cases, tmp_path / "p.csv", device="cpu", heatmaps=maps)
    assert sorted(p.name for p in maps.glob("*.png")) == ["c0.png", "c1.png", "c2.png"]
    (maps / "c1.png").unlink()
    before = (maps / "c0.png").stat().st_mtime_ns
    score(bundle, cases, tmp_path / "p.csv", device="cpu", heatmaps=maps)
    assert (maps / "c1.png").is_file() and (maps / "c0.png").stat().st_mtime_ns == before
    seg = ModelBundle(bundle.model, cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": "segmentation"})}),
                      ["background", "lesion"])
    with pytest.raises(MedtlError, match="--heatmaps: heat maps are drawn for 2-D binary classifiers"):
        score(seg, cases, tmp_path / "seg.csv", device="cpu", heatmaps=tmp_path / "seg_maps")
    assert not (tmp_path / "seg.csv").exists()


def test_each_scored_dicom_film_gets_a_dicom_sr_that_files_with_its_study(tmp_path, caplog):
    """``score --reports-out``: a TID 1500 report per DICOM case scored, holding the probabilities and the call of
    its row and referencing the film it was made from, with the patient module it needs to file beside it (and that
    module nowhere else); a PNG case gets none, a rerun writes only what is missing, and a segmentation model is sent
    to --masks-out."""
    import highdicom as hd
    from PIL import Image

    from medtl.config import Config
    from medtl.models.checkpoint import ModelBundle
    from medtl.models.registry import build_model
    from medtl.scoring import score

    m = make_classification_set(tmp_path / "d", n=3, kind="dicom", size=(32, 32))
    films = pd.read_csv(m, dtype=str)
    cases = [{"case_id": r.case_id, "image": str(m.parent / r.image)} for r in films.itertuples()]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "film.png")
    cases.append({"case_id": "png", "image": str(tmp_path / "film.png")})
    cfg = Config.model_validate({"data": {"image_size": [32, 32]}, "model": {"pretrained": "none"},
                                 "tracking": {"enabled": False}})
    bundle = ModelBundle(build_model(cfg.model, "classification", 2, 2, [32, 32]).model.eval(), cfg, ["normal", "lesion"])
    from medtl.log import logger

    reports = tmp_path / "reports"
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger=logger.name):
            score(bundle, cases, tmp_path / "p.csv", device="cpu", reports=reports)
    finally:
        logger.removeHandler(caplog.handler)
    rows = pd.read_csv(tmp_path / "p.csv", dtype={"case_id": str}).set_index("case_id")
    assert sorted(p.name for p in reports.glob("*.dcm")) == [f"{c}.sr.dcm" for c in sorted(films["case_id"])]
    assert "1 of the 4 cases scored are not DICOM: no DICOM SR for them" in caplog.text
    assert "3 DICOM SR written now, 0 already there" in caplog.text
    for case in films.itertuples():
        sr = hd.sr.srread(str(reports / f"{case.case_id}.sr.dcm"))
        film = pydicom.dcmread(m.parent / case.image)
        assert sr.PatientID == film.PatientID and sr.StudyInstanceUID == film.StudyInstanceUID
        group = sr.content.get_image_measurement_groups()[0]
        got = {mm.name.meaning: mm.value for mm in group.get_measurements()}
        assert got == pytest.approx({"Probability of normal": rows.loc[case.case_id, "prob_normal"],
                                     "Probability of lesion": rows.loc[case.case_id, "prob_lesion"]})
        assert [q.value.meaning for q in group.get_qualitative_evaluations()] == [rows.loc[case.case_id, "predicted"]]
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [film.SOPInstanceUID]
        assert film.PatientID not in caplog.text and film.PatientID not in (tmp_path / "p.csv").read_text()
    (reports / f"{films['case_id'][0]}.sr.dcm").unlink()
    kept = (reports / f"{films['case_id'][1]}.sr.dcm").stat().st_mtime_ns
    score(bundle, cases, tmp_path / "p.csv", device="cpu", reports=reports)
    assert (reports / f"{films['case_id'][0]}.sr.dcm").is_file()
    assert (reports / f"{films['case_id'][1]}.sr.dcm").stat().st_mtime_ns == kept
    odd = ModelBundle(bundle.model, cfg, ["normal", "a\\b"])  # a backslash is DICOM's separator of values
    score(odd, cases[:1], tmp_path / "odd.csv", device="cpu", reports=tmp_path / "odd")
    group = hd.sr.srread(str(tmp_path / "odd" / f"{cases[0]['case_id']}.sr.dcm")).content.get_image_measurement_groups()[0]
    assert [mm.name.meaning for mm in group.get_measurements()] == ["Probability of normal", "Probability of a/b"]
    seg = ModelBundle(bundle.model, cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": "segmentation"})}),
                      ["background", "lesion"])
    with pytest.raises(MedtlError, match="--reports-out: a segmentation's report references its DICOM-SEG; give --masks-out"):
        score(seg, cases, tmp_path / "seg.csv", device="cpu", reports=tmp_path / "r2")
