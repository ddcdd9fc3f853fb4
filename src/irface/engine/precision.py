"""Training precision: backend kernel choices and the fp16 loss scaler (names -> dtypes: `irface.device`).

fp32 runs as is; bf16 is autocast with no scaler (its range is fp32's); fp16 is autocast plus a
dynamic loss scale. The scaler is our own (a few lines) rather than `torch.amp.GradScaler` because
its skip decision must be the same on every rank: with Partial FC each rank holds different head
gradients, so "did anything overflow?" is answered from the all-reduced gradient norm.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

# fp16: consecutive overflowing steps after which the scaler gives up (the scale is then 2**-4).
MAX_CONSECUTIVE_SKIPS = 20


def configure_backends(device: torch.device, deterministic: bool) -> Callable[[], None]:
    """Kernel choices: TF32 and cuDNN autotuning for speed, or deterministic kernels for exact resume.

    Returns a function that puts the previous (process-wide) settings back.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def restore() -> None:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[2:]

    return restore


class LossScaler:
    """Dynamic loss scaling for fp16; disabled (scale 1, never skips) for fp32 and bf16.

    Use: `scaler.scale(loss).backward()`, `scaler.unscale_(params)`, then `scaler.update(finite)`
    with `finite` the all-reduced verdict on the gradients; skip the optimizer step when it is False.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale_value = float(init_scale) if enabled else 1.0
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.consecutive_skips = 0
        self.total_skips = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)

    def update(self, finite: bool) -> bool:
        """Record a step's verdict; returns whether the optimizer should step."""
        if not self.enabled:
            return finite
        if finite:
            self.consecutive_skips = 0
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale_value *= self.growth_factor
                self.good_steps = 0
            return True
        self.scale_value *= self.backoff_factor
        self.good_steps = 0
        self.consecutive_skips += 1
        self.total_skips += 1
        return False

    @property
    def gave_up(self) -> bool:
        return self.enabled and self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "scale": self.scale_value, "good_steps": self.good_steps,
                "consecutive_skips": self.consecutive_skips, "total_skips": self.total_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.enabled or not state.get("enabled"):
            return  # switching precision on resume: start the scale afresh
        self.scale_value = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.total_skips = int(state["total_skips"])
