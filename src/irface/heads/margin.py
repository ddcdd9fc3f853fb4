"""Classification heads that turn embeddings and labels into the mean cross-entropy.

Every margin head computes cos(theta) = <x/|x|, w/|w|> for all class centres, replaces the target
class's logit by a margin function of it, multiplies by the scale s and applies cross-entropy.
What differs between heads lives in three methods that Partial FC (which computes the cosines shard
by shard) calls unchanged: `cosine_to(x, weight)` (the class cosines; sub-center heads take a maximum),
`margin_logits(cos, rows, cols, norms, distributed)` (the margin; `target_logit(cos)` for the
heads whose margin depends on the target's cosine only) and `regularizer(norms)` (a term added to
the loss, MagFace's). `norms` are the embeddings' L2 norms before normalisation.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from irface.heads.registry import register_head


def feature_norms(embeddings: torch.Tensor) -> torch.Tensor:
    """Each embedding's L2 norm before normalisation, in at least float32 (AdaFace's and MagFace's input)."""
    return embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)).norm(dim=1)


def cos_plus_margin(cos: torch.Tensor, cos_m: Any, sin_m: Any) -> torch.Tensor:
    """cos(theta + m) as cos(theta) cos(m) - sin(theta) sin(m): no acos, an exact gradient. `cos_m`,
    `sin_m`: numbers, or tensors (a margin per sample)."""
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    return cos * cos_m - sin * sin_m


@register_head("softmax")
class SoftmaxHead(nn.Module):
    """Linear(embedding -> classes, with bias) + plain cross-entropy: what the seed's train.py trains.

    The seed's text promises ArcFace, but its script applies SoftmaxCrossEntropyWithLogits to a plain
    Dense(512 -> 85742, has_bias=True); its published accuracies come from this head.

    It answers the margin heads' hooks with the identity (its "cosines" are the linear logits), so Partial
    FC shards it as any head; it takes no class sampling (`samples_classes`: see `irface.heads.partial_fc`).
    """

    s = 1.0  # the logits are not scaled
    samples_classes = False

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        linear = nn.Linear(embedding_size, num_classes, bias=True)
        self.weight = linear.weight
        self.bias = linear.bias

    def hparams(self) -> dict[str, Any]:
        return {}

    def centre_shape(self, num_classes: int) -> tuple[int, ...]:
        return (num_classes, self.embedding_size)

    def init_rows(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Initial class rows (weight or bias): nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        bound = 1.0 / self.embedding_size ** 0.5
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    def cosine_to(self, embeddings: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.linear(embeddings, weight, bias).float()

    def margin_logits(self, cos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, norms: torch.Tensor,
                      distributed: bool = False) -> torch.Tensor:
        return cos

    def regularizer(self, norms: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(embeddings, self.weight, self.bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings).float(), labels)


class MarginHead(nn.Module):
    """Base of the normalised heads: class centres in `weight` (num_classes x embedding_size)."""

    samples_classes = True  # Partial FC may drop some negative classes per step

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0):
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.weight = nn.Parameter(self.init_rows(self.centre_shape(num_classes)))

    def hparams(self) -> dict[str, Any]:
        """The keyword arguments of `create_head` that rebuild this head's margin: its constructor's after the
        two sizes, each kept by the head under its own name."""
        return {name: getattr(self, name) for name in list(inspect.signature(type(self)).parameters)[2:]}

    def centre_shape(self, num_classes: int) -> tuple[int, ...]:
        """Shape of the centres of `num_classes` classes (sub-center heads add a k axis)."""
        return (num_classes, self.embedding_size)

    def init_rows(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Initial centres: N(0, 0.01^2)."""
        return torch.empty(shape).normal_(0.0, 0.01, generator=generator)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The target class's cosine with the margin applied (before scaling)."""
        raise NotImplementedError

    def cosine_to(self, embeddings: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """cos(theta) between each embedding and the classes of `weight` (rows of centres; no bias)."""
        # At least float32 even under autocast: the margin functions are sensitive near |cos| = 1.
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        cos = F.linear(F.normalize(embeddings.to(dtype)), F.normalize(weight.to(dtype)))
        return cos.clamp(-1.0, 1.0)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosine_to(embeddings, self.weight)

    def margin_logits(self, cos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, norms: torch.Tensor,
                      distributed: bool = False) -> torch.Tensor:
        """`cos` (batch x classes held here) with the margin applied, before the scale.

        Sample `rows[i]`'s target class is column `cols[i]`; samples not in `rows` have their target on
        another rank (Partial FC). `norms`: every sample's embedding norm before normalisation.
        `distributed`: the batch is the global one, split by columns across ranks; heads whose margin
        uses batch statistics of the target cosines all-reduce them so every rank agrees.
        """
        return cos.index_put((rows, cols), self.target_logit(cos[rows, cols]))

    def regularizer(self, norms: torch.Tensor) -> Optional[torch.Tensor]:
        """A term added to the mean cross-entropy (None: nothing)."""
        return None

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor, norms: Optional[torch.Tensor] = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        index = torch.arange(cos.shape[0], device=cos.device)
        norms = feature_norms(embeddings) if norms is None else norms
        return self.margin_logits(cos, index, labels, norms) * self.s

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        norms = feature_norms(embeddings)
        loss = F.cross_entropy(self.logits(embeddings, labels, norms), labels)
        reg = self.regularizer(norms)
        return loss if reg is None else loss + reg


@register_head("arcface")
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
        return torch.where(cos > self.th, cos_plus_margin(cos, self.cos_m, self.sin_m), cos - self.mm)


@register_head("cosface")
class CosFaceHead(MarginHead):
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018): target logit s * (cos(theta) - m), s = 64, m = 0.4."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4):
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m


@register_head("combined")
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
            margin_cos = cos_plus_margin(cos, math.cos(self.m2), math.sin(self.m2))
            valid = cos > math.cos(math.pi - self.m2)
        else:
            theta = torch.acos(cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            angle = self.m1 * theta + self.m2
            margin_cos = torch.cos(angle)
            valid = angle < math.pi
        return torch.where(valid, margin_cos, cos - self.mm) - self.m3
