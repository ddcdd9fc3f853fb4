"""Timing primitives: warm-up then the median of timed steps, side by side when comparing.

When several configurations are compared they are timed in interleaved rounds (one step of each,
round after round) so that a change in the machine's load mid-run falls on all of them alike; the
ratios are then taken between medians measured in the same rounds.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from irface.bench.machine import cpu_flags, cpu_model, proc_field
from irface.device import DTYPES, onnx_session

log = logging.getLogger(__name__)

Step = Callable[[], object]


@dataclass
class Timing:
    """One measured configuration. `fraction_of_peak` is against `peak_name`'s measured rate."""

    name: str
    batch_size: int
    ms_per_step: float
    ms_min: float
    images_per_s: float
    gflop_per_image: float
    achieved_gflops: float
    steps: int
    fraction_of_peak: Optional[float] = None
    peak_name: Optional[str] = None
    fraction_of_fp32_peak: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    ratio_to_baseline: Optional[float] = None
    ratio_min_to_baseline: Optional[float] = None
    cpu_ms_per_step: Optional[float] = None
    ratio_cpu_to_baseline: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimes(list):
    """Wall times of steps in ms, with `cpu`: the process's CPU time (all threads) of each step.

    On a shared machine the wall time includes waiting for the other processes; the CPU time mostly not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[float] = []


def _timed(step: Step, device: torch.device, into: Optional[StepTimes] = None) -> float:
    c0, t0 = time.process_time(), time.perf_counter()
    step()
    synchronize(device)
    wall = (time.perf_counter() - t0) * 1e3
    if into is not None:
        into.cpu.append((time.process_time() - c0) * 1e3)
        into.append(wall)
    return wall


def cpu_times_of(wall_times: list[float]) -> list[float]:
    """The CPU times recorded with `wall_times` (same order), or [] if none were."""
    return getattr(wall_times, "cpu", [])


def step_times_ms(step: Step, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Wall times of `steps` calls of `step` in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = StepTimes()
    for _ in range(steps):
        _timed(step, device, times)
    return times


def interleaved_times_ms(steps_by_name: dict[str, Step], device: torch.device, rounds: int) -> dict[str, StepTimes]:
    """Time one call of every step per round, `rounds` rounds, the order rotating each round.

    The callers warm every step up first. Rotating the order keeps any one configuration from always
    following the same neighbour (whose caches or clocks it would inherit).
    """
    names = list(steps_by_name)
    times: dict[str, StepTimes] = {n: StepTimes() for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            _timed(steps_by_name[name], device, times[name])
    return times


# --- memory -------------------------------------------------------------------------------------

_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark: CUDA's allocator peak, or on Linux the process's peak RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0).
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_memory`: CUDA allocated bytes, or the process's peak RSS on CPU.

    On CPU this is the whole process (model, inputs, every library), which is what a user's process needs.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    hwm = proc_field("/proc/self/status", "VmHWM")
    if hwm is not None:
        return int(hwm.split()[0]) / 1024
    # ru_maxrss is KiB on Linux: the high-water mark since the process began.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the device ---------------------------------------------------------------------------------

def device_info(device: torch.device) -> dict:
    """What the figures were measured on: card or CPU model, cores, threads, library versions."""
    import os

    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "cpu_cores": os.cpu_count()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, card_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    # "fp32" figures on a GPU mean TF32 tensor cores when these are on.
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_conv=torch.backends.cudnn.allow_tf32)
    else:
        flags = cpu_flags()
        info["cpu_features"] = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                               "amx_int8", "avx_vnni", "avx512_fp16"})
    return info


# --- the peak -----------------------------------------------------------------------------------

# Size and duration of the peak measurement (tests shrink them: they check the plumbing, not the figure).
PEAK_N = 2048
PEAK_SECONDS = 1.0
# A GPU finishes a 2048^3 product in tens of microseconds, so launch and timer overhead would hide
# its rate; 8192^3 (1.1 TFLOP) runs for milliseconds even on an H100 in bf16.
PEAK_N_CUDA = 8192


def peak_size(device: torch.device) -> int:
    """The matrix side used to measure `device`'s matmul peak."""
    return PEAK_N_CUDA if device.type == "cuda" else PEAK_N


def _matmul_probe(device: torch.device, dtype: torch.dtype, n: int) -> tuple[Step, float]:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return (lambda: a @ b), 2.0 * n ** 3


