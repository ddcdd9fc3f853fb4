"""Margin heads: `create_head(kind, embedding_size=, num_classes=, **params)`; `head(emb, labels) -> loss`."""

from __future__ import annotations

import inspect

from torch import nn

from irface.heads.adaptive import AdaFaceHead, CurricularFaceHead, MagFaceHead, SubCenterHead, dominant_centres
from irface.heads.margin import ArcFaceHead, CombinedMarginHead, CosFaceHead, MarginHead, SoftmaxHead, feature_norms

HEAD_KINDS = {
    "softmax": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "combined": CombinedMarginHead,
    "adaface": AdaFaceHead,
    "magface": MagFaceHead,
    "subcenter": SubCenterHead,
    "curricularface": CurricularFaceHead,
}


def head_param_names(kind: str) -> list[str]:
    """The keyword arguments head `kind` takes besides embedding_size and num_classes."""
    signature = inspect.signature(HEAD_KINDS[kind].__init__)
    return [n for n in signature.parameters if n not in ("self", "embedding_size", "num_classes")]


def create_head(kind: str, embedding_size: int, num_classes: int, **params) -> nn.Module:
    """Build a head; `params` are the head's own (s, m; s, m1, m2, m3 for `combined`; see each class).

    An unknown kind raises KeyError, a parameter the head does not take or a bad value ValueError.
    """
    try:
        cls = HEAD_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown head '{kind}'; known: {', '.join(HEAD_KINDS)}") from None
    unknown = sorted(set(params) - set(head_param_names(kind)))
    if unknown:
        raise ValueError(f"head {kind} takes no parameter {', '.join(unknown)}; "
                         f"its parameters: {', '.join(head_param_names(kind)) or 'none'}")
    try:
        return cls(embedding_size, num_classes, **params)
    except TypeError as e:  # a value of the wrong type, e.g. a string for a number
        raise ValueError(f"head {kind}: {e}") from None


from irface.heads.partial_fc import PartialFC, class_range, distributed_cross_entropy  # noqa: E402 (needs the above)

__all__ = ["create_head", "head_param_names", "HEAD_KINDS", "PartialFC", "class_range", "distributed_cross_entropy",
           "feature_norms", "SoftmaxHead", "MarginHead", "ArcFaceHead", "CosFaceHead", "CombinedMarginHead",
           "AdaFaceHead", "MagFaceHead", "SubCenterHead", "CurricularFaceHead", "dominant_centres"]
