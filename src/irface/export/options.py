"""What `irface export` can write and its defaults: declared here once, read by the exporter and the CLI.

Light on purpose (no torch, no numpy): the CLI builds its arguments from these before anything heavy is
imported, so `irface --help` starts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

FORMATS = ("onnx", "torchscript", "pth", "safetensors")
DEFAULT_OPSET = 17
DEFAULT_CALIB_COUNT = 256
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Mean cosine similarity int8 vs fp32 embeddings of the calibration faces below which int8 is refused.
INT8_MIN_COSINE = 0.95

# Both forms calibrate with percentiles and quantise only Conv ops: the residual Adds and PReLUs were
# further from fp32 and no faster quantised; the 1x1 shortcut convs and the FC (kept float by
# `shortcut_conv_names` and this list) read the raw residual stream, channels of very different ranges
# under one activation scale, and carried most of the int8 error for ~1% of the FLOPs. The blocks'
# leading BatchNorms stay unfolded for the same reason: folded, they leave the conv's input the raw
# residual stream. Activation equalisation (SmoothQuant) lowered the error by cosine but changed more
# decisions for the worse than the better. Figures: benchmarks/README.md, "int8 accuracy".
INT8_METHOD = "percentile"
INT8_OP_TYPES = ("Conv",)


@dataclass(frozen=True)
class Int8Form:
    """How an fp32 backbone becomes int8: graph preparation, then onnxruntime's quantiser's settings."""

    name: str
    prelu_as_max: bool  # rewrite PRelu as Mul + Max (irface.export.graph)
    quant_format: str  # qdq or qoperator
    activations: str  # int8 or uint8
    description: str


INT8_FORMS = {
    "qdq": Int8Form("qdq", False, "qdq", "int8",
                    "QDQ, per-channel int8 weights, int8 activations, 3x3 convs quantised, stem conv, "
                    "shortcuts and FC in float (portable)"),
    "cpu": Int8Form("cpu", True, "qoperator", "uint8",
                    "QOperator, per-channel int8 weights, uint8 activations, 3x3 convs quantised, PReLU as "
                    "Max, stem conv, shortcuts and FC in float (ONNX Runtime CPU)"),
}


@dataclass
class Int8Options:
    """`--int8`: the faces to calibrate on (RecordIO folder, image folder or `.bin`), how many, the
    calibration method (None: the form's), the form, and the least mean cosine to fp32 accepted."""

    calib: Optional[str | Path] = None
    count: int = DEFAULT_CALIB_COUNT
    method: Optional[str] = None
    form: str = "qdq"
    min_cosine: float = INT8_MIN_COSINE


@dataclass
class ExportOptions:
    """How `export_model` writes: `fmt` (None: from the suffix), `network` (to check the file against),
    ONNX `opset`, `batch_size` (None: dynamic), `fp16` weights, `fold_bn`, and `int8` (ONNX only)."""

    fmt: Optional[str] = None
    network: Optional[str] = None
    opset: int = DEFAULT_OPSET
    batch_size: Optional[int] = None
    fp16: bool = False
    fold_bn: bool = True
    int8: Optional[Int8Options] = None