def _ort_int8_probe(n: int, threads: int) -> Optional[tuple[Step, float]]:
    """One n x n MatMulInteger (uint8 x int8) on onnxruntime and its FLOPs; None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    sess = onnx_session(model.SerializeToString(), threads=threads)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    return (lambda: sess.run(None, feeds)), 2.0 * n ** 3


def _best_gflops(probe: tuple[Step, float], device: torch.device, seconds: Optional[float] = None) -> float:
    """A probe's rate (GFLOP/s) from its fastest call: at least 3 calls and `seconds` of them, after 2 untimed."""
    step, flop = probe
    seconds = PEAK_SECONDS if seconds is None else seconds
    for _ in range(2):
        step()
    synchronize(device)
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - start < seconds:
        best = min(best, _timed(step, device) / 1e3)
        reps += 1
    # The best call, not the mean: on a shared machine the fastest call is the closest to the hardware's rate.
    return flop / best / 1e9


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The device's achievable dense matmul rate in `dtype`, measured now (GFLOP/s, best of the timed calls)."""
    return _best_gflops(_matmul_probe(device, dtype, peak_size(device)), device)


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits (tiny test networks give tiny figures, not zeros)."""
    return float(f"{x:.{digits}g}")


def peak_probe(device: torch.device, kind: str) -> Optional[tuple[Step, float]]:
    """(one matmul call, its FLOPs) for `kind` (fp32, bf16, fp16, int8), to time beside the configurations;
    int8 is onnxruntime's, on CPU only."""
    if kind == "int8":
        return _ort_int8_probe(PEAK_N // 2, torch.get_num_threads()) if device.type == "cpu" else None
    return _matmul_probe(device, DTYPES[kind] or torch.float32, peak_size(device))


def measure_peaks(device: torch.device, kinds: set[str]) -> dict[str, Optional[float]]:
    """Matmul peaks (GFLOP/s) for fp32 and every kind in `kinds`, measured now."""
    peaks: dict[str, Optional[float]] = {}
    for kind in sorted(kinds | {"fp32"}):  # one probe's matrices at a time
        probe = peak_probe(device, kind)
        peaks[kind] = sig(_best_gflops(probe, device)) if probe else None
    return peaks


def make_timing(name: str, batch: int, times_ms: list[float], flop_per_image: float,
                peak_gflops: Optional[float], peak_name: Optional[str], fp32_peak: Optional[float],
                memory_mb: Optional[float] = None, **extra) -> Timing:
    """A Timing from the raw step times: median for the figures, the minimum alongside."""
    ms = statistics.median(times_ms)
    cpu = cpu_times_of(times_ms)
    ips = batch / (ms / 1e3)
    achieved = ips * flop_per_image / 1e9
    return Timing(
        name=name, batch_size=batch, ms_per_step=sig(ms, 5), ms_min=sig(min(times_ms), 5),
        images_per_s=sig(ips), gflop_per_image=sig(flop_per_image / 1e9), achieved_gflops=sig(achieved),
        steps=len(times_ms),
        fraction_of_peak=sig(achieved / peak_gflops, 3) if peak_gflops else None,
        peak_name=peak_name if peak_gflops else None,
        fraction_of_fp32_peak=sig(achieved / fp32_peak, 3) if fp32_peak else None,
        peak_memory_mb=round(memory_mb, 1) if memory_mb is not None else None,
        cpu_ms_per_step=sig(statistics.median(cpu), 5) if cpu else None, extra=extra,
    )


def with_ratios(timings: list[Timing]) -> list[Timing]:
    """Ratios to the first entry (the baseline), measured in the same run."""
    if timings:
        base, base_min = timings[0].images_per_s, timings[0].ms_min
        for t in timings:
            t.ratio_to_baseline = sig(t.images_per_s / base, 4)
            # The fastest steps: on a shared machine, the least disturbed measure of each configuration.
            t.ratio_min_to_baseline = sig(base_min / t.ms_min * t.batch_size / timings[0].batch_size, 4)
            if t.cpu_ms_per_step and timings[0].cpu_ms_per_step:
                # CPU time per image: the work a configuration needs, whatever else the machine ran.
                t.ratio_cpu_to_baseline = sig(timings[0].cpu_ms_per_step / timings[0].batch_size
                                              / (t.cpu_ms_per_step / t.batch_size), 4)
    return timings
