"""A small explicit registry of backbones: one function per variant, names checked on the way in and out;
and what every registered backbone shares at run time (`run_blocks`)."""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"backbone '{name}' is already registered")
    _REGISTRY[name] = fn
    return fn


def _natural(name: str) -> tuple:
    """`iresnet18` before `iresnet100`: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def list_backbones() -> list[str]:
    return sorted(_REGISTRY, key=_natural)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone, e.g. `create_backbone("iresnet100", embedding_size=512)`."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone '{name}'; known: {', '.join(list_backbones())}") from None
    return fn(**kwargs)


def refuse_options(network: str, options: Mapping[str, Any]) -> None:
    """One clear error for options a backbone does not have (rather than a TypeError deep inside)."""
    if options:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"{network} does not take {given}")


def run_blocks(model: nn.Module, blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """`x` through `blocks` in turn; with `model.grad_checkpointing`, while training with gradients, each
    block's activations are recomputed in backward instead of kept (less memory, one more forward)."""
    recompute = model.grad_checkpointing and model.training and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
    return x
