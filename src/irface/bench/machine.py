"""What machine a figure was measured on, read from /proc (stdlib only: the benchmarks/ scripts label their
figures with it without importing torch into the processes whose memory they measure)."""

from __future__ import annotations

import platform
from typing import Optional


def proc_field(path: str, key: str) -> Optional[str]:
    """The value of the first `key: value` line of a /proc file (None where there is no such file or line)."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((proc_field("/proc/cpuinfo", "flags") or "").split())


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 bf16: where bf16 convolutions beat fp32 on a CPU."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
