"""Vision Transformers (`vit_t`, `vit_s`, `vit_b`, `vit_l`) with the state-dict layout of insightface
arcface_torch's `backbones/vit.py`, so its public `backbone.pth` files load with `strict=True`.

arcface_torch's face ViT: 9x9 patches of the 112x112 face (a 12x12 grid; the last 4 pixel rows and
columns are not seen), a learned position embedding and no class token; pre-norm blocks (LayerNorm,
8-head attention without qkv bias, LayerNorm, MLP with ReLU6); a final LayerNorm; then the `feature`
head: flatten every token, Linear (no bias) to the width, BatchNorm1d, Linear (no bias) to the
embedding, BatchNorm1d (both eps 2e-5). Training regularisers: stochastic depth rising linearly to
`drop_path_rate` over the blocks, and patch masking: a random `mask_ratio` of the tokens skips the
blocks and is replaced by the learned `mask_token` after the final norm. Neither runs in eval mode.

What the keys do not say and this module fixes as the reference does: 8 heads, ReLU6, LayerNorm.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from irface.models.registry import refuse_options, register_backbone, run_blocks

FEATURE_BN_EPS = 2e-5


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability p, scale the rest by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        # Fused attention (softmax(q k^T / sqrt(d)) v): flash / memory-efficient kernels on GPUs.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    def extra_flops(self, x: torch.Tensor) -> int:
        """FLOPs per image of the two token-by-token products (q k^T and attn v), not Linear layers."""
        _, n, c = x.shape
        return 2 * 2 * n * n * c


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, input_size: int, patch_size: int, dim: int):
        super().__init__()
        self.grid = input_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """arcface_torch's face ViT (see the module doc).

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, patch_size: the transformer's shape.
        embedding_size: output size (arcface_torch's `num_classes` of this module).
        input_size: side of the square input; the grid is input_size // patch_size patches a side.
        drop_rate: dropout after the position embedding, in the MLP and after the attention projection.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block (linearly from 0 at the first).
        mask_ratio: fraction of the tokens masked per image in training (0 = off; the mask token is
            then frozen, as it would get no gradient).
        grad_checkpointing: recompute each block in backward (arcface_torch's `using_checkpoint`).
    """

    def __init__(self, embed_dim: int = 512, depth: int = 12, num_heads: int = 8, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, patch_size: int = 9, embedding_size: int = 512, input_size: int = 112,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mask_ratio: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        if input_size < patch_size or depth < 1:
            raise ValueError(f"ViT needs depth >= 1 and input_size >= patch_size, got depth {depth}, "
                             f"input_size {input_size}, patch_size {patch_size}")
        for key, value in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate),
                           ("drop_path_rate", drop_path_rate), ("mask_ratio", mask_ratio)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ViT {key} must be in [0, 1), got {value}")
        self.arch = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                     "qkv_bias": qkv_bias, "patch_size": patch_size, "embedding_size": embedding_size,
                     "input_size": input_size}
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(input_size, patch_size, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # linear from 0
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r)
                                     for r in rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=FEATURE_BN_EPS),
            nn.Linear(embed_dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=FEATURE_BN_EPS),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=mask_ratio > 0)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference's: truncated normal (std 0.02) position embedding and linears, N(0, 0.02) mask token.
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a random (1 - mask_ratio) of each image's tokens; returns them and the order to undo."""
        b, n, d = x.shape
        keep = int(n * (1 - self.mask_ratio))
        order = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        restore = torch.argsort(order, dim=1)
        return torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, d)), restore

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, restore = self._mask(x)
        x = self.norm(run_blocks(self, self.blocks, x))
        if masking:
            # The masked tokens come back as the (un-normalised) mask token, in the original order.
            fill = self.mask_token.to(x.dtype).expand(x.shape[0], restore.shape[1] - x.shape[1], -1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.forward_features(x))


