"""Inputs for benchmarks and accuracy proxies when no real faces or trained weights are at hand.

A randomly initialised IResNet-100 is not a realistic network: with BatchNorm at identity its
activations grow block after block, so int8 calibration ranges (and anything measured on them)
mean nothing. `calibrate_batchnorm` gives it the statistics a trained network has (every BN
normalises what it sees) by running face images through it in training mode (the synthetic
identities of `irface.data.synth.faces` when no real ones are given).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> nn.Module:
    """Set every BN's running statistics to those of `images` (normalised, NCHW); returns `model` in eval mode.

    Cumulative averages (momentum None) over all of `images`, so the result does not depend on the order.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if len(chunk) > 1:  # BN needs two samples in training mode
                model(chunk)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model
