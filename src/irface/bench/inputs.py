"""Inputs for benchmarks and accuracy proxies when no real faces or trained weights are at hand.

A randomly initialised IResNet-100 is not a realistic network: with BatchNorm at identity its
activations grow block after block, so int8 calibration ranges (and anything measured on them)
mean nothing. `calibrate_batchnorm` gives it the statistics a trained network has (every BN
normalises what it sees) by running face-like images through it in training mode, and
`synthetic_faces` makes those images: smooth, face-shaped, a few images per identity with pose-like
shifts and lighting changes, so pairs of one identity are closer than pairs of two.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _smooth_field(rng: np.random.Generator, size: int, grid: int, channels: int) -> np.ndarray:
    """A (size, size, channels) field in [-1, 1] from a coarse random grid, bilinearly upsampled."""
    coarse = rng.uniform(-1.0, 1.0, (grid, grid, channels))
    pos = np.linspace(0, grid - 1, size)
    i0 = np.floor(pos).astype(int).clip(0, grid - 2)
    f = (pos - i0)[:, None]
    rows = coarse[i0] * (1 - f)[..., None] + coarse[i0 + 1] * f[..., None]      # (size, grid, C)
    cols = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]  # (size, size, C)
    return cols


def synthetic_faces(identities: int, per_identity: int, size: int = 112, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (identities * per_identity, size, size, 3) RGB face-like images and their identity labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    images, labels = [], []
    for ident in range(identities):
        skin = rng.uniform(90, 200, 3)
        texture = _smooth_field(rng, size, 8, 3) * 25 + _smooth_field(rng, size, 24, 3) * 8
        eye_y, eye_dx, mouth_y = rng.uniform(-0.35, -0.15), rng.uniform(0.25, 0.4), rng.uniform(0.35, 0.55)
        face_w, face_h = rng.uniform(0.6, 0.8), rng.uniform(0.8, 0.95)
        background = rng.uniform(20, 235, 3)
        for _ in range(per_identity):
            dx, dy = rng.uniform(-0.06, 0.06, 2)
            x, y = xx - dx, yy - dy
            face = ((x / face_w) ** 2 + (y / face_h) ** 2) < 1.0
            img = np.where(face[..., None], skin + texture, background + texture * 0.5)
            for sx in (-1, 1):  # eyes
                eye = ((x - sx * eye_dx) / 0.09) ** 2 + ((y - eye_y) / 0.05) ** 2 < 1.0
                img[eye] = img[eye] * 0.25
            mouth = (x / 0.22) ** 2 + ((y - mouth_y) / 0.05) ** 2 < 1.0
            img[mouth] = img[mouth] * 0.55 + np.array([60.0, 0, 0])
            light = 1.0 + rng.uniform(-0.25, 0.25) + rng.uniform(-0.2, 0.2) * x  # brightness and side light
            img = img * light[..., None] + rng.normal(0, 4, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(ident)
    return np.stack(images), np.asarray(labels)


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
