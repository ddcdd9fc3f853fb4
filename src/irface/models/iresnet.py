"""IResNet: the seed's LResNet-E-IR backbone, with the state-dict layout of existing PyTorch IResNet code.

Layout per block (`IBasicBlock`): BN, conv3x3, BN, PReLU, conv3x3 (stride here), BN, plus a shortcut
(1x1 conv with the stage's stride + BN in the first block of every stage). The "E" output block is
BN2d, flatten, dropout, Linear(C*H*W -> embedding), BatchNorm1d whose weight is frozen at 1.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from irface.models.registry import run_blocks

BN_EPS = 1e-5


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """The "IR" (improved residual) unit: BN-conv-BN-PReLU-conv-BN + shortcut, no activation after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """IResNet with the "E" output block.

    Args:
        layers: blocks per stage (iresnet100: [3, 13, 30, 3]).
        widths: channels per stage (default 64, 128, 256, 512); each stage halves the resolution.
        stem_width: channels of the stem conv (default: the first stage's width).
        embedding_size: output size (512 in the seed).
        dropout: dropout probability before the FC (0 in the seed).
        input_size: side of the square input (112); the FC's input is widths[-1] * (input_size / 2**stages)**2.
        grad_checkpointing: recompute each stage in backward to save activation memory.
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: Optional[int] = None,
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} must have the same non-zero length")
        reduction = 2 ** len(layers)
        if input_size % reduction:
            raise ValueError(f"input_size {input_size} must be divisible by {reduction} ({len(layers)} stride-2 stages)")
        self.arch = {
            "layers": list(layers), "widths": list(widths), "stem_width": stem_width or widths[0],
            "embedding_size": embedding_size, "input_size": input_size,
        }
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.grad_checkpointing = grad_checkpointing
        self.inplanes = stem_width or widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        for i, (blocks, width) in enumerate(zip(layers, widths), start=1):
            self.add_module(f"layer{i}", self._make_layer(width, blocks))
        self.num_stages = len(layers)
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        spatial = input_size // reduction
        self.fc = nn.Linear(widths[-1] * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(conv1x1(self.inplanes, planes, 2), nn.BatchNorm2d(planes, eps=BN_EPS))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # The reference PyTorch IResNet's initialisation: N(0, 0.1) convs, BN at identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # The "E" block's last BN has gamma fixed at 1: it is not trained.
        self.features.weight.requires_grad_(False)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.bn2(run_blocks(self, self.stages, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.forward_features(x), 1)
        return self.features(self.fc(self.dropout(x)))
