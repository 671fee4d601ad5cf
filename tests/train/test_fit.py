"""Training end to end on small synthetic scans: loss falls, resume after kill -9, DDP, config refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set, make_segmentation_set
from medtl.errors import ConfigError
from medtl.models.checkpoint import load_bundle
from medtl.evaluate.calibration import fit_temperature
from medtl.steps import fit_model
from medtl.train.run import train


SEPARABLE = dict(split=True, lesion_scale=0.3)  # the label is visible in every image

pytestmark = pytest.mark.slow


def cls_overrides(manifest, out, extra=()):
    return [f"data.manifest={manifest}", "data.classes=[normal,lesion]", f"train.out_dir={out}",
            "train.batch_size=8", "train.early_stopping_patience=null", *extra]


def youden_by_hand(y: np.ndarray, p: np.ndarray) -> float:
    """The highest cut-off t (calling p >= t positive) among those that maximise sensitivity + specificity, moved
    to the middle (in logit space) of the gap down to the next lower score, which calls the same cases."""
    scores = np.unique(p)[::-1]
    best, best_i = -np.inf, 0
    for i, t in enumerate(scores):
        called = p >= t
        j = called[y == 1].mean() + (~called[y == 0]).mean()
        if j > best + 1e-12:
            best, best_i = j, i
    if best_i + 1 == len(scores):
        return float(scores[best_i])
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    return float(1 / (1 + np.exp(-(logit(scores[best_i]) + logit(scores[best_i + 1])) / 2)))


def test_2d_classification_loss_falls_and_model_is_self_describing(tmp_path):
    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32), **SEPARABLE)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", ["data.image_size=[32,32]", "train.epochs=5",
                                                                  "train.lr=0.003", "transfer.strategy=full",
                                                                  "train.loss=focal", "train.sampler=balanced"]))
    result = fit_model(cfg)
    losses = [h["train_loss"] for h in result.history]
    # epoch means of 6 balanced, augmented batches of 8 swing by 2x from epoch to epoch (threads and memory
    # format change the path): the test asks that the loss fell well below its start, not where it ends
    assert min(losses[1:]) < 0.7 * losses[0], losses
    bundle = load_bundle(result.model_path)
    assert bundle.classes == ["normal", "lesion"]
    # the threshold is chosen once, on the temperature-scaled validation probabilities of the best model
    logits, y = torch.as_tensor(result.val["logits"]).double(), result.val["labels"]
    assert bundle.temperature == pytest.approx(fit_temperature(logits.numpy(), y))
    val_p = torch.softmax(logits / bundle.temperature, 1)[:, 1].numpy()
    assert bundle.threshold == pytest.approx(youden_by_hand(y, val_p))
    # ... and those are the predictions of the saved weights on the validation cases
    best = max(h["val_auroc"] for h in result.history)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, val_p) == pytest.approx(best)
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(bundle.model(x), result.bundle.model.eval()(x))
    assert json.loads((result.out_dir / "train_summary.json").read_text())["epochs_completed"] == 5


def test_3d_classification_on_dicom_series(tmp_path):
    m = make_classification_set(tmp_path / "d", n=20, kind="dicom", size=(16, 16, 8), **SEPARABLE)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", [
        "data.spatial_dims=3", "data.image_size=[16,16,16]", "data.modality=ct", "model.backbone=resnet10",
        "model.pretrained=none", "transfer.strategy=scratch", "train.epochs=4", "train.lr=0.003"]))
    result = train(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("dims, size, backbone, pretrained", [
    (2, [32, 32], "efficientnet-lite0", "imagenet"),
    (3, [32, 32, 16], "resnet10", "none"),
])
def test_segmentation_loss_falls_with_sliding_window_validation(tmp_path, dims, size, backbone, pretrained):
    m = make_segmentation_set(tmp_path / "s", n=10, size=size, lesion_scale=0.3)
    patch = "[32,32]" if dims == 2 else "[32,32,16]"
    cfg = load_config(None, [f"data.manifest={m}", "data.task=segmentation", f"data.spatial_dims={dims}",
                             f"data.image_size={size}".replace(" ", ""), "data.modality=ct", f"model.backbone={backbone}",
                             f"model.pretrained={pretrained}", "train.loss=dice_ce", f"train.patch_size={patch}",
                             "train.epochs=6", "train.batch_size=4", "train.lr=0.005", "transfer.strategy=full",
                             f"train.out_dir={tmp_path / 'runs'}", "train.early_stopping_patience=null"])
    result = train(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert [h["epoch"] for h in result.history if "val_dice" in h] == list(range(1, 7))  # validated every epoch


def test_bad_configs_are_refused_before_any_scan_is_read(tmp_path, monkeypatch):
    m = make_classification_set(tmp_path / "d", n=8, kind="png", size=(16, 16))
    import medtl.data.readers as readers

    def boom(*a, **k):
        raise AssertionError("a scan was read")

    monkeypatch.setattr(readers.ScanReader, "read", boom)
    base = cls_overrides(m, tmp_path / "runs")
    with pytest.raises(ConfigError, match="train.loss"):
        load_config(None, base + ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, base + ["train.lr=-1"])
    with pytest.raises(ConfigError, match="'tumour' is not a class"):
        train(load_config(None, base + ["train.class_weights={tumour: 2.0}"]))
    with pytest.raises(ConfigError, match="segmentation needs a mask column"):
        train(load_config(None, base + ["data.task=segmentation", "train.loss=dice_ce"]))
    with pytest.raises(ConfigError, match="adaptation.target_manifest: .*nothere.csv: manifest not found"):
        train(load_config(None, base + ["adaptation.method=coral", f"adaptation.target_manifest={tmp_path / 'nothere.csv'}",
                                        "transfer.strategy=fine_tune"]))  # was found only after the weights were loaded


def _count_epochs(out: Path) -> int:
    return json.loads((out / "train_summary.json").read_text())["epochs_completed"]


def _nodes(args: list[str], port: int, fault_on_node1: str | None = None) -> list[subprocess.CompletedProcess]:
    """Two single-process torchrun "nodes" on this machine over gloo, meeting at a free port."""
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MEDTL_PROGRESS": "0", **({"MEDTL_FAULT": fault_on_node1} if rank == 1 and fault_on_node1 else {})}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "medtl.cli", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate()) for p in procs]


def test_two_nodes_log_once_and_resume_after_one_rank_is_killed(tmp_path):
    from mlflow import MlflowClient

    from tests.conftest import free_port

    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16), split=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = cls_overrides(m, tmp_path / "runs", ["data.image_size=[16,16]", "train.epochs=2", "model.pretrained=none",
                                                 "transfer.strategy=scratch", "name=ddp", "evaluate.bootstrap=10", "evaluate.figures=false",
                                                 "evaluate.gradcam=0", f"tracking.uri={uri}"])
    args = ["run", "diagnosis", *[x for s in sets for x in ("--set", s)]]
    killed = _nodes(args, free_port(), fault_on_node1="after_epoch:1")
    assert killed[1].returncode != 0 and killed[0].returncode != 0  # rank 1 died; rank 0 cannot go on alone
    said = [line for line in killed[0].stderr.splitlines() if line.startswith(("error:", "unexpected error:"))]
    assert len(said) == 1 and said[0].startswith("error: rank 0 of 2: another process of this distributed training "
                                                 "stopped") and "--resume on every node" in said[0], killed[0].stderr[-2000:]
    out = tmp_path / "runs" / "ddp"
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "model.pt").exists()
    resumed = _nodes([*args, "--resume"], free_port())
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stderr[-2000:] + resumed[1].stderr[-2000:]
    assert _count_epochs(out) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # written by rank 0 only
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medtl").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one record, both launches
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]


def test_only_a_collective_broken_by_another_rank_is_read_as_a_lost_peer(monkeypatch):
    import torch.distributed as dist

    from medtl.train.runtime import peer_lost

    gloo = RuntimeError("[/w/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:41153. "
                        "This is typically caused by a remote worker crashing.")
    assert peer_lost(gloo) is None  # one process: no peer to lose
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    lost = peer_lost(gloo)
    assert str(lost).startswith("rank 2 of 4: another process of this distributed training stopped (Connection closed "
                                "by peer [10.0.0.2]:41153); ") and lost.exit_code == 1
    assert peer_lost(dist.DistBackendError("NCCL communicator was aborted on rank 1")) is not None
    assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)")) is None  # a bug stays one


def test_sharded_sampler_gives_each_rank_its_own_cases():
    from medtl.train.samplers import ShardedSampler

    base = list(range(10))
    shards = [list(ShardedSampler(base, r, 2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == base and not set(shards[0]) & set(shards[1])  # each case once per epoch
    odd = [list(ShardedSampler(list(range(7)), r, 2)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 4 and set(odd[0] + odd[1]) == set(range(7))  # equal steps: one case padded


def test_same_config_same_machine_same_metrics(tmp_path):
    m = make_classification_set(tmp_path / "d", n=32, kind="png", size=(32, 32))
    runs = []
    for name in ("a", "b"):
        cfg = load_config(None, cls_overrides(m, tmp_path / "runs", ["data.image_size=[32,32]", "train.epochs=2",
                                                                      "train.sampler=balanced", f"name={name}"]))
        runs.append(train(cfg).history)
    strip = [[{k: v for k, v in h.items() if k not in ("images_per_s", "epoch_s")} for h in r] for r in runs]
    assert strip[0] == strip[1]


def test_other_registry_backbones_build_and_run():
    from medtl.config import ModelConfig
    from medtl.models.registry import build_model

    for name, dims, size in (("densenet121", 2, [32, 32]), ("efficientnet-b0", 2, [32, 32]), ("resnet18", 3, [16, 16, 16]),
                             ("efficientnet-lite0-3d", 3, [16, 16, 16])):
        model = build_model(ModelConfig(backbone=name, pretrained="none", in_channels=1), "classification", dims, 3, size).model
        assert model(torch.randn(2, 1, *size)).shape == (2, 3)


def test_channels_last_on_cpu_for_2d_only():
    """oneDNN's channels-last kernels speed 2D training on a CPU and slow 3D: the runtime picks per dimension."""
    from medtl.train.runtime import make_runtime

    cpu = load_config(None, ["train.device=cpu"]).train
    assert make_runtime(cpu, 2).channels_last and not make_runtime(cpu, 3).channels_last
    off = load_config(None, ["train.device=cpu", "train.channels_last=false"]).train
    assert not make_runtime(off, 2).channels_last


