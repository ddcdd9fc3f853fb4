"""`irface bench train`: the training step (`irface.engine.step.train_step`) timed on random data.

The components are `irface.engine.state.build_components`'s for a training config made from the
options, and each timed step is one call of `train_step`: the very code `irface train` runs (the
head is Partial FC, the loss scaler the trainer's). Data loading is left out (`irface bench data`
times it). Defaults are the training config's defaults.

Side by side (`compare`), the variants share their components where they can (one set per memory
format and optimizer kind), so many variants fit in memory at once; they only time steps, and what
the shared weights learn meanwhile does not change the time a step takes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import torch

from irface.bench.flops import count_flops, head_flops, train_flops
from irface.bench.options import TrainOptions
from irface.bench.runner import Prepared, Variant, create_network, run_variants, select_variants
from irface.bench.machine import cpu_has_fast_bf16
from irface.bench.timing import sig
from irface.config import TrainConfig
from irface.engine.precision import LossScaler, configure_backends
from irface.engine.state import Components, TrainState, build_components
from irface.engine.step import train_step
from irface.errors import ConfigError

log = logging.getLogger(__name__)

def _config(opts: TrainOptions, precision: str, channels_last: bool, compile: bool) -> TrainConfig:
    kw = opts.backbone_kwargs
    return TrainConfig(network=opts.network, batch_size=opts.batch_size, precision=precision, channels_last=channels_last,
                       compile=compile, device=opts.device, head=opts.head, num_classes=opts.num_classes,
                       embedding_size=opts.embedding_size, sample_rate=opts.sample_rate,
                       network_layers=list(kw.get("layers", [])), network_widths=list(kw.get("widths", [])),
                       stem_width=int(kw.get("stem_width", 0)), image_size=int(kw.get("input_size", 112)),
                       val_targets=[])


class _Shared:
    """Components (one set per memory format and optimizer kind) and a random batch shared by the variants."""

    def __init__(self, opts: TrainOptions, device: torch.device):
        self.opts, self.device = opts, device
        self.parts: dict[tuple[bool, bool], Components] = {}
        size = int(opts.backbone_kwargs.get("input_size", 112))
        self.batch = (torch.randint(0, 256, (opts.batch_size, 3, size, size), dtype=torch.uint8, device=device),
                      torch.randint(0, opts.num_classes, (opts.batch_size,), device=device))

    def components(self, cfg: TrainConfig, fused: bool) -> Components:
        key = (cfg.channels_last, fused)
        if key not in self.parts:
            # A schedule of one long epoch: the learning rate stays put while the variants are timed.
            self.parts[key] = build_components(cfg, self.device, steps_per_epoch=1 << 30, init_backbone=False, fused=fused)
        base = self.parts[key]
        model = torch.compile(base.backbone) if cfg.compile else base.backbone
        return dataclasses.replace(base, cfg=cfg, model=model, scaler=LossScaler(cfg.precision == "fp16"))


def train_variant(name: str, shared: _Shared, *, precision: str, channels_last: bool, compile: bool = False,
                  fused: bool = False, flop: float, description: str = "") -> Variant:
    cfg = _config(shared.opts, precision, channels_last, compile)

    def build() -> Prepared:
        parts = shared.components(cfg, fused)
        state = TrainState()
        batches = itertools.repeat(shared.batch)

        def step() -> float:
            return train_step(parts, state, batches).loss

        notes = {"precision": precision, "channels_last": channels_last, "compiled": compile, "fused_sgd": fused,
                 "head": f"Partial FC ({cfg.head}, sample rate {cfg.sample_rate})"}
        return Prepared(step=step, notes=notes)

    return Variant(name, build, flop, precision, description)


def compare_variants(shared: _Shared, opts: TrainOptions, device: torch.device, flop: float) -> list[Variant]:
    def v(name: str, precision: str, cl: bool, compile: bool = False, fused: bool = False, desc: str = "") -> Variant:
        return train_variant(name, shared, precision=precision, channels_last=cl, compile=compile, fused=fused,
                             flop=flop, description=desc)

    out = [
        v("eager-fp32", "fp32", False, desc="baseline: eager fp32 NCHW"),
        v("channels-last", "fp32", True, desc="NHWC"),
    ]
    if device.type == "cuda":
        out += [
            v("bf16-cl", "bf16", True, desc="bf16 autocast, NHWC"),
            v("fp16-cl", "fp16", True, desc="fp16 autocast + loss scaling, NHWC"),
            v("bf16-cl-fused", "bf16", True, fused=True, desc="bf16, NHWC, fused SGD"),
            v("bf16-cl-compiled", "bf16", True, compile=True, fused=True, desc="bf16, NHWC, fused SGD, torch.compile"),
        ]
    else:
        if cpu_has_fast_bf16():
            out += [
                v("bf16", "bf16", False, desc="bf16 autocast (AMX / AVX-512 bf16)"),
                v("bf16-cl", "bf16", True, desc="bf16 autocast, NHWC"),
            ]
        out += [v("compiled-cl", "fp32", True, compile=True, desc="NHWC, torch.compile (inductor)")]
    return select_variants(out, opts.variants)


def bench_train(opts: TrainOptions) -> dict[str, Any]:
    """Run the training-step benchmark; returns the report (JSON-ready)."""
    from irface.bench.timing import device_info
    from irface.device import precision_dtype, resolve_device

    precision_dtype(opts.precision, "--precision")
    if opts.batch_size < 2 or opts.steps < 1 or opts.warmup < 0:
        raise ConfigError("--batch-size must be at least 2 (BatchNorm), --steps positive, --warmup not negative")
    if opts.num_classes < 1 or not 0.0 < opts.sample_rate <= 1.0:
        raise ConfigError("--num-classes must be positive and --sample-rate in (0, 1]")
    device = resolve_device(opts.device)
    cfg = _config(opts, opts.precision, opts.channels_last, opts.compile)  # checks the options as `irface train` would
    with torch.device("meta"):  # shapes only, for the FLOP count
        probe = create_network(opts.network, **cfg.backbone_kwargs())
    forward = count_flops(probe, probe.input_size)
    head = head_flops(opts.embedding_size, opts.num_classes, opts.sample_rate)
    flop = train_flops(forward + head)
    del probe
    shared = _Shared(opts, device)
    if opts.compare:
        variants = compare_variants(shared, opts, device, flop)
    else:
        parts = [opts.precision, "NHWC" if opts.channels_last else "NCHW"]
        parts += ["compiled"] if opts.compile else []
        parts += ["fused"] if opts.fused_sgd else []
        variants = [train_variant("-".join(parts), shared, precision=opts.precision, channels_last=opts.channels_last,
                                  compile=opts.compile, fused=opts.fused_sgd, flop=flop)]
    restore = configure_backends(device, deterministic=False)  # the trainer's kernel choices, put back after
    try:
        result = run_variants(variants, device, opts.batch_size, opts.steps, opts.warmup, opts.interleave)
    finally:
        restore()
    return {
        "benchmark": "train", "network": opts.network, "batch_size": opts.batch_size, "steps": opts.steps,
        "warmup": opts.warmup, "num_classes": opts.num_classes, "sample_rate": opts.sample_rate, "head": opts.head,
        "gflop_per_image": sig(flop / 1e9), "gflop_per_image_forward": sig(forward / 1e9),
        "gflop_per_image_head_forward": sig(head / 1e9), "peaks_gflops": result.peaks["used"], "peaks_measured": result.peaks, "machine": device_info(device),
        "timings": [t.to_dict() for t in result.timings], "skipped": result.skipped,
    }
