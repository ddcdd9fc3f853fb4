"""Partial FC: the classification head split across ranks by class ranges (model parallel).

Rank r holds the class centres of one contiguous range of classes (`class_range`). Each step every
rank sees the embeddings and labels of the whole global batch (all-gathered, the embeddings with
their gradient), computes the logits of its own classes, and the softmax over all classes is formed
without ever holding them in one place: an all-reduce of the row maxima, then of the sums of
exponentials. The loss is the mean cross-entropy over the global batch, the same number on every rank.

With `sample_rate < 1` each rank keeps, per step, the centres of every class present in the global
batch plus a random subset of the others (Partial FC, An et al., 2022); only those rows are updated,
weight decay and momentum included (`restrict_update`).

The margin maths is not repeated here: the class cosines, the margin and any regulariser come from
the plain head's own `cosine_to`, `margin_logits` and `regularizer`, its centres' shape and first
values from `centre_shape` and `init_rows` (a copy of the plain head without centres, a submodule, so its buffers, AdaFace's and CurricularFace's batch statistics, move with the
module and are saved in `full_state_dict`). In one process with `sample_rate=1` the computation is the
plain head's, op for op. In several processes a regulariser (MagFace's) is computed on every rank
from the gathered batch; its gradient is divided by the world size, since the gather's backward sums
the ranks' gradients.

Where it applies: every head shards; a head's parameters are one row per class each (`weight`, and
`softmax`'s `bias`, split with the rows). Heads with `samples_classes` (every margin head) also
sample; sub-center heads shard and sample by class (all k centres of a class together). `softmax`
(Linear with bias) does not sample: dropping negatives of an unnormalised classifier changes what it
learns, so the config refuses `sample_rate < 1` with it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from irface import dist
from irface.heads.margin import feature_norms
from irface.heads.registry import create_head, head_kind

# Centres are initialised in chunks of this many classes, each from its own seeded generator, so the
# initial head is the same whatever the number of ranks and no rank ever builds the whole matrix.
INIT_CHUNK = 4096


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` holds; sizes differ by at most one."""
    return num_classes * rank // world_size, num_classes * (rank + 1) // world_size


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over a global batch whose logits are split by columns across ranks.

    `local_labels[i]` is the column of sample i's class in this rank's logits, or -1 when another
    rank holds it. The gradient w.r.t. the local logits is (softmax - one-hot) / N, all local.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        row_max = logits.detach().max(dim=1, keepdim=True).values
        dist.all_reduce(row_max, "max")
        exp = (logits.detach() - row_max).exp_()
        total = exp.sum(dim=1, keepdim=True)
        dist.all_reduce(total, "sum")
        has = local_labels >= 0
        rows = has.nonzero().squeeze(1)
        target = logits.new_zeros(n)
        target[rows] = logits.detach()[rows, local_labels[rows]]
        dist.all_reduce(target, "sum")  # each sample's target logit lives on exactly one rank
        # log-sum-exp minus the target: accurate even where the target's probability underflows.
        loss = (total.squeeze(1).log() + row_max.squeeze(1) - target).mean()
        prob = exp.div_(total)
        ctx.save_for_backward(prob, rows, local_labels)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, rows, local_labels = ctx.saved_tensors
        g = prob.clone()
        g[rows, local_labels[rows]] -= 1.0
        g.mul_(grad / prob.shape[0])
        return g, None


