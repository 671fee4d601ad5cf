"""Acquisition changes on the device: a blur equal to scipy's, intensity maps that keep each image's order of
values, a field of view that moves image and mask together, replay after a reseed, and the same option on the
DataLoader path through MONAI."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.ndimage import gaussian_filter

from medtl.config import DataConfig
from medtl.data.transforms import augmentation_transforms
from medtl.train.acquisition import AcquisitionAugment, _gaussian_blur
from medtl.train.device_data import DeviceAugment


def _draws(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (lambda n, device: torch.rand(n, device=device, generator=g)), g


@pytest.mark.parametrize("shape", [(3, 1, 17, 12), (2, 1, 9, 8, 7)])
def test_blur_is_scipys_gaussian_with_each_images_sigma(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.6, 1.0][: shape[0]], dtype=torch.float64)
    out = _gaussian_blur(x, sigma)
    radius = 2  # ceil(2 * the largest sigma)
    for i, s in enumerate(sigma.tolist()):
        want = x[i, 0].numpy() if s == 0 else gaussian_filter(x[i, 0].numpy(), s, mode="nearest", truncate=radius / s)
        np.testing.assert_allclose(out[i, 0].numpy(), want, atol=1e-10)


def test_gamma_and_contrast_keep_each_images_order_of_values():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    aug = AcquisitionAugment(prob=1.0, blur_sigma=0.0, noise=0.0, zoom=0.0, shift=0.0)
    draw, g = _draws(0)
    out, _ = aug(x, None, draw, g)
    assert not torch.allclose(out, x, atol=1e-3)
    for i in range(4):
        a, b = x[i].flatten(), out[i].flatten()
        assert torch.equal(torch.argsort(a), torch.argsort(b))  # monotone increasing per image: nothing inverted
        assert b.max() - b.min() <= 1.3 * (a.max() - a.min()) + 1e-5  # contrast within its bound


def test_nothing_changes_where_no_step_is_drawn():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    draw, g = _draws(0)
    out, _ = AcquisitionAugment(prob=0.0)(x, None, draw, g)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_field_of_view_moves_image_and_mask_together():
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:20, 10:26] = 1
    aug = AcquisitionAugment(prob=1.0, gamma=1.0, contrast=0.0, blur_sigma=0.0, noise=0.0, zoom=0.2, shift=0.1)
    draw, g = _draws(3)
    image, moved = aug(mask.clone(), mask.clone(), draw, g)
    assert not torch.equal(moved, mask)
    assert ((image > 0.5).float() == moved).float().mean() > 0.97
    assert set(moved.unique().tolist()) <= {0.0, 1.0}


def test_device_augment_with_acquisition_replays_after_a_reseed():
    x = torch.rand(5, 1, 24, 24, generator=torch.Generator().manual_seed(4))
    aug = DeviceAugment(torch.device("cpu"), flip=False, acquisition=AcquisitionAugment(prob=1.0))
    aug.reseed(11)
    a, _ = aug(x, None)
    aug.reseed(11)
    b, _ = aug(x, None)
    assert torch.equal(a, b) and not torch.allclose(a, x, atol=1e-2) and torch.isfinite(a).all()


def test_the_dataloader_path_takes_the_same_changes_from_monai():
    names = lambda cfg: [type(t).__name__ for t in augmentation_transforms(cfg)]  # noqa: E731
    on = names(DataConfig(acquisition_augment=True))
    assert {"RandAdjustContrastd", "RandScaleIntensityFixedMeand", "RandGaussianSmoothd", "RandGaussianNoised",
            "RandAffined"} <= set(on)
    assert "RandGaussianNoised" not in names(DataConfig())


def test_acquisition_changes_without_augmentation_is_a_config_error():
    with pytest.raises(ValidationError, match="acquisition_augment is true but augment is false"):
        DataConfig(acquisition_augment=True, augment=False)


def test_strength_scales_every_bound_on_both_paths():
    one, two = AcquisitionAugment.at_strength(1.0), AcquisitionAugment.at_strength(2.0)
    assert vars(one) == vars(AcquisitionAugment())
    assert two.gamma == pytest.approx(2.25) and two.contrast == pytest.approx(0.6) and two.zoom == pytest.approx(0.2)
    steps = {type(t).__name__: t for t in augmentation_transforms(DataConfig(acquisition_augment=True,
                                                                             acquisition_strength=2.0))}
    assert steps["RandGaussianNoised"].rand_gaussian_noise.std == pytest.approx(0.1)
    assert steps["RandAdjustContrastd"].adjuster.gamma == pytest.approx((1 / 2.25, 2.25))
    with pytest.raises(ValidationError, match="acquisition_strength"):
        DataConfig(acquisition_strength=0)
