"""`irface bench data`: the training loader's speed over a RecordIO folder (read, decode, flip, collate).

Uses the loader `irface train` builds (`irface.data.loader.build_train_loader`) on the dataset it
opens (`irface.data.datasets.open_train_dataset`), with the config's worker count, so the figure is
what feeds a training step.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch

from irface.bench.options import DataOptions
from irface.bench.timing import device_info, peak_memory_mb, reset_peak_memory, step_times_ms
from irface.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREFETCH = 2  # batches each worker prepares ahead (the training config's prefetch_factor default)


def bench_data(opts: DataOptions) -> dict[str, Any]:
    """Median time per training batch from `opts.data` (a RecordIO folder); returns the report."""
    data, batch_size, steps, warmup, workers = opts.data, opts.batch_size, opts.steps, opts.warmup, opts.workers
    if batch_size < 1 or steps < 1 or warmup < 0 or workers < 0:
        raise ConfigError("--batch-size and --steps must be positive, --warmup and --workers not negative")
    from irface.data.datasets import open_train_dataset
    from irface.data.loader import build_train_loader, set_loader_epoch
    from irface.data.transforms import normalize
    from irface.device import resolve_device

    dev = resolve_device(opts.device)
    dataset = open_train_dataset(data)
    batches = len(dataset) // batch_size
    if batches < 1:
        raise DataError(f"{data}: {len(dataset)} images make no full batch of {batch_size}")
    # Each worker prefetches PREFETCH batches while the warm-up runs; timing those would measure reading
    # a queue, not decoding. Drain them first, so every timed batch is made while the clock runs.
    warmup = max(warmup, workers * PREFETCH)
    prefetched_timed = batches - warmup < 1
    if prefetched_timed:
        log.warning("bench data: %s makes only %d batches of %d; some timed batches were prefetched during the "
                    "warm-up (use more images or a smaller --batch-size)", data, batches, batch_size)
        warmup = max(0, batches - 1)
    steps = min(steps, max(1, batches - warmup))
    loader = build_train_loader(dataset, batch_size, num_workers=workers, persistent_workers=False,
                                pin_memory=dev.type == "cuda", prefetch_factor=PREFETCH)
    set_loader_epoch(loader, 0)
    reset_peak_memory(torch.device("cpu"))
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    startup = time.perf_counter() - t0

    def step() -> None:
        images, _ = next(it)
        if dev.type == "cuda":  # as the trainer: uint8 across, normalised on the device
            normalize(images.to(dev, non_blocking=True))

    times = step_times_ms(step, dev, steps, 0)
    it = None  # the loader's workers stop
    # Throughput over the whole timed span: the workers prefetch, so single batches can come for free.
    ms = sum(times) / len(times)
    return {
        "benchmark": "data", "data": str(data), "images": len(dataset),
        "num_classes": int(getattr(dataset, "num_classes", 0)), "batch_size": batch_size, "workers": workers,
        "steps": steps, "warmup": warmup, "prefetched_timed": prefetched_timed, "ms_per_batch": round(ms, 3), "ms_median": round(statistics.median(times), 3),
        "ms_min": round(min(times), 3),
        "images_per_s": round(batch_size / (ms / 1e3), 1), "warmup_s": round(startup, 2),
        "peak_memory_mb": round(peak_memory_mb(torch.device("cpu")), 1), "machine": device_info(dev),
    }