def test_probe_first_starts_fine_tuning_from_the_logistic_probe(tmp_path):
    """LP-FT: with a learning rate too small to move anything, the trained head is the logistic regression that
    scikit-learn fits on the pretrained backbone's features of the training cases; without it, it is not."""
    from sklearn.linear_model import LogisticRegression

    from medtl.models.registry import build_model
    from medtl.train.data import make_loader
    from medtl.train.features import extract
    from medtl.train.runtime import make_runtime

    m = make_classification_set(tmp_path / "d", n=48, kind="png", size=(32, 32), **SEPARABLE)
    base = ["data.image_size=[32,32]", "train.epochs=1", "train.lr=1e-9", "train.weight_decay=0",
            "train.class_weights=inverse_frequency", "transfer.freeze_until=block2"]
    probed = fit_model(load_config(None, cls_overrides(m, tmp_path / "runs", [*base, "transfer.probe_first=true"])))
    plain = fit_model(load_config(None, cls_overrides(m, tmp_path / "runs", [*base, "name=plain"])))

    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", base))
    fresh = build_model(cfg.model, "classification", 2, 2, cfg.data.image_size).model
    loader = make_loader(cfg.data, cfg.train, 1, probed.prepared, "train", False, make_runtime(cfg.train, 2))
    x, y = extract(fresh, loader, make_runtime(cfg.train, 2))
    cw = dict(enumerate(probed.class_weights))
    want = LogisticRegression(C=1.0, max_iter=2000, class_weight=cw).fit(x, y).predict_proba(x)[:, 1]

    def head_probability(result) -> np.ndarray:
        head = load_bundle(result.model_path).model.head[1]
        with torch.no_grad():
            return torch.softmax(head(torch.as_tensor(x)), 1)[:, 1].numpy()

    np.testing.assert_allclose(head_probability(probed), want, atol=1e-4)
    assert np.abs(head_probability(plain) - want).max() > 0.05


