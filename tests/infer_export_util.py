"""Helpers for the export and inference tests: tiny backbones with non-trivial BN, files, synthetic faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from irface.models import IResNet

TINY = dict(layers=[1, 1], widths=[8, 16], embedding_size=16, input_size=16)


def randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Distinct BN statistics, affine parameters and PReLU slopes: identity BNs would hide folding bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if m.weight.requires_grad:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def tiny_model(seed: int = 1) -> IResNet:
    return randomise(IResNet(**TINY), seed)


def save_state_dict(path: Path, seed: int = 1) -> IResNet:
    model = tiny_model(seed)
    torch.save(model.state_dict(), path)
    return model


def save_checkpoint(path: Path, threshold=None, seed: int = 1, cluster_threshold=None) -> IResNet:
    """An irface training checkpoint (the engine's format), optionally with a verify and a clustering threshold."""
    model = tiny_model(seed)
    ckpt = {"format": "irface-checkpoint", "backbone": model.state_dict(), "config": {"network": "iresnet"},
            "epoch": 1, "step": 10}
    if threshold is not None:
        ckpt["threshold"] = threshold
    if cluster_threshold is not None:
        ckpt["cluster_threshold"] = cluster_threshold
    torch.save(ckpt, path)
    return model


def faces(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 RGB images (blocky blobs plus noise): more face-like statistics than white noise."""
    rng = np.random.default_rng(seed)
    block = max(1, size // 4)
    small = rng.integers(0, 256, size=(n, size // block, size // block, 3)).astype(np.float32)
    big = np.kron(small, np.ones((1, block, block, 1)))
    return np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)


def write_images(folder: Path, images: np.ndarray, names: list[str]) -> list[Path]:
    paths = []
    for img, name in zip(images, names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def torch_embed(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Reference embeddings computed independently of irface.infer: (x - 127.5) / 127.5, NCHW, model()."""
    x = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model.eval()(x).numpy()
