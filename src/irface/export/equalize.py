"""Activation equalisation before int8: per-channel ranges moved from a conv's input into its weights.

int8 gives each activation tensor ONE scale (per-tensor), so a conv input whose channels span very
different ranges loses the small channels to the grid step of the largest. Where the op that produces
the input is a per-channel affine map (a BatchNorm, or a conv's output channels) and what lies between
is positively homogeneous (PReLU, Max(x, a x)), the channels can be rescaled exactly:
`next(f(x) / s) * s == next(f(x))` once `next`'s input channel c is multiplied by s_c. In an IResNet
block both convs qualify: `conv1` reads `bn1(x)` (its zero padding stays zero under a scale), and
`conv2` reads `prelu(conv1'(x))` with `conv1'` the conv and its folded BN.

The scale follows SmoothQuant (Xiao et al., 2023): s_c = amax(x_c)^alpha / amax(W[:, c])^(1 - alpha),
balancing the activation's range against the weights' (weights are quantised per output channel, so
growing one input channel's weights costs them some precision). In float the equalised model computes
the same function up to rounding; only the int8 grid sees the difference.

Not part of the shipped int8 forms (`Int8Form.equalize_alpha` is None): on three demo models alpha 0.5
lowered int8's error by cosine (1 - cosine 1.6-1.8e-4 -> 1.3-1.6e-4) but the decisions it
changed went wrong more often than without it. `benchmarks/int8_accuracy.py --forms qdq qdq/eq` reruns
the comparison (benchmarks/README.md, "int8 accuracy").
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from irface.models.iresnet import IBasicBlock

DEFAULT_ALPHA = 0.5


def _channel_absmax(model: nn.Module, convs: list[nn.Conv2d], batches: Iterable[torch.Tensor]) -> dict:
    """Largest |input| per input channel of each conv over the calibration batches."""
    found: dict[nn.Module, torch.Tensor] = {}

    def record(module, inputs):
        x = inputs[0].detach().transpose(0, 1).flatten(1).abs().amax(1).double()
        found[module] = torch.maximum(found[module], x) if module in found else x

    hooks = [c.register_forward_pre_hook(record) for c in convs]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    return found


def _scale_output_channels(producer: nn.Module, inverse: torch.Tensor) -> None:
    """Multiply the per-channel affine output of a BatchNorm or a conv by `inverse` (1 / s)."""
    if isinstance(producer, nn.modules.batchnorm._BatchNorm):
        # bn(x) = gamma (x - mean) / sqrt(var + eps) + beta: scaling gamma and beta scales the output.
        producer.weight.mul_(inverse.to(producer.weight.dtype))
        producer.bias.mul_(inverse.to(producer.bias.dtype))
    elif isinstance(producer, nn.Conv2d):
        producer.weight.mul_(inverse.to(producer.weight.dtype).view(-1, 1, 1, 1))
        if producer.bias is not None:
            producer.bias.mul_(inverse.to(producer.bias.dtype))
    else:
        raise TypeError(f"cannot rescale the output channels of {type(producer).__name__}")


def _producer(block: IBasicBlock, conv: nn.Conv2d) -> nn.Module | None:
    """The per-channel affine op whose output `conv` reads (through PReLU for conv2), or None."""
    if conv is block.conv1:
        return block.bn1 if isinstance(block.bn1, nn.modules.batchnorm._BatchNorm) else None
    # conv2 reads prelu(bn2(conv1(.))); with bn2 folded away, conv1's own output channels.
    return block.bn2 if isinstance(block.bn2, nn.modules.batchnorm._BatchNorm) else block.conv1


def equalize_activations(model: nn.Module, batches: Iterable[torch.Tensor],
                         alpha: float = DEFAULT_ALPHA) -> nn.Module:
    """A copy of the eval-mode IResNet `model` (folded or not) with each block's conv inputs equalised.

    `batches`: normalised calibration inputs (N, 3, H, W), the same faces int8 calibration will see.
    A block whose leading BN was folded away (`fold_batchnorm(leading=True)`) keeps conv1 as it is.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    net = copy.deepcopy(model).eval()
    pairs = [(b, c) for b in net.modules() if isinstance(b, IBasicBlock) for c in (b.conv1, b.conv2)
             if _producer(b, c) is not None]
    if not pairs:
        return net
    absmax = _channel_absmax(net, [c for _, c in pairs], list(batches))
    with torch.no_grad():
        for block, conv in pairs:
            act = absmax[conv].clamp_min(1e-8)
            weight = conv.weight.detach().double().abs().transpose(0, 1).flatten(1).amax(1).clamp_min(1e-8)
            s = act ** alpha / weight ** (1.0 - alpha)
            # Only the ratios between channels matter to the grid; dividing by the largest keeps every
            # rescaled BN / conv output no larger than before.
            s = s / s.max()
            conv.weight.mul_(s.to(conv.weight.dtype).view(1, -1, 1, 1))
            _scale_output_channels(_producer(block, conv), 1.0 / s)
    return net
