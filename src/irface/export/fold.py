"""Fold eval-mode BatchNorm into the neighbouring conv / linear layers for export and inference.

An IResNet has four BNs per block and three around the output. Three per block sit right after a
conv (stem `bn1`, block `bn2` and `bn3`, the shortcut's BN) and fold exactly into that conv's weights
and a new bias. The "E" block's `bn2` (before flatten) and `features` (after the FC) fold into the FC.
Only each block's `bn1` stays: it comes before a zero-padded conv, and folding it would change the
values at the padded border.

The folded copy keeps the module tree (folded BNs become `nn.Identity`), so `IResNet.forward` runs
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


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to `bn(conv(x))` in eval mode."""
    a, b = _bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    dtype = conv.weight.dtype
    w = conv.weight.double() * a.view(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(a)
    with torch.no_grad():
        fused.weight.copy_(w.to(dtype))
        fused.bias.copy_((bias * a + b).to(dtype))
    return fused.to(conv.weight.device)


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


def fold_batchnorm(model: IResNet) -> IResNet:
    """An eval-mode copy of `model` with every foldable BatchNorm folded away (see the module doc)."""
    model = copy.deepcopy(model).eval()
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
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
