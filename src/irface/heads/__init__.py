"""Heads: `create_head(kind, embedding_size=, num_classes=, **params)`; `head(emb, labels) -> loss`.

The kinds are registered by their classes (`irface.heads.registry`); `list_heads()` names them.
"""

from irface.heads.adaptive import AdaFaceHead, CurricularFaceHead, MagFaceHead, SubCenterHead, dominant_centres
from irface.heads.margin import ArcFaceHead, CombinedMarginHead, CosFaceHead, MarginHead, SoftmaxHead, feature_norms
from irface.heads.partial_fc import PartialFC, class_range, distributed_cross_entropy
from irface.heads.registry import create_head, head_class, head_kind, head_param_names, list_heads, register_head

__all__ = ["create_head", "head_class", "head_kind", "head_param_names", "list_heads", "register_head",
           "PartialFC", "class_range", "distributed_cross_entropy", "feature_norms", "SoftmaxHead", "MarginHead",
           "ArcFaceHead", "CosFaceHead", "CombinedMarginHead", "AdaFaceHead", "MagFaceHead", "SubCenterHead",
           "CurricularFaceHead", "dominant_centres"]
