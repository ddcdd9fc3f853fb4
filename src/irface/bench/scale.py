"""`irface bench scale`: what the classification head costs as classes, ranks and the sample rate grow.

Measured: one rank's share of the head (its C/R class centres, the global batch of R x N
embeddings, forward + backward + SGD step), in one process: with R ranks every rank does this same
work plus two small all-reduces, so one rank's time and memory are the cluster's per-rank figures
without the communication (`irface.heads.PartialFC` with rank 0 of R).

Computed ("paper" table): the same per-rank memory model at a cluster's sizes (8 x 80 GB, 512-d,
128 images per GPU), next to the backbone's work, and the sample rate that keeps the per-rank
logits at the smallest class count's cost.

The memory model, per rank, in fp32: centres, their momentum and their gradient (3 x C/R x E; the
gradient is dense over the shard because the sampled rows are gathered from the whole weight), the
sampled centres normalised (2 x U x E), and the logits with their softmax and gradient (3 x B x R x U),
with U = C/R x sample rate.
"""

from __future__ import annotations

import gc
import logging
import statistics
from typing import Any

import torch
from torch import nn

from irface.bench.options import ScaleOptions
from irface.bench.machine import proc_field
from irface.bench.timing import device_info, peak_memory_mb, reset_peak_memory, step_times_ms
from irface.errors import ConfigError

log = logging.getLogger(__name__)

BYTES = 4  # fp32
IRESNET100_GFLOP = 24.18  # forward, per 112x112 image (irface.bench.count_flops)


def used_classes(classes: int, ranks: int, sample_rate: float) -> tuple[int, int]:
    """(classes per rank, classes used per step per rank)."""
    per_rank = -(-classes // ranks)
    return per_rank, max(1, int(per_rank * sample_rate))


def head_memory_bytes(classes: int, ranks: int, embedding: int, batch_per_rank: int,
                      sample_rate: float) -> dict[str, float]:
    """Per-rank bytes of the head by part (see the module docstring)."""
    per_rank, used = used_classes(classes, ranks, sample_rate)
    global_batch = batch_per_rank * ranks
    return {
        "centres": 3.0 * per_rank * embedding * BYTES,
        "sampled": 2.0 * used * embedding * BYTES if sample_rate < 1 else 1.0 * used * embedding * BYTES,
        "logits": 3.0 * global_batch * used * BYTES,
    }


def paper_table(opts: ScaleOptions) -> dict[str, Any]:
    """The computed per-rank cost at a cluster's sizes."""
    e, b = opts.paper_embedding_size, opts.paper_batch_size
    rows = []
    ranks_list = sorted(set(opts.ranks) | {opts.paper_gpus})
    reference = min(opts.classes)
    flat = {c: min(1.0, round(reference / c, 6)) for c in opts.classes}
    backbone = 3 * IRESNET100_GFLOP * 1e9 * b
    for c in opts.classes:
        for r in ranks_list:
            for rate in sorted(set(opts.sample_rates) | {flat[c]}, reverse=True):
                mem = head_memory_bytes(c, r, e, b, rate)
                per_rank, used = used_classes(c, r, rate)
                head = 3 * 2.0 * b * r * e * used
                total_gb = sum(mem.values()) / 1e9
                rows.append({
                    "classes": c, "ranks": r, "sample_rate": rate, "classes_per_rank": per_rank,
                    "classes_used_per_step": used, "head_gb_per_rank": round((mem["centres"] + mem["sampled"]) / 1e9, 3),
                    "logits_gb_per_rank": round(mem["logits"] / 1e9, 3), "head_gflop_per_step": round(head / 1e9, 1),
                    "head_to_backbone_flop": round(head / backbone, 4),
                    "fits": total_gb + opts.backbone_memory_gb <= opts.gpu_memory_gb,
                })
    return {"gpus": opts.paper_gpus, "gpu_memory_gb": opts.gpu_memory_gb, "embedding_size": e, "batch_per_gpu": b,
            "backbone_memory_gb_assumed": opts.backbone_memory_gb,
            "backbone_gflop_per_step": round(backbone / 1e9, 1), "flat_reference_classes": reference,
            "flat_sample_rate": flat, "rows": rows}


def _rss_mb() -> float:
    rss = proc_field("/proc/self/status", "VmRSS")
    return int(rss.split()[0]) / 1024 if rss else 0.0


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next row's peak RSS starts from what is live."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _make_head(opts: ScaleOptions, classes: int, ranks: int, rate: float, device: torch.device) -> nn.Module:
    """One rank's share of the head: Partial FC's shard of `classes` across `ranks`."""
    from irface.heads import PartialFC

    return PartialFC(opts.head, opts.embedding_size, classes, None, rate, rank=0, world_size=ranks).to(device)


def measure_row(opts: ScaleOptions, classes: int, ranks: int, rate: float, device: torch.device) -> dict[str, Any]:
    per_rank, used = used_classes(classes, ranks, rate)
    est = sum(head_memory_bytes(classes, ranks, opts.embedding_size, opts.batch_size, rate).values()) / 2 ** 20
    row: dict[str, Any] = {"classes": classes, "ranks": ranks, "sample_rate": rate, "classes_per_rank": per_rank,
                           "classes_used_per_step": used, "estimated_mb": round(est, 1),
                           "ms_per_step": None, "peak_memory_mb": None}
    if est > opts.max_memory_gb * 1024:
        row["note"] = f"skipped: estimated {est / 1024:.1f} GB > --max-memory-gb {opts.max_memory_gb:g}"
        return row
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda" else _rss_mb()
    try:
        head = _make_head(opts, classes, ranks, rate, device)
    except (RuntimeError, ValueError) as e:
        row["note"] = f"skipped: {e}"
        return row
    head.train()
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=5e-4)
    global_batch = opts.batch_size * ranks
    emb = torch.randn(global_batch, opts.embedding_size, device=device, requires_grad=True)
    labels = torch.randint(0, classes, (global_batch,), device=device)

    def step() -> None:
        loss = head(emb, labels)
        loss.backward()
        with head.restrict_update(opt):
            opt.step()
        opt.zero_grad(set_to_none=True)
        emb.grad = None

    times = step_times_ms(step, device, opts.steps, opts.warmup)
    peak = peak_memory_mb(device) - before
    row.update(ms_per_step=round(statistics.median(times), 2), peak_memory_mb=round(peak, 1),
               implementation=type(head).__name__)
    return row


def bench_scale(opts: ScaleOptions) -> dict[str, Any]:
    from irface.device import resolve_device

    if min(opts.classes, default=0) < 1 or min(opts.ranks, default=0) < 1 or not opts.sample_rates:
        raise ConfigError("--classes and --ranks must be positive, --sample-rates not empty")
    if any(not 0.0 < r <= 1.0 for r in opts.sample_rates):
        raise ConfigError("--sample-rates must lie in (0, 1]")
    if opts.embedding_size < 1 or opts.batch_size < 1 or opts.steps < 1:
        raise ConfigError("--embedding-size, --batch-size and --steps must be positive")
    device = resolve_device(opts.device)
    measured = []
    for c in opts.classes:
        for r in opts.ranks:
            if r > c:
                continue
            for rate in opts.sample_rates:
                log.info("bench scale: %d classes over %d ranks, sample rate %g", c, r, rate)
                measured.append(measure_row(opts, c, r, rate, device))
    return {"benchmark": "scale", "head": opts.head, "embedding_size": opts.embedding_size,
            "batch_size": opts.batch_size, "steps": opts.steps, "machine": device_info(device),
            "measured": measured, "paper": paper_table(opts)}
