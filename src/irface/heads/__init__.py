"""Margin heads: `create_head(kind, embedding_size=, num_classes=, **params)`; `head(emb, labels) -> loss`."""

from __future__ import annotations

from torch import nn

from irface.heads.margin import ArcFaceHead, CombinedMarginHead, CosFaceHead, MarginHead, SoftmaxHead

HEAD_KINDS = {
    "softmax": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "combined": CombinedMarginHead,
}


def create_head(kind: str, embedding_size: int, num_classes: int, **params) -> nn.Module:
    """Build a head; `params` are the head's own (s, m; s, m1, m2, m3 for `combined`)."""
    try:
        cls = HEAD_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown head '{kind}'; known: {', '.join(HEAD_KINDS)}") from None
    return cls(embedding_size, num_classes, **params)


from irface.heads.partial_fc import PartialFC, class_range, distributed_cross_entropy  # noqa: E402 (needs the above)

__all__ = ["create_head", "HEAD_KINDS", "PartialFC", "class_range", "distributed_cross_entropy", "SoftmaxHead", "MarginHead", "ArcFaceHead", "CosFaceHead", "CombinedMarginHead"]
