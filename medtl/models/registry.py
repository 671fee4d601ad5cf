"""One registry, one factory: ``build_model(model_cfg, task=..., spatial_dims=..., num_classes=...)``.

Each entry declares its pretrained weights, stem and head names and its stages (for freezing and
layer-wise learning rates), so head swapping, channel adaptation and transfer strategies are generic.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121, EfficientNet, EfficientNetBN, ResNet
from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args
from torch import nn

from medtl.config import ModelConfig
from medtl.errors import ConfigError, WeightsError
from medtl.models import convert
from medtl.models.weights import get_spec, load_state, resolve_weights

# EfficientNet-Lite keeps the stem (32) and head (1280) fixed and the first and last stages at one block when
# it scales width and depth, so each variant is spelt out with MONAI's coefficients left at 1.0.
LITE_BLOCKS = {
    "lite0": ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
              "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"],
    "lite1": ["r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o40", "r4_k3_s22_e6_i40_o80",
              "r4_k5_s11_e6_i80_o112", "r5_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"],
    "lite2": ["r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o48", "r4_k3_s22_e6_i48_o88",
              "r4_k5_s11_e6_i88_o120", "r5_k5_s22_e6_i120_o208", "r1_k3_s11_e6_i208_o352"],
}
EFFNET_STAGES = [("stem", ["_conv_stem", "_bn0"])] + [(f"block{i}", [f"_blocks.{i}"]) for i in range(7)] + [("top", ["_conv_head", "_bn1"])]
EFFNET_TAPS = ["_blocks.0", "_blocks.1", "_blocks.2", "_blocks.4", "_blocks.6"]
RESNET_STAGES = [("stem", ["conv1", "bn1"]), *[(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]]
RESNET_TAPS = ["act", "layer1", "layer2", "layer3", "layer4"]
DENSENET_STAGES = [("stem", ["features.conv0", "features.norm0"])] + [
    (f"block{i}", [f"features.denseblock{i}", f"features.transition{i}" if i < 4 else "features.norm5"]) for i in range(1, 5)
]


# TF's EfficientNet BatchNorm momentum (0.01 in PyTorch terms) leaves running statistics near their
# initial values after a short fine-tune; PyTorch's 0.1 lets them follow the new domain (and lets a
# scratch baseline evaluate at all after a few hundred steps).
BN = ("batch", {"eps": 1e-3, "momentum": 0.1})


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    dims: tuple[int, ...]
    build: Callable[[int, int, list[int]], nn.Module]
    """(spatial_dims, in_channels, image_size) -> network whose forward returns pooled features."""
    feature_dim: int
    stages: list[tuple[str, list[str]]]
    stem_key: str
    weights: dict[str, str] = field(default_factory=dict)
    """pretrained source ('imagenet', 'medicalnet') -> weight name in medtl.models.weights."""
    key_format: str = "plain"
    taps: list[str] = field(default_factory=list)
    """Modules whose outputs feed a U-Net decoder, shallow to deep."""
    head_prefixes: tuple[str, ...] = ()


def _relu6(net: nn.Module) -> nn.Module:
    """EfficientNet-Lite swaps swish for ReLU6 (quantisation-friendly); its weights expect it."""
    for module in net.modules():
        if hasattr(module, "_swish"):
            module._swish = nn.ReLU6()
    return net


class SamePad(nn.Module):
    """TensorFlow 'same' padding computed from the input's own shape at every call, axis by axis.

    MONAI's EfficientNet fixes its padding at build time for a cube of side ``image_size``; a CT patch of
    128 x 128 x 32 then gets the padding of a 128-cube along depth and the kernels outgrow the input.
    ``replicate_depth`` pads the last axis by repeating the edge slice (inflated 2D kernels then see a
    volume constant along depth exactly as the 2D network sees its slice)."""

    def __init__(self, conv: nn.Module, replicate_depth: bool = False) -> None:
        super().__init__()
        n = conv.weight.dim() - 2
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * n  # noqa: E731
        self.kernel, self.stride, self.dilation = as_tuple(conv.kernel_size), as_tuple(conv.stride), as_tuple(conv.dilation)
        self.replicate_depth = replicate_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[2:], self.kernel, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        if not any(flat):
            return x
        if self.replicate_depth and any(flat[:2]):
            x = nn.functional.pad(x, tuple(flat[:2]) + (0,) * (len(flat) - 2), mode="replicate")
            flat[:2] = [0, 0]
        return nn.functional.pad(x, tuple(flat))


def dynamic_same_padding(net: nn.Module, replicate_depth: bool = False) -> nn.Module:
    """Replaces every fixed '<conv>_padding' of a MONAI EfficientNet with SamePad for that conv."""
    for module in list(net.modules()):
        for name in [n for n in module._modules if n.endswith("_padding")]:
            conv = getattr(module, name.removesuffix("_padding"), None)
            if isinstance(conv, nn.modules.conv._ConvNd):
                setattr(module, name, SamePad(conv, replicate_depth))
    return net


def _lite(variant: str) -> Callable[[int, int, list[int]], nn.Module]:
    def build(spatial_dims: int, in_channels: int, image_size: list[int]) -> nn.Module:
        net = EfficientNet(LITE_BLOCKS[variant], spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1000,
                           image_size=max(image_size), dropout_rate=0.0, drop_connect_rate=0.2, norm=BN)
        net._fc = nn.Identity()
        return dynamic_same_padding(_relu6(net), replicate_depth=spatial_dims == 3)
    return build


def _effnet_bn(variant: str) -> Callable[[int, int, list[int]], nn.Module]:
    def build(spatial_dims: int, in_channels: int, image_size: list[int]) -> nn.Module:
        net = EfficientNetBN(variant, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1000,
                             norm=BN)
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
        return dynamic_same_padding(net)
    return build


def _densenet(spatial_dims: int, in_channels: int, image_size: list[int]) -> nn.Module:
    net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1000)
    net.class_layers.out = nn.Identity()
    return net


def _resnet(depth: int) -> Callable[[int, int, list[int]], nn.Module]:
    block, layers = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]),
                     34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}[depth]

    def build(spatial_dims: int, in_channels: int, image_size: list[int]) -> nn.Module:
        bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
        return ResNet(block, layers, [64, 128, 256, 512], spatial_dims=spatial_dims, n_input_channels=in_channels,
                      conv1_t_size=7, conv1_t_stride=2, shortcut_type=shortcut, bias_downsample=bias_downsample,
                      feed_forward=False)
    return build


REGISTRY: dict[str, BackboneSpec] = {
    **{
        f"efficientnet-{v}": BackboneSpec(f"efficientnet-{v}", (2,), _lite(v), 1280, EFFNET_STAGES, "_conv_stem.weight",
                                          {"imagenet": f"efficientnet-{v}-imagenet"}, "lukemelas", EFFNET_TAPS, ("_fc.",))
        for v in LITE_BLOCKS
    },
    "efficientnet-lite0-3d": BackboneSpec("efficientnet-lite0-3d", (3,), _lite("lite0"), 1280, EFFNET_STAGES, "_conv_stem.weight",
                                          {"imagenet": "efficientnet-lite0-imagenet"}, "lukemelas-inflate", EFFNET_TAPS, ("_fc.",)),
    **{
        f"efficientnet-b{i}": BackboneSpec(f"efficientnet-b{i}", (2, 3), _effnet_bn(f"efficientnet-b{i}"), dim, EFFNET_STAGES,
                                           "_conv_stem.weight", {"imagenet": f"efficientnet-b{i}-imagenet"}, "lukemelas",
                                           EFFNET_TAPS, ("_fc.",))
        for i, dim in enumerate([1280, 1280, 1408, 1536, 1792])
    },
    "densenet121": BackboneSpec("densenet121", (2, 3), _densenet, 1024, DENSENET_STAGES, "features.conv0.weight",
                                {"imagenet": "densenet121-imagenet"}, "torchvision-densenet", [], ("classifier.", "class_layers.out.")),
    **{
        f"resnet{d}": BackboneSpec(f"resnet{d}", (2, 3), _resnet(d), 512 * (4 if d == 50 else 1), RESNET_STAGES, "conv1.weight",
                                   {"medicalnet": f"resnet{d}-medicalnet"}, "medicalnet", RESNET_TAPS, ("fc.", "conv_seg."))
        for d in (10, 18, 34, 50)
    },
}


def get_backbone(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def checked_backbone(cfg: ModelConfig, spatial_dims: int) -> BackboneSpec:
    """The backbone's spec once the config's choices fit it (known name, dimensions, a pretrained source it has):
    what can be checked before any weight or scan is read."""
    spec = get_backbone(cfg.backbone)
    if spatial_dims not in spec.dims:
        raise ConfigError(f"model.backbone: {spec.name} is for {'/'.join(map(str, spec.dims))}D data, data.spatial_dims is {spatial_dims}")
    if cfg.pretrained != "none" and cfg.pretrained not in spec.weights:
        raise ConfigError(f"model.pretrained: {spec.name} has no {cfg.pretrained} weights; use {', '.join(spec.weights) or 'none'}")
    return spec


def check_stage(spec: BackboneSpec, name: str) -> None:
    names = [n for n, _ in spec.stages]
    if name not in names:
        raise ConfigError(f"transfer.freeze_until: {name!r} is not a stage of {spec.name}; stages: {', '.join(names)}")


def build_backbone(cfg: ModelConfig, spatial_dims: int, image_size: list[int]) -> tuple[nn.Module, BackboneSpec, str | None]:
    """The feature network with pretrained weights loaded; returns it, its spec and the weights' SHA-256."""
    spec = checked_backbone(cfg, spatial_dims)
    net = spec.build(spatial_dims, cfg.in_channels, image_size)
    if cfg.pretrained == "none":
        return net, spec, None
    name = spec.weights[cfg.pretrained]
    path, digest = resolve_weights(name, cfg.weights)
    try:
        _load_pretrained(net, spec, name, path, spatial_dims, cfg.in_channels, cfg.stem_rule)
    except WeightsError as err:
        fix = "set model.weights to the right file" if cfg.weights else f"import the right file with `medtl weights import {name} FILE`"
        raise WeightsError(f"{path}: {err}; {fix}") from None
    return net, spec, digest


