"""Registry, real ImageNet weights offline, checkpoint formats, inflation, and transfer strategies."""

import http.server
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from medtl.config import ModelConfig, TransferConfig
from medtl.errors import WeightsError
from medtl.models import weights as W
from medtl.models.registry import build_model
from medtl.models.transfer import TransferSchedule

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_imagenet_weights_are_real_offline(variant):
    """Every block string matches its checkpoint and the network, so loaded, still sees a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    built = build_model(ModelConfig(backbone=f"efficientnet-{variant}", pretrained="imagenet", in_channels=3),
                        "classification", 2, 1000, [224, 224])
    path, digest = W.resolve_weights(f"efficientnet-{variant}-imagenet")
    state = W.load_state(path)
    model = built.model.eval()
    model.head[1].load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    img = np.asarray(Image.fromarray(skimage_data.chelsea()).resize((224, 224)), dtype=np.float32) / 255.0
    x = torch.tensor(img).permute(2, 1, 0)[None]
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    with torch.no_grad():
        top = int(model((x - mean) / std).argmax())
    assert top in IMAGENET_CATS
    assert digest == W.WEIGHTS[f"efficientnet-{variant}-imagenet"].sha256


def test_grey_stem_sums_rgb_kernels():
    rgb = build_model(ModelConfig(in_channels=3), "classification", 2, 2, [64, 64]).model
    grey = build_model(ModelConfig(in_channels=1), "classification", 2, 2, [64, 64]).model
    w3 = rgb.backbone._conv_stem.weight
    w1 = grey.backbone._conv_stem.weight
    torch.testing.assert_close(w1, w3.sum(1, keepdim=True))
    x = torch.rand(1, 1, 64, 64)
    rgb.eval(), grey.eval()
    with torch.no_grad():
        torch.testing.assert_close(grey.features(x), rgb.features(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("plane, depth", [((64, 64), 64), ((32, 32), 40), ((32, 32), 8), ((48, 32), 16), ((32, 48), 5)])
def test_inflated_3d_matches_2d_on_depth_constant_volume(plane, depth):
    m2 = build_model(ModelConfig(backbone="efficientnet-lite0", in_channels=1), "classification", 2, 2, list(plane)).model.eval()
    m3 = build_model(ModelConfig(backbone="efficientnet-lite0-3d", in_channels=1), "classification", 3, 2,
                     [*plane, depth]).model.eval()
    sl = torch.rand(1, 1, *plane)
    vol = sl[..., None].repeat(1, 1, 1, 1, depth)
    with torch.no_grad():
        diff = (m3.features(vol) - m2.features(sl)).abs().max()
    assert float(diff) < 1e-4


@pytest.mark.parametrize("backbone", ["efficientnet-lite0-3d", "efficientnet-b0", "resnet10"])
@pytest.mark.parametrize("size", [[32, 32, 8], [16, 16, 32], [24, 40, 12]])
def test_every_3d_backbone_takes_any_patch_shape(backbone, size):
    x = torch.randn(1, 1, *size)
    for task, want in (("classification", (1, 2)), ("segmentation", (1, 2, *size))):
        model = build_model(ModelConfig(backbone=backbone, pretrained="none", in_channels=1), task, 3, 2, size).model.eval()
        with torch.no_grad():
            assert tuple(model(x).shape) == want


def medicalnet_checkpoint(tmp_path, depth=10):
    net = build_model(ModelConfig(backbone=f"resnet{depth}", pretrained="none"), "classification", 3, 2, [32, 32, 32]).model.backbone
    state = {f"module.{k}": v + 0.01 for k, v in net.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)
    path = tmp_path / f"resnet_{depth}.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path, state


@pytest.mark.parametrize("depth", [10, 18])
def test_medicalnet_format_loads_with_no_backbone_key_missing(tmp_path, depth):
    path, state = medicalnet_checkpoint(tmp_path, depth)
    m = build_model(ModelConfig(backbone=f"resnet{depth}", pretrained="medicalnet", weights=path), "classification", 3, 2, [32, 32, 32]).model
    torch.testing.assert_close(m.backbone.conv1.weight, state["module.conv1.weight"])
    torch.testing.assert_close(m.backbone.layer4[0].bn1.running_mean, state["module.layer4.0.bn1.running_mean"])
    seg = build_model(ModelConfig(backbone=f"resnet{depth}", pretrained="medicalnet", weights=path), "segmentation", 3, 2, [32, 32, 32]).model
    assert seg(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2, 32, 32, 32)


def test_wrong_architecture_and_checksum_and_missing_offline_errors(tmp_path, monkeypatch):
    path, _ = medicalnet_checkpoint(tmp_path, 10)
    with pytest.raises(WeightsError, match="shape|lack"):
        build_model(ModelConfig(backbone="resnet18", pretrained="medicalnet", weights=path), "classification", 3, 2, [32] * 3)
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="SHA-256"):
        W.import_weights("efficientnet-lite0-imagenet", bad)
    with pytest.raises(WeightsError, match=r"resnet_34.pth.*medtl weights import resnet34-medicalnet"):
        W.resolve_weights("resnet34-medicalnet")


def test_a_file_for_another_network_is_refused_at_import_and_named_at_training(tmp_path):
    """Weights with no published digest are checked by loading them into their network before they are cached."""
    path, _ = medicalnet_checkpoint(tmp_path, 10)
    with pytest.raises(WeightsError, match=r"is not resnet18-medicalnet .*lack.*import resnet_18.pth from https://"):
        W.import_weights("resnet18-medicalnet", path)
    assert not (W.cache_dir() / "resnet_18.pth").exists()
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match="holds a Tensor"):
        W.import_weights("resnet10-medicalnet", tensor)
    W.cache_dir().mkdir(parents=True, exist_ok=True)
    (W.cache_dir() / "resnet_18.pth").write_bytes(path.read_bytes())  # put there by hand, around the import check
    with pytest.raises(WeightsError, match=r"resnet_18.pth: .*lack.*medtl weights import resnet18-medicalnet FILE"):
        build_model(ModelConfig(backbone="resnet18", pretrained="medicalnet"), "classification", 3, 2, [32] * 3)


def test_download_is_real_against_a_local_server(tmp_path, monkeypatch):
    path, _ = medicalnet_checkpoint(tmp_path, 10)
    served = tmp_path / "srv"
    served.mkdir()
    (served / "resnet_10.pth").write_bytes(path.read_bytes())
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = W.WEIGHTS["resnet10-medicalnet"]
        local = W.WeightSpec(spec.name, 3, spec.source, f"http://127.0.0.1:{server.server_port}/resnet_10.pth", None)
        monkeypatch.setitem(W.WEIGHTS, spec.name, local)
        monkeypatch.setenv("MEDTL_OFFLINE", "0")
        got, digest = W.resolve_weights("resnet10-medicalnet")
        assert got == W.cache_dir() / "resnet_10.pth" and digest == W.sha256_of(path)
        # the digest recorded at download now guards the cached file
        got.write_bytes(b"tampered")
        with pytest.raises(WeightsError, match="SHA-256"):
            W.resolve_weights("resnet10-medicalnet")
    finally:
        server.shutdown()


def tiny_batch(n=8):
    torch.manual_seed(0)
    return torch.randn(n, 1, 32, 32), torch.randint(0, 2, (n,))


def train_steps(model, sched, steps=3):
    opt = torch.optim.AdamW(sched.param_groups(), weight_decay=0.1)
    x, y = tiny_batch()
    for _ in range(steps):
        sched.train_mode()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_stages_and_their_bn_statistics_stay_bit_identical():
    built = build_model(ModelConfig(pretrained="imagenet"), "classification", 2, 2, [32, 32])
    model = built.model
    sched = TransferSchedule(model, built.spec, TransferConfig(strategy="fine_tune", freeze_until="block3"), 1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, sched)
    after = model.state_dict()
    for key in before:
        frozen = key.startswith(("backbone._conv_stem", "backbone._bn0")) or any(key.startswith(f"backbone._blocks.{i}.") for i in range(4))
        if frozen:
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    assert not torch.equal(before["backbone._conv_head.weight"], after["backbone._conv_head.weight"])
    assert not torch.equal(before["backbone._bn1.running_mean"], after["backbone._bn1.running_mean"])


def test_feature_extraction_freezes_whole_backbone_and_layer_lrs_decay():
    built = build_model(ModelConfig(), "classification", 2, 2, [32, 32])
    sched = TransferSchedule(built.model, built.spec, TransferConfig(strategy="feature_extraction"), 1e-2)
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    sched = TransferSchedule(built.model, built.spec, TransferConfig(strategy="full", layer_lr_decay=0.5), 1e-2)
    groups = {g["name"]: g["lr"] for g in sched.param_groups()}
    assert groups["head"] == pytest.approx(1e-2)
    assert groups["top"] == pytest.approx(5e-3)
    assert groups["block6"] == pytest.approx(2.5e-3)
    assert groups["stem"] == pytest.approx(1e-2 * 0.5 ** 9)


def test_gradual_unfreeze_opens_one_stage_per_n_epochs():
    built = build_model(ModelConfig(), "classification", 2, 2, [32, 32])
    sched = TransferSchedule(built.model, built.spec, TransferConfig(strategy="fine_tune", freeze_until="top", gradual_unfreeze=2), 1e-3)
    assert not any(p.requires_grad for p in built.model.backbone._conv_head.parameters())
    assert not sched.on_epoch_start(1)
    assert sched.on_epoch_start(2)
    assert all(p.requires_grad for p in built.model.backbone._conv_head.parameters())
    assert not any(p.requires_grad for p in built.model.backbone._blocks[6].parameters())
    assert sched.on_epoch_start(4)
    assert all(p.requires_grad for p in built.model.backbone._blocks[6].parameters())


def test_weights_cli_list_import_verify(tmp_path):
    from tests.conftest import run_cli

    res = run_cli("weights", "list")
    assert res.returncode == 0 and "efficientnet-lite0-imagenet" in res.stdout and "package" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines() if "│" in line) <= 80  # the table fits a terminal
    assert "medtl weights import resnet10-medicalnet FILE" in res.stdout  # a missing one says how to get it
    path, _ = medicalnet_checkpoint(tmp_path, 10)
    empty = tmp_path / "downloads"
    empty.mkdir()
    res = run_cli("weights", "import", "resnet10-medicalnet", str(empty))
    assert res.returncode == 2 and f"{empty}: a folder without resnet_10.pth" in res.stderr, res.stderr
    res = run_cli("weights", "import", "resnet10-medicalnet", str(path.parent))  # the download folder will do
    assert res.returncode == 0, res.stderr
    assert "import resnet10-medicalnet FILE" not in run_cli("weights", "list").stdout
    assert run_cli("weights", "verify").returncode == 0
    res = run_cli("weights", "import", "nope", str(path))
    assert res.returncode == 2 and "unknown weights" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("stop", ["KeyboardInterrupt", "Terminated"])
def test_ctrl_c_while_a_checkpoint_is_written_is_an_interrupt_and_keeps_the_last_one(tmp_path, monkeypatch, stop):
    """torch's zip writer turns a KeyboardInterrupt mid-write into ``RuntimeError: unexpected pos``, which the CLI
    printed as an unexpected error in place of how to resume."""
    import io
    import os

    import medtl.files
    from medtl.errors import Terminated
    from medtl.models.checkpoint import atomic_save

    stop = {"KeyboardInterrupt": KeyboardInterrupt, "Terminated": Terminated}[stop]  # SIGTERM keeps its own exit status

    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.zeros(1000)}, path)
    real_fdopen = os.fdopen

    class Interrupted(io.BufferedWriter):
        writes = 0

        def write(self, data):
            Interrupted.writes += 1
            if Interrupted.writes == 3:  # inside the tensor records, after the writer has begun its archive
                raise stop
            return super().write(data)

    monkeypatch.setattr(medtl.files.os, "fdopen", lambda fd, mode, **kw: Interrupted(real_fdopen(fd, "wb", buffering=0)))
    with pytest.raises(BaseException) as raised:  # not pytest.raises(stop): a wrong KeyboardInterrupt would end the session
        atomic_save({"epoch": 2, "w": torch.ones(100_000), "v": torch.ones(100)}, path)
    assert type(raised.value) is stop, repr(raised.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the last checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left beside it
