"""Classification heads that turn embeddings and labels into the mean cross-entropy.

Every margin head computes cos(theta) = <x/|x|, w/|w|> for all class centres, replaces the target
class's logit by a margin function of it, multiplies by the scale s and applies cross-entropy.
`target_logit(cos)` is the only part that differs between heads, so Partial FC (which computes the
cosines shard by shard) reuses it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """Linear(embedding -> classes, with bias) + plain cross-entropy: what the seed's train.py trains.

    The seed's text promises ArcFace, but its script applies SoftmaxCrossEntropyWithLogits to a plain
    Dense(512 -> 85742, has_bias=True); its published accuracies come from this head.
    """

    margin_free = True

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        linear = nn.Linear(embedding_size, num_classes, bias=True)
        self.weight = linear.weight
        self.bias = linear.bias

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(embeddings, self.weight, self.bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings).float(), labels)


class MarginHead(nn.Module):
    """Base of the normalised heads: class centres in `weight` (num_classes x embedding_size)."""

    margin_free = False

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0):
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The target class's cosine with the margin applied (before scaling)."""
        raise NotImplementedError

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        # At least float32 even under autocast: the margin functions are sensitive near |cos| = 1.
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        cos = F.linear(F.normalize(embeddings.to(dtype)), F.normalize(self.weight.to(dtype)))
        return cos.clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings)
        index = torch.arange(cos.shape[0], device=cos.device)
        target = self.target_logit(cos[index, labels])
        cos = cos.index_put((index, labels), target)
        return cos * self.s

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)


class ArcFaceHead(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target logit s * cos(theta + m), s = 64, m = 0.5.

    Where theta + m would pass pi, cos(theta + m) stops decreasing in theta; as in the reference
    implementation the target logit then becomes cos(theta) - m * sin(m) (the "th / mm" treatment),
    which keeps it monotone. The gradient is the real one of this function (computed through
    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)).
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)  # theta + m < pi  <=>  cos(theta) > cos(pi - m)
        self.mm = math.sin(math.pi - m) * m

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        cos_theta_m = cos * self.cos_m - sin * self.sin_m
        return torch.where(cos > self.th, cos_theta_m, cos - self.mm)


class CosFaceHead(MarginHead):
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018): target logit s * (cos(theta) - m), s = 64, m = 0.4."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4):
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m


class CombinedMarginHead(MarginHead):
    """The combined margin of the ArcFace paper: target logit s * (cos(m1 * theta + m2) - m3).

    m1 = 1, m2 = 0.5, m3 = 0 is ArcFace; m1 = 1, m2 = 0, m3 = 0.4 is CosFace; m1 > 1 is SphereFace-style.
    Where m1 * theta + m2 would pass pi the target logit becomes cos(theta) - m3 - m2 * sin(m2), the
    generalisation of ArcFace's treatment (identical to `ArcFaceHead` when m1 = 1, m3 = 0). theta is
    taken through acos (clamped a hair inside [-1, 1] so its gradient stays finite) whenever m1 != 1.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__(embedding_size, num_classes, s)
        if m1 <= 0:
            raise ValueError(f"combined head: m1 must be positive, got {m1}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.mm = math.sin(m2) * m2

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0:
            # Same closed form as ArcFace: no acos, exact gradient.
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
            margin_cos = cos * math.cos(self.m2) - sin * math.sin(self.m2)
            valid = cos > math.cos(math.pi - self.m2)
        else:
            theta = torch.acos(cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            angle = self.m1 * theta + self.m2
            margin_cos = torch.cos(angle)
            valid = angle < math.pi
        return torch.where(valid, margin_cos, cos - self.mm) - self.m3
