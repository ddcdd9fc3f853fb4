"""MobileFaceNet (`mbf`, `mbf_large`) with the state-dict layout of insightface arcface_torch's
`backbones/mobilefacenet.py`, so its public `backbone.pth` files load with `strict=True`.

Layout (arcface_torch's names): `layers` holds the stem conv (stride 2), a second 3x3 conv (or a
stack of residual units when blocks[0] > 1), then three (downsampling unit, residual stack) pairs;
`conv_sep` is a 1x1 conv to 512 channels and `features` the GDC output block: a depthwise conv over
the whole 7x7 map, flatten, Linear (no bias), BatchNorm1d. A unit ("DepthWise" there) is 1x1 conv
(expand) - depthwise 3x3 - 1x1 conv (project, no PReLU), with a shortcut in the residual stacks.
The expansion widths (128, 256, 512) are fixed by the reference whatever the width scale.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from irface.models.registry import refuse_options, register_backbone, run_blocks


class ConvUnit(nn.Module):
    """Conv (no bias) + BN, + PReLU unless `linear` (arcface_torch's ConvBlock / LinearBlock)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 linear: bool = False):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout)]
        if not linear:
            mods.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthwiseUnit(nn.Module):
    """1x1 expand to `mid`, depthwise 3x3 (stride here), 1x1 project; shortcut when `residual`."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvUnit(cin, mid),
            ConvUnit(mid, mid, 3, stride, 1, groups=mid),
            ConvUnit(mid, cout, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    def __init__(self, channels: int, blocks: int, mid: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthwiseUnit(channels, channels, mid, residual=True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv over the final map, then Linear + BatchNorm1d to the embedding."""

    def __init__(self, embedding_size: int, spatial: int, channels: int = 512):
        super().__init__()
        self.layers = nn.Sequential(
            ConvUnit(channels, channels, spatial, groups=channels, linear=True),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet as arcface_torch builds it.

    Args:
        blocks: residual units per stack (mbf: 1, 4, 6, 2; mbf_large: 2, 8, 12, 4); blocks[0] == 1
            means a single grouped 3x3 conv instead of a stack, as in the reference.
        scale: width multiplier of the trunk (64 x scale and 128 x scale channels; mbf 2, mbf_large 4).
        embedding_size: output size (arcface_torch's `num_features`).
        input_size: side of the square input, a multiple of 16 (four stride-2 steps); the GDC kernel
            covers the whole final map (7x7 at 112).
        grad_checkpointing: recompute each entry of `layers` in backward to save activation memory.
    """

    def __init__(self, blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2, embedding_size: int = 512,
                 input_size: int = 112, grad_checkpointing: bool = False):
        super().__init__()
        blocks = [int(b) for b in blocks]
        if len(blocks) != 4 or any(b < 0 for b in blocks):
            raise ValueError(f"MobileFaceNet needs four non-negative block counts, got {blocks}")
        if scale < 1:
            raise ValueError(f"MobileFaceNet width scale must be >= 1, got {scale}")
        if input_size % 16 or input_size <= 0:
            raise ValueError(f"input_size {input_size} must be a positive multiple of 16 (four stride-2 steps)")
        self.arch = {"blocks": blocks, "scale": int(scale), "embedding_size": embedding_size, "input_size": input_size}
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.grad_checkpointing = grad_checkpointing
        c1, c2 = 64 * scale, 128 * scale
        second: nn.Module = (ConvUnit(c1, c1, 3, 1, 1, groups=64) if blocks[0] == 1
                             else ResidualStack(c1, blocks[0], 128))
        self.layers = nn.ModuleList([
            ConvUnit(3, c1, 3, 2, 1),
            second,
            DepthwiseUnit(c1, c1, 128, stride=2),
            ResidualStack(c1, blocks[1], 128),
            DepthwiseUnit(c1, c2, 256, stride=2),
            ResidualStack(c2, blocks[2], 256),
            DepthwiseUnit(c2, c2, 512, stride=2),
            ResidualStack(c2, blocks[3], 256),
        ])
        self.conv_sep = ConvUnit(c2, 512)
        self.features = GDC(embedding_size, input_size // 16)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference's: Kaiming normal (fan_out) convs and linears, BN at identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv_sep(run_blocks(self, self.layers, x)))


SPECS: dict[str, dict[str, Any]] = {
    "mbf": {"blocks": [1, 4, 6, 2], "scale": 2},
    "mbf_large": {"blocks": [2, 8, 12, 4], "scale": 4},
}


def _mbf(name: str, embedding_size: int = 512, input_size: int = 112, layers: Optional[Sequence[int]] = None,
         dropout: float = 0.0, grad_checkpointing: bool = False, **other: Any) -> MobileFaceNet:
    refuse_options(name, other)
    if dropout:
        raise ValueError(f"{name} has no dropout layer (the reference has none); dropout={dropout} must be 0")
    spec = dict(SPECS[name])
    if layers:
        spec["blocks"] = list(layers)
    return MobileFaceNet(**spec, embedding_size=embedding_size, input_size=input_size,
                         grad_checkpointing=grad_checkpointing)


@register_backbone
def mbf(**kwargs: Any) -> MobileFaceNet:
    """arcface_torch `get_model("mbf")`: blocks (1, 4, 6, 2), scale 2."""
    return _mbf("mbf", **kwargs)


@register_backbone
def mbf_large(**kwargs: Any) -> MobileFaceNet:
    """arcface_torch `get_model("mbf_large")`: blocks (2, 8, 12, 4), scale 4."""
    return _mbf("mbf_large", **kwargs)


def _count(state: Mapping[str, Any], prefix: str) -> int:
    """Residual units in the stack at `prefix` (keys `prefix.layers.N.layers.0.layers.0.weight`)."""
    n = 0
    while f"{prefix}.layers.{n}.layers.0.layers.0.weight" in state:
        n += 1
    return n


def is_mobilefacenet_state(state: Mapping[str, Any]) -> bool:
    return "conv_sep.layers.0.weight" in state and "features.layers.2.weight" in state


def mobilefacenet_arch(state: Mapping[str, Any]) -> dict[str, Any]:
    """MobileFaceNet constructor arguments read off an arcface_torch-layout state dict."""
    stem = state["layers.0.layers.0.weight"]
    if stem.shape[0] % 64:
        raise KeyError(f"not a MobileFaceNet: stem conv has {stem.shape[0]} channels, not a multiple of 64")
    first = 1 if "layers.1.layers.0.weight" in state else _count(state, "layers.1")
    blocks = [first] + [_count(state, f"layers.{i}") for i in (3, 5, 7)]
    return {"blocks": blocks, "scale": int(stem.shape[0]) // 64,
            "embedding_size": int(state["features.layers.2.weight"].shape[0]),
            "input_size": int(state["features.layers.0.layers.0.weight"].shape[-1]) * 16}


def mobilefacenet_name(arch: Mapping[str, Any]) -> Optional[str]:
    for name, spec in SPECS.items():
        if spec["blocks"] == list(arch["blocks"]) and spec["scale"] == arch["scale"]:
            return name
    return None
