"""`irface bench eval`: the whole verification pass over one `.bin`, as `irface eval` runs it.

Decode, embed (with the mirrored images), and the protocol, through `irface.eval.evaluate_bin` on
the `load_model` embedder. `irface.eval` is imported lazily: an install without it gets one line.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from irface.bench.flops import count_flops
from irface.bench.timing import device_info, make_timing, matmul_peak_gflops, peak_memory_mb, reset_peak_memory, sig
from irface.errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)


def bench_eval(bin_path: str | Path, model: Optional[str] = None, network: str = "iresnet100",
               backbone_kwargs: Optional[dict[str, Any]] = None, batch_size: int = 64, steps: int = 1,
               warmup: int = 0, device: str = "cpu", precision: str = "fp32", flip: bool = True) -> dict[str, Any]:
    """Median wall time of `steps` whole passes over `bin_path`; returns the report."""
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise ConfigError("--batch-size and --steps must be positive, --warmup not negative")
    try:
        from irface.eval import evaluate_bin
    except ImportError:
        raise UserError("bench eval needs irface.eval.evaluate_bin (the verification pass), which this install "
                        "does not have yet") from None
    if not Path(bin_path).is_file():
        raise DataError(f"{bin_path}: no such .bin file")
    from irface.device import resolve_device
    from irface.infer.model_file import load_model
    from irface.models.loading import load_backbone

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="irface-bench-") as tmp:
        path = model
        if path is None:
            from irface.models import create_backbone

            try:
                net = create_backbone(network, **(backbone_kwargs or {}))
            except KeyError as e:
                raise ConfigError(f"--network: {e.args[0]}") from None
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
    issame_count = _pairs_of(result)
    images = 2 * issame_count * (2 if flip else 1)
    # One "step" is the whole pass: images per second counts every image embedded, mirrors included.
    timing = make_timing("eval-pass", images, times, flop, peak, "fp32", peak, peak_memory_mb(dev),
                         precision=precision)
    return {
        "benchmark": "eval", "bin": str(bin_path), "model": model, "network": network, "batch_size": batch_size,
        "steps": steps, "warmup": warmup, "flip": flip, "pairs": issame_count, "images_embedded": images,
        "accuracy": float(_accuracy(result, flip)), "gflop_per_image": sig(flop / 1e9),
        "peaks_gflops": {"fp32": round(peak, 1)}, "machine": device_info(dev), "timings": [timing.to_dict()],
    }


def _pairs_of(result: Any) -> int:
    for attr in ("pairs", "num_pairs", "n_pairs"):
        value = getattr(result, attr, None)
        if isinstance(value, int):
            return value
    raise UserError("bench eval: irface.eval's result does not say how many pairs it scored")


def _accuracy(result: Any, flip: bool) -> float:
    for attr in (("accuracy_flip", "accuracy") if flip else ("accuracy",)):
        value = getattr(result, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float("nan")
