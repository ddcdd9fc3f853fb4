"""Margin heads that adapt to the sample: AdaFace, MagFace, sub-center ArcFace, CurricularFace.

Each plugs into the `MarginHead` hooks (see `irface.heads.margin`), so Partial FC shards and samples
them like the plain margin heads. The formulas follow the papers and their reference code; where the
reference special-cases something (clipping, the theta + m > pi branch), the docstring says how.

Batch statistics (AdaFace's norm EMA, CurricularFace's t) are buffers: they travel with the head's
state into checkpoints and back on resume, and are updated only in training mode. Under Partial FC
every rank sees the whole global batch (its embeddings are all-gathered), so AdaFace's statistics
are computed from the same numbers on every rank; CurricularFace's t needs every sample's target
cosine, of which each rank holds only its own classes', so those are all-reduced first (as TFace's
distributed CurricularFace does). Either way, the state is identical on every rank.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from irface import dist
from irface.heads.margin import ArcFaceHead, MarginHead, cos_plus_margin
from irface.heads.registry import register_head


def _check(kind: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{kind} head: {what}")


@register_head("adaface")
class AdaFaceHead(MarginHead):
    """AdaFace (Kim, Jain and Liu, CVPR 2022): the margin follows image quality, read from the norm.

    With z = clip(h (|x| - mu) / (sigma + eps), -1, 1), where |x| is the embedding's norm before
    normalisation (clipped to [0.001, 100], no gradient) and mu, sigma the EMA of the batch's norm mean
    and standard deviation (rate t_alpha, buffers `batch_mean` / `batch_std`, starting at 20 / 100 as
    the reference), the target logit is s * (cos(clip(theta - m z, eps, pi - eps)) - (m + m z)): high
    quality (z > 0) gets an angular margin, low quality a smaller additive one. eps = 1e-3; every
    cosine is clamped to [-1 + eps, 1 - eps] first, as the reference does.
    Defaults are the paper's: s = 64, m = 0.4, h = 0.333 (mk-minchul/AdaFace's training scripts pass
    `--m 0.4 --h 0.333`; its config.py's own defaults differ), t_alpha = 0.01 (config.py).
    A batch of one sample leaves `batch_std` as it is (its standard deviation is undefined).
    """

    eps = 1e-3

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333,
                 t_alpha: float = 0.01):
        super().__init__(embedding_size, num_classes, s)
        _check("adaface", 0.0 < t_alpha <= 1.0, f"t_alpha must be in (0, 1], got {t_alpha}")
        _check("adaface", h >= 0.0, f"h must not be negative, got {h}")
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """z of each sample, after updating the EMA with this batch (as the reference, in training only)."""
        safe = norms.detach().clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                a = self.t_alpha
                self.batch_mean.mul_(1.0 - a).add_(a * safe.mean())
                if safe.numel() > 1:
                    self.batch_std.mul_(1.0 - a).add_(a * safe.std())
        z = (safe - self.batch_mean) / (self.batch_std + self.eps) * self.h
        return z.clamp(-1.0, 1.0)

    def margin_logits(self, cos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, norms: torch.Tensor,
                      distributed: bool = False) -> torch.Tensor:
        cos = cos.clamp(-1.0 + self.eps, 1.0 - self.eps)
        z = self.margin_scaler(norms)[rows]
        theta = torch.acos(cos[rows, cols])
        angle = (theta - self.m * z).clamp(self.eps, math.pi - self.eps)
        return cos.index_put((rows, cols), torch.cos(angle) - (self.m + self.m * z))


@register_head("magface")
class MagFaceHead(MarginHead):
    """MagFace (Meng et al., CVPR 2021): an ArcFace margin that grows with the feature's magnitude.

    a = clip(|x|, l_a, u_a) (the norm before normalisation; its gradient flows), margin
    m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m, target logit s * cos(theta + m(a)), and the
    loss adds lambda_g * mean(g(a)) with g(a) = a / u_a^2 + 1 / a, which pulls magnitudes up so
    that a high norm means an easy, high-quality face. `easy_margin=True` (the reference's default,
    IrvingMeng/MagFace `MagLinear`) applies the margin only where cos(theta) > 0; False uses ArcFace's
    treatment past theta + m(a) = pi per sample. Defaults are the paper's MS1MV2 recipe: s = 64,
    l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35.

    Norms below l_a get no gradient from either term: backbones that end in BatchNorm give norms near
    sqrt(embedding_size) at the start (about 22 at 512-d), so small embeddings need smaller l_a / u_a.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0,
                 l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True):
        super().__init__(embedding_size, num_classes, s)
        _check("magface", 0.0 < l_a < u_a, f"needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        _check("magface", 0.0 <= l_m <= u_m, f"needs 0 <= l_m <= u_m, got l_m={l_m}, u_m={u_m}")
        _check("magface", lambda_g >= 0.0, f"lambda_g must not be negative, got {lambda_g}")
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g, self.easy_margin = float(lambda_g), bool(easy_margin)

    def margin_of(self, norms: torch.Tensor) -> torch.Tensor:
        a = norms.clamp(self.l_a, self.u_a)
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def margin_logits(self, cos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, norms: torch.Tensor,
                      distributed: bool = False) -> torch.Tensor:
        m = self.margin_of(norms[rows])
        target = cos[rows, cols]
        margin_cos = cos_plus_margin(target, torch.cos(m), torch.sin(m))
        if self.easy_margin:
            target = torch.where(target > 0, margin_cos, target)
        else:
            target = torch.where(target > torch.cos(math.pi - m), margin_cos, target - torch.sin(math.pi - m) * m)
        return cos.index_put((rows, cols), target)

    def regularizer(self, norms: torch.Tensor) -> Optional[torch.Tensor]:
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a ** 2 + 1.0 / a).mean()


