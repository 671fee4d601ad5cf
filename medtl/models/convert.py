"""Weight transfer: key remapping of upstream formats, stem channel adaptation, 2D→3D inflation, and a
load that copies by name, checks every shape, and refuses a missing backbone key."""

from __future__ import annotations

import re

import torch
from torch import nn

from medtl.errors import WeightsError
from medtl.log import logger


def unwrap_medicalnet(state: dict) -> dict[str, torch.Tensor]:
    """MedicalNet checkpoints: ``{"state_dict": {"module.conv1.weight": ...}}`` with a ``conv_seg`` head."""
    inner = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in inner.items() if not k.removeprefix("module.").startswith("conv_seg")}


def remap_lukemelas(state: dict[str, torch.Tensor], target_keys: list[str]) -> dict[str, torch.Tensor]:
    """Flat ``_blocks.N.`` keys (lukemelas/TF format) → MONAI's nested ``_blocks.S.I.``, matched in order."""
    block = re.compile(r"^_blocks\.(\d+)\.(.*)$")
    target_prefixes: list[str] = []
    for key in target_keys:
        m = re.match(r"^(_blocks\.\d+\.\d+)\.", key)
        if m and m.group(1) not in target_prefixes:
            target_prefixes.append(m.group(1))
    out = {}
    for key, value in state.items():
        m = block.match(key)
        if m:
            n = int(m.group(1))
            if n >= len(target_prefixes):
                raise WeightsError(f"checkpoint has a block _blocks.{n} but the network only {len(target_prefixes)} blocks: wrong architecture")
            out[f"{target_prefixes[n]}.{m.group(2)}"] = value
        else:
            out[key] = value
    return out


def remap_torchvision_densenet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision DenseNet keys → MONAI DenseNet (``denselayerN.norm.1`` → ``denselayerN.layers.norm1``)."""
    pattern = re.compile(r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[m.group(1) + ".layers" + m.group(2) + m.group(3) if m else key] = value
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int, rule: str = "sum") -> torch.Tensor:
    """Pretrained stem kernels (out, 3, ...) → (out, in_channels, ...).

    One channel: the RGB kernels summed (``sum``, so a grey image gives the activations an RGB image of
    the same grey would) or averaged (``mean``). More channels: RGB repeated and scaled by 3/in_channels.
    """
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True) if rule == "sum" else weight.mean(1, keepdim=True)
    reps = -(-in_channels // have)
    return weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_channels] * (have / in_channels)


def inflate(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """2D kernels → 3D (I3D): each (out, in, kh, kw) repeated along a new last depth axis and divided by depth,
    so a volume constant along depth gives the 2D network's responses."""
    out = {}
    for key, value in state.items():
        want = target.get(key)
        if want is not None and value.ndim == 4 and want.ndim == 5:
            depth = want.shape[-1]
            out[key] = value.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth
        else:
            out[key] = value
    return out


def load_backbone(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    stem_key: str,
    head_prefixes: tuple[str, ...],
    in_channels: int,
    stem_rule: str = "sum",
) -> None:
    """Copies weights by name. Head keys may be missing or differ; any missing backbone key is an error."""
    own = model.state_dict()
    if stem_key in state:
        state = {**state, stem_key: adapt_stem(state[stem_key], in_channels, stem_rule)}
    usable, skipped = {}, []
    for key, value in state.items():
        if key.startswith(head_prefixes):
            continue
        if key not in own:
            skipped.append(key)
            continue
        if own[key].shape != value.shape:
            raise WeightsError(f"pretrained {key} has shape {tuple(value.shape)}, network expects {tuple(own[key].shape)}: wrong architecture for these weights")
        usable[key] = value
    missing = [k for k in own if k not in usable and not k.startswith(head_prefixes) and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"pretrained weights lack {len(missing)} backbone tensors (e.g. {missing[0]}); they are for another architecture")
    if skipped:
        logger.info("ignored %d unexpected pretrained tensors (e.g. %s)", len(skipped), skipped[0])
    model.load_state_dict(usable, strict=False)
