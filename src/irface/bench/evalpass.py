"""`irface bench eval`: the whole verification pass over one `.bin`, as `irface eval` runs it.

Decode, embed (with the mirrored images), and the protocol, through `irface.eval.evaluate_bin` on
the `load_model` embedder.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from irface.bench.flops import count_flops
from irface.bench.options import EvalOptions
from irface.bench.runner import create_network
from irface.bench.timing import device_info, make_timing, matmul_peak_gflops, peak_memory_mb, reset_peak_memory, sig
from irface.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def bench_eval(opts: EvalOptions) -> dict[str, Any]:
    """Median wall time of `opts.steps` whole passes over `opts.bin`; returns the report."""
    bin_path, model, network, batch_size, steps, warmup, device, precision, flip = (
        opts.bin, opts.model, opts.network, opts.batch_size, opts.steps, opts.warmup, opts.device, opts.precision,
        opts.flip)
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise ConfigError("--batch-size and --steps must be positive, --warmup not negative")
    from irface.eval import evaluate_bin

    if not Path(bin_path).is_file():
        raise DataError(f"{bin_path}: no such .bin file")
    from irface.device import resolve_device
    from irface.infer.model_file import load_model
    from irface.models.loading import load_backbone

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="irface-bench-") as tmp:
        path = model
        if path is None:
            net = create_network(network, **opts.backbone_kwargs)
            path = str(Path(tmp) / "model.pth")
            torch.save(net.state_dict(), path)
        backbone, _ = load_backbone(path)
        flop = count_flops(backbone, backbone.input_size)
        del backbone
        embedder = load_model(path, device=dev, precision=precision)
    peak = matmul_peak_gflops(dev)
    result = None
    for _ in range(warmup):
        evaluate_bin(embedder.embed, bin_path, batch_size, flip)
    reset_peak_memory(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        result = evaluate_bin(embedder.embed, bin_path, batch_size, flip)
        times.append((time.perf_counter() - t0) * 1e3)
    assert result is not None  # steps >= 1, checked above
    issame_count = result.pairs
    images = 2 * issame_count * (2 if flip else 1)
    # One "step" is the whole pass: images per second counts every image embedded, mirrors included.
    timing = make_timing("eval-pass", images, times, flop, peak, "fp32", peak, peak_memory_mb(dev),
                         precision=precision)
    return {
        "benchmark": "eval", "bin": str(bin_path), "model": model, "network": network, "batch_size": batch_size,
        "steps": steps, "warmup": warmup, "flip": flip, "pairs": issame_count, "images_embedded": images,
        "accuracy": float(result.accuracy_flip if flip and result.accuracy_flip is not None else result.accuracy), "gflop_per_image": sig(flop / 1e9),
        "peaks_gflops": {"fp32": round(peak, 1)}, "machine": device_info(dev), "timings": [timing.to_dict()],
    }
