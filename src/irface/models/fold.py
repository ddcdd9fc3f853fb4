"""Fold eval-mode BatchNorm into the neighbouring conv / linear layers for export and inference.

An IResNet has four BNs per block and three around the output. Three per block sit right after a
conv (stem `bn1`, block `bn2` and `bn3`, the shortcut's BN) and fold exactly into that conv's weights
and a new bias. The "E" block's `bn2` (before flatten) and `features` (after the FC) fold into the FC.
Each block's `bn1` comes before a zero-padded conv: folding its shift into that conv would change
the values at the padded border. `fold_batchnorm(model, leading=True)` folds it all the same, exactly:
bn1(x) = a * (x - p) with p = -b / a, so conv1(pad(bn1(x))) = conv1_a(pad(x - p)) with conv1's
weights scaled by a. The residual stream is then carried shifted (x - p) from block to block: each
block's output conv absorbs the difference between its own shift and the next block's (a 1x1
shortcut conv absorbs its image of the shift), one subtraction after the stem sets the first shift,
and the last block hands on the unshifted stream. A block whose BN has a near-zero scale (a huge
shift would cost precision) keeps its bn1 and an unshifted stream.

MobileFaceNet and ViT have every BN right after a conv or linear layer in one `nn.Sequential`
(arcface_torch's ConvBlock / LinearBlock, the GDC block, the ViT's `feature` head): each such pair
folds exactly (`fold_sequential_pairs`); they have no leading BN, so `leading` changes nothing there.

The folded copy keeps the module tree (folded BNs become `nn.Identity`), so the model's `forward` runs
unchanged; the original model is not touched. Its state dict is NOT the common layout: export `.pth`
and safetensors from the unfolded model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from irface.models.iresnet import IBasicBlock, IResNet


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with bn(x) == a * x + b per channel, in float64 for an exact fold."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - mean * a


def _fold_into(fused: nn.Module, layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """`fused` (a layer shaped as `layer`, with a bias) set to `bn(layer(x))`: each output channel's weights
    and bias scaled by the BN's a, shifted by its b (in float64, then the layer's dtype)."""
    a, b = _bn_scale_shift(bn)
    dtype = layer.weight.dtype
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(a)
    with torch.no_grad():
        fused.weight.copy_((layer.weight.double() * a.view(-1, *[1] * (layer.weight.dim() - 1))).to(dtype))
        fused.bias.copy_((bias * a + b).to(dtype))
    return fused.to(layer.weight.device)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to `bn(conv(x))` in eval mode."""
    return _fold_into(nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode), conv, bn)