@register_head("subcenter")
class SubCenterHead(ArcFaceHead):
    """Sub-center ArcFace (Deng et al., ECCV 2020): k centres per class, the class cosine their maximum.

    A noisy sample can settle on a non-dominant sub-centre instead of pulling the class's main one.
    The margin on top is ArcFace's (`base="arcface"`, m = 0.5 by default) or CosFace's (`"cosface"`,
    m = 0.4). Centres are `weight[class, j]`, shape (num_classes, k, embedding_size). Defaults are the
    paper's: k = 3, s = 64, m = 0.5. `dominant_centres` does the method's second stage (one centre per
    class, the noisy samples flagged) once training is done.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: Optional[float] = None,
                 k: int = 3, base: str = "arcface"):
        _check("subcenter", base in ("arcface", "cosface"), f"base must be arcface or cosface, got {base!r}")
        _check("subcenter", int(k) == k and k >= 1, f"k must be a positive integer, got {k}")
        self.k, self.base = int(k), base
        super().__init__(embedding_size, num_classes, s, (0.5 if base == "arcface" else 0.4) if m is None else m)

    def centre_shape(self, num_classes: int) -> tuple[int, ...]:
        return (num_classes, self.k, self.embedding_size)

    def cosine_to(self, embeddings: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Every sub-centre is a row of the plain head's cosine; a class scores its nearest one.
        cos = super().cosine_to(embeddings, weight.reshape(-1, self.embedding_size))
        return cos.view(cos.shape[0], -1, self.k).amax(dim=2)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m if self.base == "cosface" else super().target_logit(cos)


@torch.no_grad()
def dominant_centres(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                     max_angle_deg: float = 75.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The second stage of sub-center ArcFace: keep each class's dominant sub-centre, flag the noise.

    `weight` (num_classes, k, E) from a trained `SubCenterHead`; `embeddings`, `labels` of the training
    set. Each sample votes for the nearest sub-centre of its class; the most voted is the class's
    dominant centre. Returns the (num_classes, E) dominant centres (to start a one-centre ArcFace) and a
    boolean mask of the samples to keep: those within `max_angle_deg` of their class's dominant centre
    (the paper drops the rest as label noise, at 75 degrees).
    """
    centres = F.normalize(weight.float(), dim=-1)
    x = F.normalize(embeddings.float())
    cos = torch.einsum("ne,nke->nk", x, centres[labels])
    votes = torch.zeros(weight.shape[0], weight.shape[1])
    votes.index_put_((labels.cpu(), cos.argmax(1).cpu()), torch.ones(len(labels)), accumulate=True)
    dominant = votes.argmax(1).to(weight.device)
    chosen = weight[torch.arange(weight.shape[0], device=weight.device), dominant]
    keep = cos.gather(1, dominant[labels][:, None]).squeeze(1) >= math.cos(math.radians(max_angle_deg))
    return chosen, keep


@register_head("curricularface")
class CurricularFaceHead(ArcFaceHead):
    """CurricularFace (Huang et al., CVPR 2020): hard negatives weigh more as training proceeds.

    Target logit as ArcFace (cos(theta + m), and cos(theta) - m sin(m) past theta + m = pi); a negative
    whose cosine exceeds cos(theta_y + m) of its sample is hard and becomes cos * (t + cos), where t
    is the EMA of the batch's mean target cosine, updated before use with rate t_alpha (the paper's
    momentum 0.99, i.e. t_alpha = 0.01; buffer `t`, starting at 0, as HuangYG123/CurricularFace).
    Defaults: s = 64, m = 0.5.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, t_alpha: float = 0.01):
        super().__init__(embedding_size, num_classes, s, m)
        _check("curricularface", 0.0 < t_alpha <= 1.0, f"t_alpha must be in (0, 1], got {t_alpha}")
        self.t_alpha = float(t_alpha)
        self.register_buffer("t", torch.zeros(1))

    def margin_logits(self, cos: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, norms: torch.Tensor,
                      distributed: bool = False) -> torch.Tensor:
        target = cos[rows, cols]
        with torch.no_grad():
            every = cos.new_zeros(cos.shape[0])
            every[rows] = target.detach()
            if distributed:
                dist.all_reduce(every, "sum")  # each sample's target lives on exactly one rank
            if self.training:
                self.t.mul_(1.0 - self.t_alpha).add_(self.t_alpha * every.mean())
            hard = cos > cos_plus_margin(every, self.cos_m, self.sin_m)[:, None]
        cos = torch.where(hard, cos * (self.t + cos), cos)
        return cos.index_put((rows, cols), self.target_logit(target))
