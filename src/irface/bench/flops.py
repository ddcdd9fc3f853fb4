"""Work per image, counted from the model's own layers: the numerator of "fraction of peak"."""

from __future__ import annotations

import torch
from torch import nn


def count_flops(model: nn.Module, input_size: int) -> float:
    """Forward FLOPs per image: 2 x the multiply-accumulates of every conv and linear layer.

    IResNet-100 at 112x112: 24.18 GFLOP. Elementwise layers (BN, PReLU, adds, softmax, norms) are left
    out, as every published figure for these networks leaves them out. Products that are not layers
    (a transformer's q k^T and attention x v) are counted by the module that computes them
    (`extra_flops(input)`, per image).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        total += 2 * out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += 2 * out[0].numel() * m.in_features

    def extra_hook(m: nn.Module, inp, out):
        nonlocal total
        total += m.extra_flops(inp[0])

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif callable(getattr(m, "extra_flops", None)):
            hooks.append(m.register_forward_hook(extra_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():  # on a "meta" model only the shapes are computed: instant
            model(torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return float(total)


def head_flops(embedding_size: int, num_classes: int, sample_rate: float = 1.0) -> float:
    """Forward FLOPs per image of a classification head over `num_classes` x `sample_rate` centres."""
    return 2.0 * embedding_size * max(1, int(num_classes * sample_rate))


def train_flops(forward_flops: float) -> float:
    """Forward + backward: the backward costs two forwards (gradients w.r.t. inputs and weights)."""
    return 3.0 * forward_flops
