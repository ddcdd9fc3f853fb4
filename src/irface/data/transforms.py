"""The one definition of the input normalisation (RGB, (x / 255 - 0.5) / 0.5, 112 x 112) and of the forward
of uint8 images through a model."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from irface.device import autocast

INPUT_SIZE = 112
MEAN = 127.5  # (x / 255 - 0.5) / 0.5 == (x - 127.5) / 127.5
STD = 127.5


Channels = float | tuple[float, float, float]


def normalize(images: torch.Tensor, mean: Channels = MEAN, std: Channels = STD) -> torch.Tensor:
    """uint8 (N, 3, H, W) or float in [0, 255] -> float32 (x - mean) / std, irface's own [-1, 1] by default;
    `mean` / `std` per channel (pixel units) for foreign models. Runs on whatever device `images` is on."""
    if not isinstance(mean, (int, float)):
        mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    if not isinstance(std, (int, float)):
        std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def to_nchw_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB array -> uint8 (N, 3, H, W) tensor (no copy of the pixels to float)."""
    # Copied only when needed: torch.from_numpy warns on read-only arrays (crops Pillow decoded).
    return torch.from_numpy(np.require(images, requirements=("C", "W"))).permute(0, 3, 1, 2)


def embed_images(model: torch.nn.Module, images: np.ndarray, device: torch.device,
                 dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                 mean: Channels = MEAN, std: Channels = STD, bgr: bool = False) -> np.ndarray:
    """The one forward of uint8 (N, H, W, 3) RGB images: normalise on `device` (irface's own by default;
    `mean`, `std`, `bgr` for a foreign model), NHWC if `channels_last`, autocast to `dtype` (None: fp32),
    inference mode; float32 (N, E) embeddings back on the CPU."""
    if bgr:
        images = images[..., ::-1]
    x = normalize(to_nchw_tensor(images).to(device, non_blocking=True), mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(dtype, device):
        out = model(x)
    return out.float().cpu().numpy()
