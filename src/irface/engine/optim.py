"""Optimizers, learning-rate schedules and the global gradient norm.

Two optimizers: one for the backbone (replicated, its gradients all-reduced by DDP) and one for this
rank's shard of the head. They share the settings and the schedule; keeping them apart lets the
head's state be gathered into one checkpoint and re-split for a different number of ranks.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn

from irface import dist
from irface.config import TrainConfig


def param_groups(module: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict[str, Any]]:
    """Trainable parameters, split into decayed and not when BN, bias and PReLU are excluded.

    Norm layers, biases and PReLU slopes are exactly the parameters with fewer than two dimensions.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(module: nn.Module, cfg: TrainConfig, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, coupled weight decay: the seed's; `fused` kernels if asked) or AdamW (beta1 = momentum,
    decoupled decay)."""
    groups = param_groups(module, cfg.weight_decay, cfg.wd_exclude_norm_bias)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **({"fused": True} if fused else {}))
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))


class LRSchedule:
    """The learning rate as a function of the optimizer step (0-based), set before each step.

    multistep: lr x gamma^(milestones passed), by epoch (the seed's); poly: lr x (1 - t)^power;
    cosine: lr x (1 + cos(pi t)) / 2; t runs from 0 to 1 over the run after the warm-up, which is
    linear from lr / warmup_steps to lr. The whole run is `epochs` epochs whatever `max_steps` says,
    so a short smoke run sees the learning rates of the real one.
    """

    def __init__(self, kind: str, base_lr: float, steps_per_epoch: int, epochs: int,
                 milestones: Iterable[int] = (), gamma: float = 0.1, power: float = 2.0,
                 warmup_epochs: float = 0.0):
        if kind not in ("multistep", "poly", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind = kind
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(steps_per_epoch * epochs)
        self.milestones = list(milestones)
        self.gamma = float(gamma)
        self.power = float(power)
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int, world_size: int) -> "LRSchedule":
        return cls(cfg.scheduler, cfg.scaled_lr(world_size), steps_per_epoch, cfg.epoch_size, cfg.schedule,
                   cfg.gamma, cfg.poly_power, cfg.warmup_epochs)

    def lr_at(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            epoch = step // self.steps_per_epoch
            factor *= self.gamma ** sum(epoch >= m for m in self.milestones)
        elif step >= self.warmup_steps:
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            factor *= (1.0 - t) ** self.power if self.kind == "poly" else 0.5 * (1.0 + math.cos(math.pi * t))
        return self.base_lr * factor

    def apply(self, optimizers: Iterable[torch.optim.Optimizer], step: int) -> float:
        lr = self.lr_at(step)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        """What the schedule was (the rate itself is recomputed from the step on resume)."""
        return {"kind": self.kind, "base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "milestones": self.milestones, "gamma": self.gamma,
                "power": self.power, "warmup_steps": self.warmup_steps}


def _sum_of_squares(params: Iterable[nn.Parameter], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    return torch.stack([n.float() for n in norms]).square().sum()


def global_grad_norm(replicated: list[nn.Parameter], sharded: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """L2 norm of all gradients: replicated ones (identical on every rank) plus every rank's shard."""
    shard_sq = _sum_of_squares(sharded, device)
    dist.all_reduce(shard_sq, "sum")
    return (_sum_of_squares(replicated, device) + shard_sq).sqrt()


def clip_gradients(params: list[nn.Parameter], norm: float, max_norm: float) -> Optional[float]:
    """Scale gradients so their global norm is at most `max_norm`; returns the factor used, if any."""
    if max_norm <= 0 or norm <= max_norm:
        return None
    factor = max_norm / (norm + 1e-6)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)
    return factor
