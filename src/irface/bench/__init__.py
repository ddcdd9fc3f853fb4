"""Speed measurements behind `irface bench`: warm-up, then the median of timed steps.

Every figure comes with the work it did (FLOPs counted from the model's own layers) and the
device's matmul peak measured in the same run, so a speed reads as a fraction of what the hardware
can do. Nothing here is asserted by tests: benchmarks report, tests check behaviour.

Import from the modules (`irface.bench.infer`, `.timing`, `.flops`, ...): this package imports nothing,
so `irface.bench.options` (the CLI's defaults) is read without torch.
"""
