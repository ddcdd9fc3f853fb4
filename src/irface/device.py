"""Where a model runs and in which precision: device names and precision names resolved in one place."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch

from irface import dist
from irface.errors import ConfigError

DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str, key: str = "precision") -> Optional[torch.dtype]:
    """fp32 -> None (no autocast), bf16 / fp16 -> their dtype; anything else is a ConfigError naming `key`."""
    if precision not in DTYPES:
        raise ConfigError(f"{key}: unknown precision {precision!r} (use {', '.join(DTYPES)})")
    return DTYPES[precision]


def autocast(dtype: Optional[torch.dtype], device: torch.device) -> ContextManager:
    """The forward pass's autocast to `dtype` on `device` (a no-op for None, i.e. fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """auto / cpu / cuda / cuda:N; under torchrun `auto` and `cuda` mean this process's GPU (LOCAL_RANK).

    A name that cannot be used is a ConfigError naming `key` (the config key or option it came from).
    """
    local = dist.get_local_rank()
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local)
    elif device.type != "cpu":
        raise ConfigError(f"{key}: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def onnx_session(source: str | bytes, device: str | torch.device = "cpu", threads: int = 0) -> Any:
    """An onnxruntime session of the ONNX file or bytes `source`, on CUDA when `device` is a GPU and this
    onnxruntime has its provider (else the CPU), with `threads` intra-op threads (0: onnxruntime's choice).
    Quiet: its load-time notices (unused initializers, on every load) are not the user's concern. Callers
    that may lack onnxruntime check for it first (`irface.errors.import_extra`), naming their extra."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(source, sess_options=opts, providers=providers)