# arcface_torch's get_model: every size has 8 heads, 9x9 patches, MLP ratio 4. The drop-path and mask
# defaults are those of `vit_t` / `vit_s` / `vit_b`; `vit_l` exists there only as the WebFace42M
# variant `vit_l_dp005_mask_005`. The other WebFace42M variants are these sizes with
# drop_path_rate=0.05 and mask_ratio 0 (vit_t, vit_s) or 0.05 (vit_b).
SPECS: dict[str, dict[str, Any]] = {
    "vit_t": {"embed_dim": 256, "depth": 12, "drop_path_rate": 0.1, "mask_ratio": 0.1},
    "vit_s": {"embed_dim": 512, "depth": 12, "drop_path_rate": 0.1, "mask_ratio": 0.1},
    "vit_b": {"embed_dim": 512, "depth": 24, "drop_path_rate": 0.1, "mask_ratio": 0.1},
    "vit_l": {"embed_dim": 768, "depth": 24, "drop_path_rate": 0.05, "mask_ratio": 0.05},
}
_OWN_OPTIONS = ("num_heads", "mlp_ratio", "qkv_bias", "patch_size", "attn_drop_rate")


def _vit(name: str, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
         grad_checkpointing: bool = False, drop_path_rate: Optional[float] = None,
         mask_ratio: Optional[float] = None, layers: Optional[Sequence[int]] = None,
         widths: Optional[Sequence[int]] = None, **other: Any) -> VisionTransformer:
    """The named size; `layers` = [depth] and `widths` = [embed_dim] replace its shape (a ViT has one stage)."""
    own = {k: other.pop(k) for k in list(other) if k in _OWN_OPTIONS}
    refuse_options(name, other)
    spec = dict(SPECS[name])
    for key, value, option in (("depth", layers, "layers"), ("embed_dim", widths, "widths")):
        if value:
            if len(value) != 1:
                raise ValueError(f"{name} has one stage: {option} takes one value, got {list(value)}")
            spec[key] = int(value[0])
    if drop_path_rate is not None:
        spec["drop_path_rate"] = drop_path_rate
    if mask_ratio is not None:
        spec["mask_ratio"] = mask_ratio
    return VisionTransformer(**spec, **own, embedding_size=embedding_size, input_size=input_size,
                             drop_rate=dropout, grad_checkpointing=grad_checkpointing)


@register_backbone
def vit_t(**kwargs: Any) -> VisionTransformer:
    """arcface_torch `vit_t`: width 256, 12 blocks."""
    return _vit("vit_t", **kwargs)


@register_backbone
def vit_s(**kwargs: Any) -> VisionTransformer:
    """arcface_torch `vit_s`: width 512, 12 blocks."""
    return _vit("vit_s", **kwargs)


@register_backbone
def vit_b(**kwargs: Any) -> VisionTransformer:
    """arcface_torch `vit_b`: width 512, 24 blocks."""
    return _vit("vit_b", **kwargs)


@register_backbone
def vit_l(**kwargs: Any) -> VisionTransformer:
    """arcface_torch `vit_l_dp005_mask_005`: width 768, 24 blocks."""
    return _vit("vit_l", **kwargs)


def is_vit_state(state: Mapping[str, Any]) -> bool:
    return "patch_embed.proj.weight" in state and "pos_embed" in state


def vit_arch(state: Mapping[str, Any]) -> dict[str, Any]:
    """VisionTransformer constructor arguments read off an arcface_torch-layout state dict.

    The input size is not stored: any side in [grid x patch, (grid + 1) x patch) gives the same
    weights. 112 is taken when it fits (arcface_torch's only size), else grid x patch.
    """
    if "blocks.0.norm1.bn.weight" in state:
        raise KeyError("a ViT with BatchNorm token norms (norm_layer='bn'); only the LayerNorm ViTs are supported")
    dim = int(state["pos_embed"].shape[-1])
    patches = int(state["pos_embed"].shape[1])
    grid = round(patches ** 0.5)
    if grid * grid != patches:
        raise KeyError(f"pos_embed holds {patches} patches, not a square grid")
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in state:
        depth += 1
    if depth == 0:
        raise KeyError("not a ViT state dict: blocks.0.attn.qkv.weight missing")
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    return {"embed_dim": dim, "depth": depth, "num_heads": 8, "mlp_ratio": hidden / dim,
            "qkv_bias": "blocks.0.attn.qkv.bias" in state, "patch_size": patch,
            "embedding_size": int(state["feature.2.weight"].shape[0]),
            "input_size": 112 if 112 // patch == grid else grid * patch}


def vit_name(arch: Mapping[str, Any]) -> Optional[str]:
    if (arch["patch_size"], arch["mlp_ratio"], arch["num_heads"], arch["qkv_bias"]) != (9, 4.0, 8, False):
        return None
    for name, spec in SPECS.items():
        if (spec["embed_dim"], spec["depth"]) == (arch["embed_dim"], arch["depth"]):
            return name
    return None
