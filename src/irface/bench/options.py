"""What each `irface bench` command measures, with its defaults: declared here once, read by the CLI.

Light on purpose (no torch): the CLI builds its arguments from these before any benchmark is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from irface.config import TrainConfig
from irface.detect.settings import DEFAULT_DETECTOR

_CFG = TrainConfig()
RUNTIMES = ("torch", "ort", "ort-int8", "ort-int8-cpu")


@dataclass
class TrainOptions:
    """`irface bench train`; every default is `irface train`'s."""

    network: str = _CFG.network
    batch_size: int = _CFG.batch_size
    steps: int = 10
    warmup: int = 2
    precision: str = _CFG.precision
    channels_last: bool = _CFG.channels_last
    compile: bool = _CFG.compile
    fused_sgd: bool = False
    device: str = _CFG.device
    head: str = _CFG.head
    num_classes: int = _CFG.num_classes
    embedding_size: int = _CFG.embedding_size
    sample_rate: float = _CFG.sample_rate
    compare: bool = False
    variants: Optional[list[str]] = None
    interleave: Optional[bool] = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferOptions:
    """`irface bench infer`; defaults: what `irface embed` / `eval` run (load_model, batch 64)."""

    network: str = "iresnet100"
    model: Optional[str] = None
    batch_size: int = 64
    steps: int = 10
    warmup: int = 2
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    fold_bn: bool = True
    runtime: str = "torch"  # one of RUNTIMES: torch, ort (onnxruntime fp32), ort-int8 (as exported), ort-int8-cpu
    device: str = "cpu"
    compare: bool = False
    variants: Optional[list[str]] = None  # with compare: a subset of the paths, by name
    calib: Optional[str] = None  # folder of faces or .bin for int8 calibration and agreement
    interleave: Optional[bool] = None  # default: side by side on CPU, one after another on CUDA
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataOptions:
    """`irface bench data`: the training loader over a RecordIO folder, with `irface train`'s workers."""

    data: str = ""
    batch_size: int = _CFG.batch_size
    steps: int = 20
    warmup: int = 2
    workers: int = _CFG.num_workers
    device: str = "cpu"


@dataclass
class EvalOptions:
    """`irface bench eval`: `irface eval`'s pass over one `.bin`."""

    bin: str = ""
    model: Optional[str] = None
    network: str = "iresnet100"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    steps: int = 1
    warmup: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    flip: bool = True


@dataclass
class PhotoOptions:
    """`irface bench photo`: a photo to faces and embeddings, as `irface embed` runs it."""

    photo: str = ""
    model: str = ""
    sizes: str = "640x480,1280x960"  # WIDTHxHEIGHT,...: the photo is resized to each
    det_size: int = DEFAULT_DETECTOR.det_size  # as the commands detect
    steps: int = 20
    warmup: int = 3
    device: str = "cpu"


@dataclass
class ScaleOptions:
    """`irface bench scale`: Partial FC's cost against classes, ranks and sample rate."""

    classes: list[int] = field(default_factory=lambda: [100_000, 1_000_000, 10_000_000])
    ranks: list[int] = field(default_factory=lambda: [1, 8])
    sample_rates: list[float] = field(default_factory=lambda: [1.0, 0.1])
    embedding_size: int = 64
    batch_size: int = 64
    steps: int = 3
    warmup: int = 1
    device: str = "cpu"
    max_memory_gb: float = 6.0
    head: str = "arcface"
    paper_embedding_size: int = 512
    paper_batch_size: int = 128
    paper_gpus: int = 8
    gpu_memory_gb: float = 80.0
    backbone_memory_gb: float = 20.0  # iresnet100 training at 128 images, bf16 (assumed; gpu.sh measures it)