def fold_linear_bn(fc: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A Linear with bias equal to `bn(fc(x))` in eval mode."""
    return _fold_into(nn.Linear(fc.in_features, fc.out_features, bias=True), fc, bn)


def fold_sequential_pairs(model: nn.Module) -> int:
    """Fold, in place, every BN that directly follows a Conv2d / Linear in an `nn.Sequential`; returns how many."""
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i in range(len(children) - 1):
            layer, bn = children[i], children[i + 1]
            if isinstance(layer, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
                seq[i], seq[i + 1] = fold_conv_bn(layer, bn), nn.Identity()
            elif isinstance(layer, nn.Linear) and type(bn) is nn.BatchNorm1d:
                seq[i], seq[i + 1] = fold_linear_bn(layer, bn), nn.Identity()
            else:
                continue
            children = list(seq)
            folded += 1
    return folded


def fold_output_block(bn_in: nn.BatchNorm2d, fc: nn.Linear, bn_out: nn.BatchNorm1d) -> nn.Linear:
    """A Linear equal to `bn_out(fc(flatten(bn_in(x))))` in eval mode (dropout is the identity then)."""
    a_in, b_in = _bn_scale_shift(bn_in)
    a_out, b_out = _bn_scale_shift(bn_out)
    spatial = fc.in_features // a_in.numel()
    # flatten is channel-major: feature k belongs to channel k // (H * W).
    a_in, b_in = a_in.repeat_interleave(spatial), b_in.repeat_interleave(spatial)
    w = fc.weight.double()
    bias = fc.bias.double() if fc.bias is not None else torch.zeros(fc.out_features, dtype=torch.float64)
    w_in = w * a_in.view(1, -1)
    bias_in = bias + w @ b_in
    fused = nn.Linear(fc.in_features, fc.out_features, bias=True)
    dtype = fc.weight.dtype
    with torch.no_grad():
        fused.weight.copy_((w_in * a_out.view(-1, 1)).to(dtype))
        fused.bias.copy_((bias_in * a_out + b_out).to(dtype))
    return fused.to(fc.weight.device)


# Leading BNs whose scale or shift lie outside these bounds are kept (see the module doc).
MIN_LEADING_SCALE = 1e-4
MAX_LEADING_SHIFT = 1e3


class ChannelShift(nn.Module):
    """x - shift, per channel: sets the residual stream's carried shift after the stem."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.shift


def _leading_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, p) with bn(x) == a * (x - p), or None where that form would lose precision."""
    a, b = _bn_scale_shift(bn)
    if a.abs().min() < MIN_LEADING_SCALE:
        return None
    p = -b / a
    return (a, p) if p.abs().max() <= MAX_LEADING_SHIFT else None


@torch.no_grad()
def _fold_leading(original: IResNet, model: IResNet) -> None:
    """Fold every block's bn1 of `model` (already folded elsewhere) by carrying a shifted stream."""
    blocks = [b for stage in model.stages for b in stage]
    shifts = [_leading_shift(b.bn1) for stage in original.stages for b in stage]
    zeros = [torch.zeros(b.conv1.in_channels, dtype=torch.float64) for b in blocks]
    carried = [s[1] if s is not None else z for s, z in zip(shifts, zeros)]  # stream entering block k is x - carried[k]
    for k, (block, shift) in enumerate(zip(blocks, shifts)):
        if shift is not None:
            a = shift[0].to(block.conv1.weight.device)
            block.conv1.weight.copy_((block.conv1.weight.double() * a.view(1, -1, 1, 1)).to(block.conv1.weight.dtype))
            block.bn1 = nn.Identity()
        incoming = carried[k].to(block.conv2.weight.device)
        outgoing = (carried[k + 1] if k + 1 < len(blocks) else torch.zeros(block.conv2.out_channels,
                                                                           dtype=torch.float64)).to(incoming.device)
        if block.downsample is not None:
            # The 1x1 shortcut conv (no padding) maps the constant shift to a constant per output channel.
            shortcut = block.downsample[0].weight.double().sum(dim=(2, 3)) @ incoming
        else:
            shortcut = incoming
        bias = block.conv2.bias
        bias.copy_((bias.double() + shortcut - outgoing).to(bias.dtype))
    if shifts[0] is not None:
        model.prelu = nn.Sequential(model.prelu, ChannelShift(carried[0].to(model.conv1.weight.dtype)))


def fold_batchnorm(model: nn.Module, leading: bool = False) -> nn.Module:
    """An eval-mode copy of `model` with every foldable BatchNorm folded away (see the module doc).

    `leading=True` folds an IResNet's leading BNs too (the shifted residual stream).
    """
    original = model
    model = copy.deepcopy(model).eval()
    if not isinstance(model, IResNet):
        fold_sequential_pairs(model)
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    model.conv1 = fold_conv_bn(model.conv1, model.bn1)
    model.bn1 = nn.Identity()
    for stage in model.stages:
        for block in stage:
            assert isinstance(block, IBasicBlock)
            block.conv1 = fold_conv_bn(block.conv1, block.bn2)
            block.bn2 = nn.Identity()
            block.conv2 = fold_conv_bn(block.conv2, block.bn3)
            block.bn3 = nn.Identity()
            if block.downsample is not None:
                conv, bn = block.downsample[0], block.downsample[1]
                block.downsample = nn.Sequential(fold_conv_bn(conv, bn))
    model.fc = fold_output_block(model.bn2, model.fc, model.features)
    model.bn2 = nn.Identity()
    model.features = nn.Identity()
    model.dropout = nn.Identity()
    if leading:
        _fold_leading(original, model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