def distributed_cross_entropy(logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a global batch whose class columns are split across ranks (see above)."""
    return _DistributedCrossEntropy.apply(logits, local_labels)


class PartialFC(nn.Module):
    """A margin or softmax head whose class centres are sharded across ranks (see the module docstring).

    Args:
        kind: any `create_head` kind.
        embedding_size, num_classes: as the plain head.
        head_params: the head's own parameters (s, m; s, m1, m2, m3; ...).
        sample_rate: fraction of each rank's centres used per training step (1.0 = all).
        rank, world_size: default to the running process group (0 and 1 in one process).
        seed: seeds the (world-size independent) initialisation and the sampling.

    `forward(embeddings, labels)` takes this rank's embeddings and labels and returns the mean loss
    over the global batch. `weight` holds this rank's centres, the rows of classes [start, end).
    """

    def __init__(self, kind: str, embedding_size: int, num_classes: int, head_params: Optional[dict[str, Any]] = None,
                 sample_rate: float = 1.0, rank: Optional[int] = None, world_size: Optional[int] = None,
                 seed: int = 0):
        super().__init__()
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size
        if num_classes < self.world_size:
            raise ValueError(f"{num_classes} classes cannot be split across {self.world_size} ranks")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.kind = kind
        self.head_params = dict(head_params or {})
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = float(sample_rate)
        self.seed = seed
        # The margin function only: a one-class head stripped of its centres. A submodule, so that its
        # buffers (batch statistics) follow .to(), .train() and the state.
        margin: Any = create_head(kind, embedding_size, 1, **self.head_params)  # a head: its hooks, see margin.py
        if not margin.samples_classes and self.sample_rate < 1.0:
            raise ValueError(f"Partial FC sampling needs a margin head, not {kind}")
        params = [name for name, _ in margin.named_parameters(recurse=False)]
        for name in params:
            delattr(margin, name)
        self._margin = margin
        self.start, self.end = class_range(num_classes, self.rank, self.world_size)
        self.weight = nn.Parameter(self._init_rows(0))
        self.bias = nn.Parameter(self._init_rows(1)) if "bias" in params else None
        self.register_buffer("_touched", torch.zeros(self.end - self.start, dtype=torch.bool), persistent=False)
        self._generator: Optional[torch.Generator] = None

    @classmethod
    def from_head(cls, head: nn.Module, sample_rate: float = 1.0, rank: Optional[int] = None,
                  world_size: Optional[int] = None, seed: int = 0) -> "PartialFC":
        """This rank's share of a plain head (its centres copied): the exact sharded equivalent."""
        pfc = cls(head_kind(head), head.embedding_size, head.num_classes, head.hparams(), sample_rate, rank,
                  world_size, seed)
        pfc.load_full_state_dict({k: v.detach() for k, v in head.state_dict().items()})
        return pfc.to(head.weight.device, head.weight.dtype)

    # --- layout and state -------------------------------------------------------------------
    @property
    def margin(self) -> nn.Module:
        return self._margin

    @property
    def shard_sizes(self) -> list[int]:
        return [e - s for s, e in (class_range(self.num_classes, r, self.world_size) for r in range(self.world_size))]

    def layout(self) -> dict[str, Any]:
        """How the centres are split: recorded in checkpoints (which hold them gathered)."""
        return {"kind": self.kind, "num_classes": self.num_classes, "embedding_size": self.embedding_size,
                "world_size": self.world_size,
                "class_ranges": [list(class_range(self.num_classes, r, self.world_size)) for r in range(self.world_size)]}

    def _init_rows(self, which: int) -> torch.Tensor:
        """Rows [start, end) of the initial weight (which=0) or bias (which=1), chunk-seeded."""
        first, last = self.start // INIT_CHUNK, (self.end - 1) // INIT_CHUNK
        parts = []
        for chunk in range(first, last + 1):
            lo, hi = chunk * INIT_CHUNK, min((chunk + 1) * INIT_CHUNK, self.num_classes)
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + chunk * 2 + which) & 0x7FFF_FFFF_FFFF)
            shape = self._centre_shape(hi - lo) if which == 0 else (hi - lo,)
            rows = self._margin.init_rows(shape, generator=g)
            parts.append(rows[max(self.start, lo) - lo:min(self.end, hi) - lo])
        return torch.cat(parts)

    def _centre_shape(self, num_classes: int) -> tuple[int, ...]:
        return tuple(self._margin.centre_shape(num_classes))

    def _class_rows(self) -> dict[str, nn.Parameter]:
        """The head's parameters, one row per class each: `weight`, and `bias` where the head has one."""
        return {name: p for name, p in (("weight", self.weight), ("bias", self.bias)) if p is not None}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's rows from a whole head's state (`weight`, `bias` for softmax, and the
        head's buffers, e.g. AdaFace's `batch_mean` / `batch_std`): the plain head's `state_dict()`."""
        buffers, rows = dict(self._margin.named_buffers()), self._class_rows()
        expected = set(rows) | set(buffers)
        if set(state) != expected:
            raise ValueError(f"head state has keys {sorted(state)}, expected {sorted(expected)}")
        if tuple(state["weight"].shape) != self._centre_shape(self.num_classes):
            raise ValueError(f"head weight has shape {tuple(state['weight'].shape)}, expected "
                             f"{self._centre_shape(self.num_classes)}")
        for name, buf in buffers.items():
            if state[name].shape != buf.shape:
                raise ValueError(f"head {name} has shape {tuple(state[name].shape)}, expected {tuple(buf.shape)}")
        with torch.no_grad():
            for name, param in rows.items():
                param.copy_(state[name][self.start:self.end])
            for name, buf in buffers.items():
                buf.copy_(state[name])

    def full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """The whole head gathered on rank 0 (None on other ranks). A collective: every rank calls it.

        Buffers (batch statistics) are equal on every rank (see `irface.heads.adaptive`): rank 0's are saved.
        """
        out = {name: dist.gather_rows(p.detach(), self.shard_sizes) for name, p in self._class_rows().items()}
        out.update({name: buf.detach().clone() for name, buf in self._margin.named_buffers()})
        return out if self.rank == 0 or not dist.is_initialized() else None

    def sampler_state(self) -> Optional[torch.Tensor]:
        return None if self._generator is None else self._generator.get_state()

    def load_sampler_state(self, state: Optional[torch.Tensor]) -> None:
        if state is not None:
            self._get_generator().set_state(state)

    # --- forward ------------------------------------------------------------------------------
    def _get_generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.weight.device:
            self._generator = torch.Generator(device=self.weight.device)
            self._generator.manual_seed(self.seed * 1_000_003 + 7919 * (self.rank + 1))
        return self._generator

    def _sample(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows to use this step (sorted) and the labels renumbered into them."""
        rows = self.end - self.start
        positive = torch.unique(local[local >= 0])
        keep = max(int(self.sample_rate * rows), positive.numel())
        score = torch.rand(rows, generator=self._get_generator(), device=self.weight.device)
        score[positive] = 2.0  # every class present in the batch is kept
        index = torch.topk(score, keep, sorted=False).indices.sort().values
        renumber = torch.full((rows,), -1, dtype=torch.long, device=local.device)
        renumber[index] = torch.arange(keep, device=local.device)
        local = torch.where(local >= 0, renumber[local.clamp_min(0)], local)
        self._touched[index] = True
        return index, local

    def logits(self, embeddings: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               local: torch.Tensor, norms: Optional[torch.Tensor] = None, distributed: bool = False) -> torch.Tensor:
        """This rank's logits for a (gathered) batch; `local` = column of each target here, or -1."""
        cos = self._margin.cosine_to(embeddings, weight, bias)
        rows = (local >= 0).nonzero().squeeze(1)
        norms = feature_norms(embeddings) if norms is None else norms
        return self._margin.margin_logits(cos, rows, local[rows], norms, distributed) * self._margin.s

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gathered = dist.is_initialized() and dist.get_world_size() > 1
        if gathered:
            embeddings = dist.all_gather_with_grad(embeddings)
            labels = dist.all_gather(labels)
        in_range = (labels >= self.start) & (labels < self.end)
        local = torch.where(in_range, labels - self.start, torch.full_like(labels, -1))
        weight, bias = self.weight, self.bias
        if self.training and self.sample_rate < 1.0:
            index, local = self._sample(local)
            weight = weight[index]
        elif self.training:
            self._touched.fill_(True)
        norms = feature_norms(embeddings)
        logits = self.logits(embeddings, weight, bias, local, norms, distributed=self.world_size > 1)
        if self.world_size == 1:
            loss = F.cross_entropy(logits, local)  # the plain head's path, exactly
        else:
            loss = distributed_cross_entropy(logits, local)
        reg = self._margin.regularizer(norms)
        if reg is None:
            return loss
        if gathered:
            # Every rank adds the same term of the gathered batch and the gather's backward sums their
            # gradients: keep the value, scale the gradient back to one copy.
            share = reg / self.world_size
            reg = share + (reg - share).detach()
        return loss + reg

    # --- optimisation ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def restrict_update(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Around `optimizer.step()`: rows not sampled since the last step keep their weight and state.

        Works for any optimizer whose per-parameter state tensors have the parameter's shape (SGD's
        momentum, AdamW's moments): weight decay and momentum reach only the sampled centres.
        """
        if self.sample_rate >= 1.0:
            yield
            return
        frozen = (~self._touched).nonzero().squeeze(1)
        w = self.weight
        saved_w = w.detach()[frozen].clone()
        before = {k: v[frozen].clone() for k, v in optimizer.state.get(w, {}).items()
                  if torch.is_tensor(v) and v.shape == w.shape}
        try:
            yield
        finally:
            with torch.no_grad():
                w[frozen] = saved_w
                for k, v in optimizer.state.get(w, {}).items():
                    if torch.is_tensor(v) and v.shape == w.shape:
                        v[frozen] = before[k] if k in before else 0  # state born this step: never seen
            self._touched.zero_()

    def reset_sampled(self) -> None:
        """Forget the rows sampled since the last step (a skipped step)."""
        self._touched.zero_()

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, classes={self.start}..{self.end - 1} of {self.num_classes}, "
                f"rank={self.rank}/{self.world_size}, sample_rate={self.sample_rate}")
