"""``medtl recalibrate``: a new site's calibration slope, intercept and threshold chosen on its labelled cases,
checked against scikit-learn; the weights untouched; scoring applies the new calibration; bad samples refused."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from medtl.config import load_config
from medtl.data.manifest import read_manifest
from medtl.data.synthetic import make_classification_set
from medtl.evaluate.run import predict_logits
from medtl.models.loader import load_any_model
from medtl.models.checkpoint import save_model, unwrap
from medtl.steps import fit_model
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model whose scores separate the classes by construction, not by what one epoch happened to learn: its
    head projects the features on a blend of the class-mean difference and a fixed random direction, chosen so
    the classes overlap (AUROC 0.75-0.92) and slope and intercept have a finite fit (binary films, 32 px)."""
    tmp = tmp_path_factory.mktemp("recal")
    m = make_classification_set(tmp / "d", n=48, kind="png", size=(32, 32), split=True)
    cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                             "transfer.strategy=fine_tune", "train.epochs=1", "train.batch_size=8", "evaluate.prevalence=0.3",
                             f"train.out_dir={tmp / 'runs'}", "tracking.enabled=false"])
    result = fit_model(cfg)
    head = unwrap(result.bundle.model).head[1]
    seen = []
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    table = read_manifest(m).table
    predict_logits(result.bundle, table, torch.device("cpu"))
    hook.remove()
    features, y = torch.cat(seen).double(), torch.as_tensor((table["label"] == "lesion").to_numpy(copy=True))
    diff = features[y].mean(0) - features[~y].mean(0)
    noise = torch.randn(features.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diff, noise = diff / (features @ diff).std(), noise / (features @ noise).std()  # each scores with SD 1
    for alpha in np.linspace(0.0, 1.0, 201):  # the class-mean direction blended in until the classes overlap, not split
        v = alpha * diff + (1 - alpha) * noise
        if 0.75 <= roc_auc_score(y.numpy(), (features @ v).numpy()) <= 0.92:
            break
    else:
        pytest.fail("no blend of the class-mean direction gives overlapping scores")
    v = v / (features @ v).std()  # score differences of a few units, like a trained model's
    with torch.no_grad():
        head.weight.copy_(torch.stack([-v, v]).float())
        head.bias.copy_(torch.tensor([0.0, -float((features @ v).mean()) * 2]))
    result.bundle.extra["target_prior"] = [0.7, 0.3]  # a deployment prevalence chosen for another site
    save_model(result.bundle, result.model_path)
    return result.model_path, m


def test_recalibration_matches_a_hand_fit_and_scoring_applies_it(trained, tmp_path):
    model, manifest = trained
    res = run_cli("recalibrate", "--model", str(model), "--manifest", str(manifest), "--out", str(tmp_path / "site.pt"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "site model:" in res.stdout and "temperature" in res.stdout
    before, site = load_any_model(str(model)), load_any_model(str(tmp_path / "site.pt"))
    for (k, a), b in zip(before.model.state_dict().items(), site.model.state_dict().values()):
        if k != "head.1.bias":
            assert torch.equal(a, b), k  # the weights are the model's as trained; only the output bias moves
    table = read_manifest(manifest).table
    logits, _ = predict_logits(before, table, torch.device("cpu"))
    y = (table["label"] == "lesion").to_numpy().astype(int)
    d = (logits[:, 1] - logits[:, 0]).astype(float)[:, None]
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(d, y)  # slope and intercept, by scikit-learn
    assert site.temperature == pytest.approx(1 / lr.coef_[0, 0], rel=1e-3)
    p = expit(lr.coef_[0, 0] * d[:, 0] + lr.intercept_[0])
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))  # Youden's J on the site's cases, in the middle of its gap (logit space)
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    assert site.threshold == pytest.approx(expit((logit(thr[best]) + logit(thr[best + 1])) / 2), abs=1e-4)
    assert site.extra["source_prior"][1] == pytest.approx((y.sum() + 0.5) / (len(y) + 1))  # the sample's mix
    assert "target_prior" not in site.extra  # the other site's prevalence is gone
    assert site.extra["recalibrated_on"]["per_class"] == [len(y) - y.sum(), y.sum()]
    scored = run_cli("score", "--model", str(tmp_path / "site.pt"), "--manifest", str(manifest), "--out",
                     str(tmp_path / "scores.csv"), "--no-track")
    assert scored.returncode == 0, scored.stderr[-2000:]
    out = pd.read_csv(tmp_path / "scores.csv", dtype={"case_id": str}).set_index("case_id").loc[table["case_id"].astype(str)]
    np.testing.assert_allclose(out["prob_lesion"], p, rtol=1e-4, atol=1e-5)  # scoring applies slope and intercept
    called = np.where(out["prob_lesion"] >= site.threshold, "lesion", "normal")  # its own probabilities, as stored
    assert (out["predicted"] == called).all()


def test_a_sample_without_labels_without_a_class_or_not_separated_is_refused_in_one_line(trained, tmp_path):
    model, manifest = trained
    table = pd.read_csv(manifest, dtype={"case_id": str})
    cases = {"unlabelled": table.assign(label=table["label"].where(table.index != 3)),
             "one_class": table[table["label"] == "lesion"],
             "reversed": table.assign(label=table["label"].map({"lesion": "normal", "normal": "lesion"}))}
    for name, part in cases.items():
        part.to_csv(manifest.parent / f"{name}.csv", index=False)
        res = run_cli("recalibrate", "--model", str(model), "--manifest", str(manifest.parent / f"{name}.csv"),
                      "--out", str(tmp_path / f"{name}.pt"))
        assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr
        assert not (tmp_path / f"{name}.pt").exists()
        line = (res.stdout + res.stderr).strip().splitlines()[-1]
        want = {"unlabelled": f"case {table['case_id'][3]}: no label", "one_class": "no case of class 'normal'",
                "reversed": "does not separate the classes"}[name]
        assert want in line, line
    res = run_cli("recalibrate", "--model", str(model), "--manifest", str(manifest), "--out", str(tmp_path / "site.txt"))
    assert res.returncode != 0 and "a medtl model file ends in .pt" in res.stderr and "site.pt" in res.stderr
    assert not (tmp_path / "site.txt").exists()  # score --model would not take it
    before = Path(model).read_bytes()
    res = run_cli("recalibrate", "--model", str(model), "--manifest", str(manifest), "--out", str(model))
    assert res.returncode != 0 and "that is the model being recalibrated" in res.stderr
    assert Path(model).read_bytes() == before  # the model as trained is kept (the site model used to replace it)
    res = run_cli("recalibrate", "--model", str(model), "--manifest", str(manifest), "--out", str(tmp_path / "s.pt"),
                  "--threshold-rule", "sensitivity", "--target-sensitivity", "1.5")
    assert res.returncode != 0 and "--target-sensitivity 1.5" in res.stderr and not (tmp_path / "s.pt").exists()


def test_a_site_sample_that_fixes_no_temperature_is_reported(caplog):
    """The site's cases choose the temperature and threshold here, so they get validation's warning."""
    from medtl.evaluate.calibration import calibrate
    from medtl.log import logger

    y = np.repeat([0, 1], 6)
    logits = np.column_stack([np.zeros(12), 8.0 * (y - 0.5)])  # every case right: no finite temperature
    logger.addHandler(caplog.handler)
    try:
        calibrate(logits, y, "youden", cases="cases of the site")
    finally:
        logger.removeHandler(caplog.handler)
    assert any("the 12 cases of the site are all classified correctly" in r.getMessage() for r in caplog.records)
