"""Speed measurements behind `irface bench`: warm-up, then the median of timed steps.

Every figure comes with the work it did (FLOPs counted from the model's own layers) and the
device's matmul peak measured in the same run, so a speed reads as a fraction of what the hardware
can do. Nothing here is asserted by tests: benchmarks report, tests check behaviour.
"""

from irface.bench.flops import count_flops, head_flops, train_flops
from irface.bench.infer import bench_infer
from irface.bench.options import InferOptions
from irface.bench.timing import (
    Timing, device_info, interleaved_times_ms, make_timing, matmul_peak_gflops, peak_memory_mb,
    with_ratios,
)

__all__ = [
    "InferOptions", "Timing", "bench_infer", "count_flops", "device_info", "head_flops", "interleaved_times_ms",
    "make_timing", "matmul_peak_gflops", "peak_memory_mb", "train_flops", "with_ratios",
]
