"""Speed measurements behind `irface bench`: warm-up, then the median of timed steps.

Every figure comes with the work it did (FLOPs counted from the model's own layers) and, where
asked, the device's measured matmul peak in the same run, so a speed reads as a fraction of what the
hardware can do. Nothing here is asserted by tests: benchmarks report, tests check behaviour.
"""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """One measured configuration."""

    name: str
    batch_size: int
    ms_per_step: float
    images_per_s: float
    gflop_per_image: float
    achieved_gflops: float
    fraction_of_peak: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    ratio_to_baseline: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_ms(step: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Median wall time of `step` in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def count_flops(model: nn.Module, input_size: int) -> float:
    """Forward FLOPs per image (2 x multiply-accumulates of every conv and linear layer)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return float(total)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """The device's achievable dense matmul rate, measured now (GFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and reps >= 3:
            break
    return 2 * n ** 3 * reps / elapsed / 1e9


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    # ru_maxrss is in KiB on Linux: the process's high-water mark, model included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_timing(name: str, batch: int, ms: float, flop_per_image: float, peak_gflops: Optional[float],
                device: torch.device, **extra) -> Timing:
    ips = batch / (ms / 1e3)
    achieved = ips * flop_per_image / 1e9
    return Timing(
        name=name, batch_size=batch, ms_per_step=round(ms, 3), images_per_s=round(ips, 2),
        gflop_per_image=round(flop_per_image / 1e9, 3), achieved_gflops=round(achieved, 1),
        fraction_of_peak=round(achieved / peak_gflops, 3) if peak_gflops else None,
        peak_memory_mb=round(peak_memory_mb(device), 1), extra=extra,
    )


def with_ratios(timings: list[Timing]) -> list[Timing]:
    """Ratios to the first entry (the baseline), measured in the same run."""
    if timings:
        base = timings[0].images_per_s
        for t in timings:
            t.ratio_to_baseline = round(t.images_per_s / base, 3)
    return timings


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_inference_model(network: str, device: torch.device, channels_last: bool = False,
                          fold_bn: bool = False, compile: bool = False, **kw) -> nn.Module:
    from irface.models import create_backbone

    model = create_backbone(network, **kw).eval()
    if fold_bn:
        from irface.export.fold import fold_batchnorm

        model = fold_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def time_inference(model: nn.Module, batch: int, input_size: int, device: torch.device, precision: str,
                   channels_last: bool, steps: int, warmup: int) -> float:
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = AUTOCAST[precision]

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)

    return median_step_ms(step, device, steps, warmup)


def time_train_step(network: str, batch: int, device: torch.device, precision: str, channels_last: bool,
                    compile: bool, num_classes: int, steps: int, warmup: int, head: str = "arcface",
                    **kw) -> float:
    """Forward + backward + SGD step of backbone and head on random data."""
    from irface.heads import create_head
    from irface.models import create_backbone

    model = create_backbone(network, **kw).to(device).train()
    size = model.input_size
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    head_module = create_head(head, embedding_size=model.embedding_size, num_classes=num_classes).to(device)
    params = [p for p in list(model.parameters()) + list(head_module.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    dtype = AUTOCAST[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = head_module(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return median_step_ms(step, device, steps, warmup)
