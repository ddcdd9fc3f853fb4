"""Backbones (IResNet, MobileFaceNet, ViT): `create_backbone(name, **kw)` and `list_backbones()`."""

from irface.models.iresnet import IBasicBlock, IResNet
from irface.models.mobilefacenet import MobileFaceNet
from irface.models.registry import create_backbone, list_backbones, register_backbone
from irface.models.variants import (
    DEPTHS,
    arch_from_state_dict,
    backbone_from_state_dict,
    identify_state_dict,
    network_for_layers,
)
from irface.models.vit import VisionTransformer

__all__ = [
    "IBasicBlock", "IResNet", "create_backbone", "list_backbones", "register_backbone",
    "DEPTHS", "arch_from_state_dict", "backbone_from_state_dict", "network_for_layers",
    "MobileFaceNet", "VisionTransformer", "identify_state_dict",
]