def test_a_diverging_run_stops_in_one_line_and_keeps_its_best_epoch(tmp_path, monkeypatch):
    """A non-finite loss or validation output was scikit-learn's "Input contains NaN" as an unexpected error."""
    import medtl.train.loop as loop
    from medtl.errors import DivergedError
    from medtl.tasks import Classification

    real = loop.train_one_epoch

    def blows_up_in_epoch_2(lp, epoch):
        metrics = real(lp, epoch)
        return {**metrics, "train_loss": float("nan")} if epoch == 1 else metrics

    monkeypatch.setattr(loop, "train_one_epoch", blows_up_in_epoch_2)
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16), split=True)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", ["data.image_size=[16,16]", "train.epochs=3", "name=div",
                                                                  "train.lr=0.003", "tracking.enabled=false"]))
    with pytest.raises(DivergedError, match=r"diverged in epoch 2 \(training loss nan\): lower train.lr \(now 0.003\)"
                                            r".*kept in .*best.pt") as info:
        fit_model(cfg)
    assert Path(str(info.value).rsplit("kept in ", 1)[1]).is_file()
    records = [{"case_id": "a", "error": None, "logits": np.array([np.inf, 0.0]), "probs": np.array([1.0, 0.0])},
               {"case_id": "b", "error": None, "logits": np.array([0.0, 1.0]), "probs": np.array([0.3, 0.7])}]
    with pytest.raises(DivergedError, match="validation outputs are not finite"):
        Classification().validation_metrics(records, [{"label": 0}, {"label": 1}])


