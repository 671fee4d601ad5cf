"""The device-resident training path: same batches, same training as the DataLoader path (checked on CPU,
where both run), and augmentation that moves image and mask together and replays after a reseed."""

import pytest
import torch

from medtl.config import load_config
from medtl.data.synthetic import make_classification_set
from medtl.train.device_data import DeviceAugment, DeviceLoader
from medtl.train.run import train


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["none", "balanced"])
def test_training_from_device_tensors_equals_the_dataloader_path(tmp_path, sampler):
    m = make_classification_set(tmp_path / "d", n=24, kind="png", size=(32, 32), split=True)
    histories = []
    for mode, name in (("false", "host"), ("true", "device")):
        cfg = load_config(None, [f"data.manifest={m}", "data.classes=[normal,lesion]", "data.image_size=[32,32]",
                                 "data.augment=false", "model.pretrained=none", "transfer.strategy=scratch",
                                 "train.epochs=2", "train.batch_size=8", f"train.sampler={sampler}",
                                 f"train.data_on_device={mode}", f"train.out_dir={tmp_path / 'runs'}", f"name={name}"])
        histories.append([{k: v for k, v in h.items() if k not in ("images_per_s", "epoch_s")} for h in train(cfg).history])
    assert histories[0] == histories[1]


def test_device_augment_moves_image_and_mask_together_and_replays():
    x = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).reshape(2, 1, 4, 3)
    mask = (x > 10).float()
    aug = DeviceAugment(torch.device("cpu"), flip=True, scale=0.0, shift=0.0, prob=1.0)
    out, out_mask = aug(x, mask)
    assert torch.equal(out, x.flip(2)) and torch.equal(out_mask, mask.flip(2))
    jitter = DeviceAugment(torch.device("cpu"), flip=False, scale=0.1, shift=0.05, prob=1.0)
    jitter.reseed(7)
    a, _ = jitter(x, None)
    jitter.reseed(7)
    b, _ = jitter(x, None)
    assert torch.equal(a, b) and not torch.equal(a, x)
    ratio = (a[:, :, 1:] - a[:, :, :-1]) / (x[:, :, 1:] - x[:, :, :-1])  # a per-image affine map of intensities
    assert torch.allclose(ratio, ratio.flatten(1)[:, :1, None, None].expand_as(ratio))
    assert ((ratio > 0.9 - 1e-6) & (ratio < 1.1 + 1e-6)).all()


def test_device_loader_serves_the_samplers_order_in_batches():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    loader = DeviceLoader(images, torch.arange(10), "label", 4, [9, 2, 5, 0, 7, 1, 3, 8, 6, 4])
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b["label"].tolist() for b in batches] == [[9, 2, 5, 0], [7, 1, 3, 8], [6, 4]]
    assert torch.equal(batches[0]["image"].flatten(), torch.tensor([9.0, 2.0, 5.0, 0.0]))


def test_an_epoch_never_ends_in_a_batch_of_one_case(tmp_path):
    """BatchNorm cannot train on one value per channel: a 3D encoder's 1x1x1 bottleneck stopped a training whose
    last batch held one case (ValueError: Expected more than 1 value per channel)."""
    from medtl.config import DataConfig, TrainConfig
    from medtl.data.manifest import read_manifest
    from medtl.train.data import PreparedData, make_loader
    from medtl.train.runtime import Runtime

    loader = DeviceLoader(torch.zeros(9, 1, 1, 1), torch.arange(9), "label", 4, list(range(9)))
    assert len(loader) == len(list(loader)) == 2 and [len(b["label"]) for b in loader] == [4, 4]
    assert [len(b["label"]) for b in DeviceLoader(torch.zeros(10, 1, 1, 1), torch.arange(10), "label", 4, list(range(10)))] == [4, 4, 2]
    m = read_manifest(make_classification_set(tmp_path / "d", n=14, kind="png", size=(16, 16), split=True))
    train_cases = int((m.table["split"] == "train").sum())
    data = DataConfig(image_size=[16, 16], classes=["normal", "lesion"])
    prepared = PreparedData(m, m.table, ["normal", "lesion"], [])
    cpu = Runtime(torch.device("cpu"), False, False)
    for batch_size, sizes in ((train_cases - 1, [train_cases - 1]), (train_cases, [train_cases])):
        loader = make_loader(data, TrainConfig(batch_size=batch_size), 3, prepared, "train", True, cpu)
        assert [len(b["label"]) for b in loader] == sizes
    evaluation = make_loader(data, TrainConfig(batch_size=train_cases - 1), 3, prepared, "train", False, cpu)
    assert sum(len(b["label"]) for b in evaluation) == train_cases  # evaluation sees every case
