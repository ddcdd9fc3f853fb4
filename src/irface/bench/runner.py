"""Run a set of benchmark variants and turn their step times into figures.

A variant is built lazily (`build() -> Prepared`), so a failing or unavailable path (no
onnxruntime, no compiler for torch.compile) is reported in one line and skipped instead of ending
the run. On CPU the variants are timed side by side in interleaved rounds (the machine may be
shared); on CUDA, where a card is not shared and memory is the limit, one after the other, each
freed before the next is built.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from irface.bench.timing import (
    Step, Timing, interleaved_times_ms, make_timing, measure_peaks, peak_memory_mb, peak_probe, reset_peak_memory,
    sig, step_times_ms, synchronize, with_ratios,
)
from irface.errors import ConfigError, first_line

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A built variant: `step()` runs one timed step; `embed(x)` (inference only) gives embeddings for the agreement check."""

    step: Step
    embed: Optional[Callable[[np.ndarray], np.ndarray]] = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    """One configuration to time. `peak` names the matmul peak its speed is compared with (fp32, bf16, fp16, int8)."""

    name: str
    build: Callable[[], Prepared]
    flop_per_image: float
    peak: str = "fp32"
    description: str = ""


@dataclass
class RunResult:
    timings: list[Timing]
    skipped: dict[str, str]
    prepared: dict[str, Prepared]
    peaks: dict[str, Any]  # GFLOP/s by kind: "before" (alone, before timing) and, interleaved, "in_rounds"


def create_network(name: str, **kwargs: Any) -> torch.nn.Module:
    """The backbone a benchmark times (`create_backbone`); an unknown name is a ConfigError naming --network."""
    from irface.models import create_backbone

    try:
        return create_backbone(name, **kwargs)
    except KeyError as e:
        raise ConfigError(f"--network: {e.args[0]}") from None


def select_variants(variants: list[Variant], names: Optional[list[str]]) -> list[Variant]:
    """The `names` among `variants` (`--variants`; all when empty), and always the first: the baseline the
    ratios are taken to. An unknown name is a ConfigError listing the known ones."""
    if not names:
        return variants
    known = [v.name for v in variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--variants: unknown {', '.join(unknown)}; known here: {', '.join(known)}")
    return [v for i, v in enumerate(variants) if i == 0 or v.name in names]


def _warm(name: str, prepared: Prepared, device: torch.device, warmup: int) -> tuple[float, float]:
    """Warm-up calls; returns (peak memory MB during them, seconds taken)."""
    before = peak_memory_mb(device) if device.type == "cpu" else 0.0
    reset_peak_memory(device)
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        prepared.step()
    synchronize(device)
    seconds = time.perf_counter() - t0
    peak = peak_memory_mb(device)
    prepared.notes.setdefault("warmup_s", round(seconds, 1))
    log.debug("%s: warm-up %.1f s, peak %.0f MB (resident before %.0f MB)", name, seconds, peak, before)
    return peak, seconds


def run_variants(variants: list[Variant], device: torch.device, batch: int, steps: int, warmup: int,
                 interleave: Optional[bool] = None, keep: bool = False) -> RunResult:
    """Time every variant; the first one that runs is the baseline of the ratios.

    The matmul peaks (fp32 and each variant's kind) are measured first; when interleaving, one matmul
    of each kind is also timed in every round, so a quiet moment anywhere in the run counts: the
    peak used is the best rate seen, alone or in the rounds. `keep=True` keeps the built variants (for the
    agreement check) even when timing one after the other.
    """
    interleave = device.type == "cpu" if interleave is None else interleave
    kinds = {v.peak for v in variants}
    before = measure_peaks(device, kinds)
    skipped: dict[str, str] = {}
    prepared: dict[str, Prepared] = {}
    memory: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    for v in variants:
        log.info("bench: preparing %s%s", v.name, f" ({v.description})" if v.description else "")
        try:
            p = v.build()
            memory[v.name], _ = _warm(v.name, p, device, warmup)
        except Exception as e:  # an unavailable path is a line in the report, not the end of the run
            skipped[v.name] = first_line(e)
            log.warning("bench: %s skipped: %s", v.name, skipped[v.name])
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        prepared[v.name] = p
        if not interleave:
            times[v.name] = step_times_ms(p.step, device, steps, warmup=0)
            if not keep:
                p.step = p.embed = None  # type: ignore[assignment]
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    peaks: dict[str, Optional[float]] = dict(before)
    in_rounds: dict[str, Optional[float]] = {}
    if interleave and prepared:
        probes = {k: peak_probe(device, k) for k in sorted(kinds | {"fp32"})}
        probes = {k: p for k, p in probes.items() if p is not None}
        for step, _ in probes.values():
            step()
        log.info("bench: timing %d configurations side by side, %d rounds", len(prepared), steps)
        timed = {n: p.step for n, p in prepared.items()}
        timed.update({f"peak:{k}": step for k, (step, _) in probes.items()})
        times = dict(interleaved_times_ms(timed, device, steps))
        for k, (_, flop) in probes.items():
            in_rounds[k] = sig(flop / (min(times.pop(f"peak:{k}")) / 1e3) / 1e9)
            # The peak is what the hardware can do: the best of every measurement of it in this run.
            peaks[k] = max(x for x in (before.get(k), in_rounds[k]) if x)
    fp32 = peaks.get("fp32")
    timings = []
    for v in variants:
        if v.name not in times:
            continue
        peak = peaks.get(v.peak)
        timings.append(make_timing(v.name, batch, times[v.name], v.flop_per_image, peak, v.peak, fp32,
                                   memory.get(v.name), **prepared[v.name].notes))
    return RunResult(with_ratios(timings), skipped, prepared, {"before": before, "in_rounds": in_rounds or None,
                                                               "used": peaks})
