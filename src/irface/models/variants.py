"""The IResNet family (depth specs only), and telling any registered family's state dict apart."""

from __future__ import annotations

import inspect
import re
from typing import Any, Mapping, Optional

from torch import nn

from irface.models.iresnet import IResNet
from irface.errors import ModelFileError
from irface.models.mobilefacenet import MobileFaceNet, is_mobilefacenet_state, mobilefacenet_arch, mobilefacenet_name
from irface.models.registry import list_backbones, refuse_options, register_backbone
from irface.models.vit import VisionTransformer, is_vit_state, vit_arch, vit_name

DEPTHS: dict[str, list[int]] = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}


def _iresnet(name: str, **kwargs: Any) -> IResNet:
    accepted = inspect.signature(IResNet).parameters
    refuse_options(name, {k: v for k, v in kwargs.items() if k not in accepted})
    kwargs.setdefault("layers", DEPTHS[name])
    return IResNet(**kwargs)


@register_backbone
def iresnet18(**kwargs: Any) -> IResNet:
    return _iresnet("iresnet18", **kwargs)


@register_backbone
def iresnet34(**kwargs: Any) -> IResNet:
    return _iresnet("iresnet34", **kwargs)


@register_backbone
def iresnet50(**kwargs: Any) -> IResNet:
    return _iresnet("iresnet50", **kwargs)


@register_backbone
def iresnet100(**kwargs: Any) -> IResNet:
    return _iresnet("iresnet100", **kwargs)


@register_backbone
def iresnet200(**kwargs: Any) -> IResNet:
    return _iresnet("iresnet200", **kwargs)


def network_for_layers(layers: list[int]) -> Optional[str]:
    """The registered name whose depth spec is `layers`, if any."""
    for name, depths in DEPTHS.items():
        if depths == list(layers):
            return name
    return None


def check_network(network: Optional[str], found: Optional[str], source: str, held: str = "") -> None:
    """A `network` asked for (None: any) must be a registered backbone, and the one found in `source`:
    `found` is its registered name (None when it has none; `held` then says what it is)."""
    if network is None:
        return
    if network not in list_backbones():
        raise ModelFileError(f"unknown network '{network}'; known: {', '.join(list_backbones())}")
    if network != found:
        raise ModelFileError(f"{source}: holds {found or held or 'an unnamed backbone'}, not {network}")


_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.conv1\.weight$")


def arch_from_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Read an IResNet's shape (depths, widths, stem, embedding, input size) off its state dict keys.

    Works for any checkpoint in the common PyTorch IResNet layout, so a bare `backbone.pth` needs no
    network name.
    """
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise KeyError("not an IResNet state dict: conv1.weight or fc.weight missing")
    blocks: dict[int, int] = {}
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            stage, idx = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), idx + 1)
    if not blocks or sorted(blocks) != list(range(1, len(blocks) + 1)):
        raise KeyError("not an IResNet state dict: layerN.M blocks missing or not contiguous")
    layers = [blocks[i] for i in range(1, len(blocks) + 1)]
    widths = [int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, len(blocks) + 1)]
    stem = int(state["conv1.weight"].shape[0])
    emb, fc_in = (int(d) for d in state["fc.weight"].shape)
    spatial = round((fc_in / widths[-1]) ** 0.5)
    if spatial * spatial * widths[-1] != fc_in:
        raise KeyError(f"fc.weight input size {fc_in} is not {widths[-1]} x a square")
    return {
        "layers": layers, "widths": widths, "stem_width": stem, "embedding_size": emb,
        "input_size": spatial * 2 ** len(layers),
    }


def identify_state_dict(state: Mapping[str, Any]) -> tuple[type[nn.Module], dict[str, Any], Optional[str]]:
    """(class, constructor arguments, registered name or None) of the backbone whose weights `state` holds.

    MobileFaceNet and ViT are told by their arcface_torch key names, anything else is read as an
    IResNet. Raises KeyError (with the reason) when the keys fit none.
    """
    if is_mobilefacenet_state(state):
        arch = mobilefacenet_arch(state)
        return MobileFaceNet, arch, mobilefacenet_name(arch)
    if is_vit_state(state):
        arch = vit_arch(state)
        return VisionTransformer, arch, vit_name(arch)
    arch = arch_from_state_dict(state)
    return IResNet, arch, network_for_layers(arch["layers"])


def backbone_from_state_dict(state: Mapping[str, Any], strict: bool = True) -> nn.Module:
    """Build the backbone whose shape matches `state` and load it."""
    cls, arch, _ = identify_state_dict(state)
    model = cls(**arch)
    model.load_state_dict(state, strict=strict)
    return model