def _load_pretrained(net: nn.Module, spec: BackboneSpec, name: str, path: Path, spatial_dims: int, in_channels: int,
                     stem_rule: str = "sum") -> None:
    state = load_state(path)
    if spec.key_format == "medicalnet":
        state = convert.unwrap_medicalnet(state)
    elif spec.key_format.startswith("lukemelas"):
        state = convert.remap_lukemelas(state, list(net.state_dict()))
    elif spec.key_format == "torchvision-densenet":
        state = convert.remap_torchvision_densenet(state)
    if spatial_dims == 3 and name.endswith("imagenet"):
        state = convert.inflate(state, net.state_dict())  # load_backbone adapts the stem's channels afterwards
    convert.load_backbone(net, state, spec.stem_key, spec.head_prefixes, in_channels, stem_rule)


def check_weights_fit(name: str, path: Path) -> None:
    """Loads ``path`` into the network that weight ``name`` is for, so that a wrong file is refused when it is
    imported rather than when a training run first needs it."""
    spec = next(s for s in REGISTRY.values() if name in s.weights.values())
    dims = get_spec(name).dims
    _load_pretrained(spec.build(dims, 1, [64] * dims), spec, name, path, dims, 1)


class Classifier(nn.Module):
    """A pretrained feature network and a new linear head; ``features`` is what feature extraction caches."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float, spec_name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.spec_name = spec_name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class BuiltModel:
    model: nn.Module
    spec: BackboneSpec
    weights_sha256: str | None


def build_model(cfg: ModelConfig, task: str, spatial_dims: int, num_classes: int, image_size: list[int]) -> BuiltModel:
    """Classifier or segmentation U-Net on a registry backbone, pretrained as configured."""
    backbone, spec, digest = build_backbone(cfg, spatial_dims, image_size)
    if task == "classification":
        return BuiltModel(Classifier(backbone, spec.feature_dim, num_classes, cfg.dropout, spec.name), spec, digest)
    from medtl.models.segmentation import EncoderUNet

    if not spec.taps:
        raise ConfigError(f"model.backbone: {spec.name} has no segmentation encoder; use an efficientnet or resnet backbone")
    net = EncoderUNet(backbone, spec.taps, spatial_dims, cfg.in_channels, num_classes, image_size)
    return BuiltModel(net, spec, digest)
