"""`irface bench train`: one training step (forward, head loss, backward, optimizer step) on random data.

The step is the trainer's: images normalised on the device, the backbone under the precision's
autocast, the head in fp32 (Partial FC when `irface.heads.PartialFC` exists, else the plain head),
SGD with momentum and weight decay on both, the global gradient norm, the loss read back. Data
loading is left out (`irface bench data` times it). Defaults are the training config's defaults.

Side by side (`compare`), the variants share their weights where they can (one NCHW and one NHWC
copy of the backbone, one head), so many variants fit in memory at once; they only time steps, and
what the shared weights learn meanwhile does not change the time a step takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from irface.bench.flops import count_flops, head_flops, train_flops
from irface.bench.runner import Prepared, Variant, run_variants, select_variants
from irface.bench.timing import cpu_has_fast_bf16, sig
from irface.config import TrainConfig
from irface.data.transforms import normalize
from irface.device import DTYPES
from irface.errors import ConfigError

log = logging.getLogger(__name__)

_CFG = TrainConfig()


@dataclass
class TrainOptions:
    """What `irface bench train` measures; every default is `irface train`'s."""

    network: str = _CFG.network
    batch_size: int = _CFG.batch_size
    steps: int = 10
    warmup: int = 2
    precision: str = _CFG.precision
    channels_last: bool = _CFG.channels_last
    compile: bool = _CFG.compile
    fused_sgd: bool = False
    device: str = _CFG.device
    head: str = _CFG.head
    num_classes: int = _CFG.num_classes
    embedding_size: int = _CFG.embedding_size
    sample_rate: float = _CFG.sample_rate
    compare: bool = False
    variants: Optional[list[str]] = None
    interleave: Optional[bool] = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


def build_head(opts: TrainOptions, device: torch.device) -> tuple[nn.Module, str]:
    """Partial FC (world of one) as the trainer builds it when it exists; the plain head otherwise."""
    try:
        from irface.heads import PartialFC  # type: ignore[attr-defined]
    except ImportError:
        PartialFC = None
    if PartialFC is not None:
        try:
            head = PartialFC(opts.head, opts.embedding_size, opts.num_classes, None, opts.sample_rate, 0, 1)
        except ValueError as e:
            raise ConfigError(f"--head/--sample-rate: {e}") from None
        return head.to(device), f"Partial FC ({opts.head}, sample rate {opts.sample_rate})"
    if opts.sample_rate < 1.0:
        raise ConfigError("--sample-rate below 1 needs Partial FC (irface.heads.PartialFC), not in this install")
    from irface.heads import create_head

    try:
        head = create_head(opts.head, embedding_size=opts.embedding_size, num_classes=opts.num_classes)
    except KeyError as e:
        raise ConfigError(f"--head: {e.args[0]}") from None
    return head.to(device), f"plain {opts.head} head (Partial FC not installed)"


class _Shared:
    """Backbones (one per memory format), head and optimizers shared by the variants of one run."""

    def __init__(self, opts: TrainOptions, device: torch.device):
        self.opts, self.device = opts, device
        self.backbones: dict[bool, tuple[nn.Module, torch.optim.Optimizer]] = {}
        self.head: Optional[tuple[nn.Module, torch.optim.Optimizer, str]] = None
        self.images = torch.randint(0, 256, (opts.batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, opts.num_classes, (opts.batch_size,), device=device)

    def _sgd(self, params: list[nn.Parameter], fused: bool) -> torch.optim.Optimizer:
        kw = {"fused": True} if fused else {}
        return torch.optim.SGD(params, lr=1e-3, momentum=_CFG.momentum, weight_decay=_CFG.weight_decay, **kw)

    def backbone(self, channels_last: bool, fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        key = (channels_last, fused)
        if key not in self.backbones:
            from irface.models import create_backbone

            kw = dict(self.opts.backbone_kwargs)
            kw.setdefault("embedding_size", self.opts.embedding_size)
            try:
                model = create_backbone(self.opts.network, **kw).to(self.device).train()
            except KeyError as e:
                raise ConfigError(f"--network: {e.args[0]}") from None
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            if self.images.shape[-1] != model.input_size:
                size = model.input_size
                self.images = torch.randint(0, 256, (self.opts.batch_size, 3, size, size), dtype=torch.uint8,
                                            device=self.device)
            self.backbones[key] = (model, self._sgd([p for p in model.parameters() if p.requires_grad], fused))
        return self.backbones[key]

    def get_head(self) -> tuple[nn.Module, torch.optim.Optimizer, str]:
        if self.head is None:
            head, what = build_head(self.opts, self.device)
            self.head = (head, self._sgd([p for p in head.parameters() if p.requires_grad], False), what)
        return self.head


def train_variant(name: str, shared: _Shared, *, precision: str, channels_last: bool, compile: bool = False,
                  fused: bool = False, flop: float, description: str = "") -> Variant:
    device = shared.device
    dtype = DTYPES[precision]

    def build() -> Prepared:
        model, opt = shared.backbone(channels_last, fused)
        head, opt_head, head_what = shared.get_head()
        forward = torch.compile(model) if compile else model
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        restrict = getattr(head, "restrict_update", None)
        params = [p for p in model.parameters() if p.requires_grad] + [p for p in head.parameters() if p.requires_grad]
        memory_format = torch.channels_last if channels_last else torch.contiguous_format

        def step() -> float:
            x = normalize(shared.images).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                emb = forward(x)
            loss = head(emb.float(), shared.labels)  # the head in fp32, as the trainer runs it
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grads = [p.grad for p in params if p.grad is not None]
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # the trainer's global grad norm
            if restrict is not None:
                with restrict(opt_head):
                    scaler.step(opt_head)
            else:
                scaler.step(opt_head)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            opt_head.zero_grad(set_to_none=True)
            return loss.item()

        notes = {"precision": precision, "channels_last": channels_last, "compiled": compile,
                 "fused_sgd": fused, "head": head_what}
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
    from irface.models import create_backbone

    precision_dtype(opts.precision, "--precision")
    if opts.batch_size < 2 or opts.steps < 1 or opts.warmup < 0:
        raise ConfigError("--batch-size must be at least 2 (BatchNorm), --steps positive, --warmup not negative")
    if opts.num_classes < 1 or not 0.0 < opts.sample_rate <= 1.0:
        raise ConfigError("--num-classes must be positive and --sample-rate in (0, 1]")
    device = resolve_device(opts.device)
    if device.type == "cuda":
        # The trainer's kernel choices (engine.precision.configure_backends).
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    kw = dict(opts.backbone_kwargs)
    kw.setdefault("embedding_size", opts.embedding_size)
    try:
        with torch.device("meta"):  # shapes only, for the FLOP count
            probe = create_backbone(opts.network, **kw)
    except KeyError as e:
        raise ConfigError(f"--network: {e.args[0]}") from None
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
    result = run_variants(variants, device, opts.batch_size, opts.steps, opts.warmup, opts.interleave)
    return {
        "benchmark": "train", "network": opts.network, "batch_size": opts.batch_size, "steps": opts.steps,
        "warmup": opts.warmup, "num_classes": opts.num_classes, "sample_rate": opts.sample_rate, "head": opts.head,
        "gflop_per_image": sig(flop / 1e9), "gflop_per_image_forward": sig(forward / 1e9),
        "gflop_per_image_head_forward": sig(head / 1e9), "peaks_gflops": result.peaks["used"], "peaks_measured": result.peaks, "machine": device_info(device),
        "timings": [t.to_dict() for t in result.timings], "skipped": result.skipped,
    }