def test_a_second_training_never_replaces_a_feature_extraction_run(tmp_path):
    """A feature extraction keeps no last.pt, so nothing used to stop a rerun of the same name replacing its model."""
    from medtl.errors import MedtlError

    m = make_classification_set(tmp_path / "d", n=12, kind="png", size=(16, 16), split=True)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", ["data.image_size=[16,16]", "model.pretrained=none",
                                                                 "transfer.strategy=feature_extraction"]))
    model = fit_model(cfg).model_path
    before = model.read_bytes()
    with pytest.raises(MedtlError, match=r"already holds a run \(model.pt\) that --resume cannot continue; add --set name="):
        fit_model(cfg)
    assert model.read_bytes() == before


def test_a_batch_of_one_case_that_leaves_batchnorm_one_value_names_the_setting(tmp_path):
    """It was torch's "Expected more than 1 value per channel", an unexpected error that names no setting."""
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(16, 16), split=True)
    cfg = load_config(None, cls_overrides(m, tmp_path / "runs", ["data.image_size=[16,16]", "train.epochs=1",
                                                                  "train.batch_size=1", "model.backbone=resnet10",
                                                                  "model.pretrained=none", "tracking.enabled=false"]))
    with pytest.raises(ConfigError, match=r"train.batch_size 1: a training batch of one case at input size \[16, 16\] "
                                          r"leaves a BatchNorm layer one value per channel; use train.batch_size 2"):
        fit_model(cfg)
