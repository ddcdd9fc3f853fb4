"""One optimizer step, the function both `irface train` and `irface bench train` run.

`grad_accum` micro-batches of uint8 images are normalised on the device, the backbone (DDP when there
are several ranks) embeds them under the configured precision, and the Partial FC head (class centres
sharded across ranks) turns the global batch's embeddings into the mean cross-entropy. Then:
non-finite check, unscale, global gradient norm (clip), the learning rate for this position in the
schedule, both optimizers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Iterator

import torch

from irface.data.transforms import normalize
from irface.device import DTYPES, autocast
from irface.engine.optim import clip_gradients, global_grad_norm
from irface.engine.state import Components, TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss (or, in fp16, every rescaled gradient) stopped being finite; the run stopped cleanly."""


@dataclasses.dataclass
class StepOutput:
    """One step's figures: the mean loss over the global batch (the same on every rank), the global
    gradient norm before clipping, the learning rate used, and whether fp16 overflow skipped the update."""

    loss: float
    grad_norm: float
    lr: float
    skipped: bool


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times `factor` backward.

    The loss is already the mean over the global batch and the all-gather hands each rank the whole
    gradient of its own embeddings, so each rank's backbone gradient is its share of the total; DDP
    then averages over ranks where the total is the sum. Multiplying by the world size undoes that.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def train_step(parts: Components, state: TrainState, batches: Iterator) -> StepOutput:
    """Take `cfg.grad_accum` batches of (uint8 images, labels) from `batches` and make one optimizer step
    at `state`'s position. Raises `NonFiniteLossError` when training cannot go on. `state` is not advanced."""
    cfg, device, world, model = parts.cfg, parts.device, parts.world, parts.model
    assert model is not None, "Components.wrap() makes the model that trains"
    lr = parts.schedule.apply((parts.opt_backbone, parts.opt_head), state.epoch * parts.steps_per_epoch + state.step_in_epoch)
    total = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        images, labels = next(batches)  # the train loader already makes a worker's user error one line
        x = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        last = micro == cfg.grad_accum - 1
        sync = model.no_sync() if world > 1 and not last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            with autocast(DTYPES[cfg.precision], device):
                emb = model(x)
            emb = emb.float()  # the head runs in fp32: margins are sensitive near |cos| = 1
            if world > 1:
                emb = _ScaleGrad.apply(emb, float(world))
            loss = parts.head(emb, labels)
            parts.scaler.scale(loss / cfg.grad_accum).backward()
        total += loss.detach()
    loss_value = (total / cfg.grad_accum).item()  # the same number on every rank (a global mean)
    finite_loss = math.isfinite(loss_value)
    scaler = parts.scaler
    if not finite_loss and not scaler.enabled:
        raise NonFiniteLossError(f"the loss is {loss_value}")
    params = parts.backbone_params + parts.head_params
    scaler.unscale_(params)
    norm = global_grad_norm(parts.backbone_params, parts.head_params, device).item()
    stepped = scaler.update(finite_loss and math.isfinite(norm))
    if stepped:
        clip_gradients(params, norm, cfg.grad_clip)
        with parts.head.restrict_update(parts.opt_head):
            parts.opt_head.step()
        parts.opt_backbone.step()
    else:
        parts.head.reset_sampled()
        if not scaler.enabled:
            raise NonFiniteLossError(f"the gradient norm is {norm}")
        if scaler.gave_up:
            raise NonFiniteLossError(f"the fp16 loss scaler gave up after {scaler.consecutive_skips} overflowing steps "
                                     f"in a row (loss {loss_value})")
        log.warning("step %d: gradients overflowed in fp16, step skipped, loss scale now %g",
                    state.step + 1, scaler.scale_value)
    parts.opt_backbone.zero_grad(set_to_none=True)
    parts.opt_head.zero_grad(set_to_none=True)
    return StepOutput(loss_value, norm, lr, not stepped)
