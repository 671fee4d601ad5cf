"""A U-Net whose encoder is a pretrained registry backbone; the decoder is trained from scratch."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


class EncoderUNet(nn.Module):
    """Taps the backbone's stage outputs (strides 2..32) as skips; each decoder level upsamples, concatenates
    the skip and applies two conv-norm-ReLU blocks."""

    def __init__(self, backbone: nn.Module, taps: list[str], spatial_dims: int, in_channels: int,
                 out_channels: int, image_size: list[int], decoder_channels: tuple[int, ...] = (128, 64, 32, 16)) -> None:
        super().__init__()
        self.backbone = backbone
        self.taps = taps
        self.spatial_dims = spatial_dims
        self._feats: dict[str, torch.Tensor] = {}
        for name in taps:
            backbone.get_submodule(name).register_forward_hook(self._hook(name))
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            backbone(torch.zeros(1, in_channels, *image_size))
            backbone.train(was)
        channels = [self._feats[name].shape[1] for name in taps]
        self._feats.clear()
        blocks = []
        prev = channels[-1]
        for skip, out in zip(reversed(channels[:-1]), decoder_channels):
            blocks.append(nn.Sequential(
                Convolution(spatial_dims, prev + skip, out, norm="batch", act="relu"),
                Convolution(spatial_dims, out, out, norm="batch", act="relu"),
            ))
            prev = out
        self.decoder = nn.ModuleList(blocks)
        self.final = nn.Sequential(
            Convolution(spatial_dims, prev + in_channels, decoder_channels[-1], norm="batch", act="relu"),
            Convolution(spatial_dims, decoder_channels[-1], out_channels, conv_only=True, kernel_size=1),
        )

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self._feats[name] = out
        return hook

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return nn.functional.interpolate(x, size=like.shape[2:], mode=mode, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._feats.clear()
        self.backbone(x)
        feats = [self._feats[name] for name in self.taps]
        self._feats.clear()
        y = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            y = block(torch.cat([self._up(y, skip), skip], 1))
        return self.final(torch.cat([self._up(y, x), x], 1))
