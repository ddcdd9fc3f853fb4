"""A small explicit registry of backbones: one function per variant, names checked on the way in and out."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"backbone '{name}' is already registered")
    _REGISTRY[name] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (len(n), n))


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone, e.g. `create_backbone("iresnet100", embedding_size=512)`."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone '{name}'; known: {', '.join(list_backbones())}") from None
    return fn(**kwargs)
