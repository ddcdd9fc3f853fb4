"""The heads' registry, as `irface.models.registry` is the backbones': `@register_head(kind)` on each class."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_head(kind: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if kind in _REGISTRY:
            raise ValueError(f"head '{kind}' is already registered")
        _REGISTRY[kind] = cls
        return cls

    return add


def list_heads() -> list[str]:
    return list(_REGISTRY)


def head_class(kind: str) -> type[nn.Module]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown head '{kind}'; known: {', '.join(_REGISTRY)}") from None


def head_kind(head: nn.Module) -> str:
    """The kind `head` was registered under (its exact class: a subclass is not its parent's kind)."""
    for kind, cls in _REGISTRY.items():
        if type(head) is cls:
            return kind
    raise TypeError(f"{type(head).__name__} is not a registered head")


def head_param_names(kind: str) -> list[str]:
    """The keyword arguments head `kind` takes besides embedding_size and num_classes."""
    signature = inspect.signature(head_class(kind).__init__)
    return [n for n in signature.parameters if n not in ("self", "embedding_size", "num_classes")]


def create_head(kind: str, embedding_size: int, num_classes: int, **params) -> nn.Module:
    """Build a head; `params` are the head's own (s, m; s, m1, m2, m3 for `combined`; see each class).

    An unknown kind raises KeyError, a parameter the head does not take or a bad value ValueError.
    """
    cls = head_class(kind)
    unknown = sorted(set(params) - set(head_param_names(kind)))
    if unknown:
        raise ValueError(f"head {kind} takes no parameter {', '.join(unknown)}; "
                         f"its parameters: {', '.join(head_param_names(kind)) or 'none'}")
    try:
        return cls(embedding_size, num_classes, **params)
    except TypeError as e:  # a value of the wrong type, e.g. a string for a number
        raise ValueError(f"head {kind}: {e}") from None
