"""The one definition of the input normalisation: RGB, (x / 255 - 0.5) / 0.5, 112 x 112."""

from __future__ import annotations

import numpy as np
import torch

INPUT_SIZE = 112
MEAN = 127.5  # (x / 255 - 0.5) / 0.5 == (x - 127.5) / 127.5
STD = 127.5


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) or float in [0, 255] -> float32 in [-1, 1]. Runs on whatever device `images` is on."""
    return (images.float() - MEAN) / STD


def to_nchw_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB array -> uint8 (N, 3, H, W) tensor (no copy of the pixels to float)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
