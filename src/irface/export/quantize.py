"""int8: onnxruntime static quantisation (per-channel int8 weights) calibrated on faces, in two forms.

`qdq` (the default) is the portable form: QuantizeLinear/DequantizeLinear pairs around float ops, which
ONNX Runtime (any provider), TensorRT and OpenVINO read. `cpu` is ONNX Runtime's own CPU operators
(QLinearConv, ...) with uint8 activations and PReLU as Max(x, slope x): the fastest on CPUs with VNNI
(benchmarks/README.md), and only for ONNX Runtime's CPU provider.

Both quantise only the blocks' 3x3 convolutions. The stem convolution stays float: its input, the
normalised image (p - 127.5) / 127.5, falls between the steps of any 8-bit grid, and quantising it
alone doubled the int8 error on the demo model, for 0.2% of IResNet-100's FLOPs. So do the 1x1
shortcut convs and the FC (`INT8_OP_TYPES`). What is left of the
error is mostly the requantisation of each conv's output, which int8 kernels need
(benchmarks/README.md, "int8 accuracy").

Those rules are the IResNet's; the other families quantise what carries their work (`quantised_ops`):
MobileFaceNet every conv but the stem (its 1x1 convs are most of its FLOPs, not shortcuts); a ViT its
matrix products (MatMul, Gemm: the linear layers and attention's q k^T and attention x v). A ViT's
LayerNorm, Softmax, GELU-free ReLU6 clip and residual adds stay float between them: onnxruntime has no
int8 kernels for LayerNormalization and Softmax, so each block dequantises around them; its patch
embedding conv is the stem and stays float as well.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from irface.data.transforms import normalize, to_nchw_tensor
from irface.errors import UserError, first_line, import_extra
from irface.export.options import CALIB_METHODS, INT8_FORMS, INT8_METHOD, INT8_OP_TYPES, Int8Form

log = logging.getLogger(__name__)

CALIB_BATCH = 16


def normalised_batch(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) as the model's input (the one normalisation)."""
    return normalize(to_nchw_tensor(images)).numpy()


def _reader(images: np.ndarray, input_name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class FaceReader(CalibrationDataReader):
        """Feeds the calibration faces batch by batch; a fixed-batch model gets only full batches."""

        def __init__(self) -> None:
            self.starts = iter(range(0, len(images), batch))

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            for start in self.starts:
                chunk = images[start:start + batch]
                if len(chunk) < batch:
                    chunk = np.concatenate([chunk, images[:batch - len(chunk)]])
                    if len(chunk) < batch:  # fewer images than one fixed batch: repeat them
                        chunk = np.resize(chunk, (batch,) + images.shape[1:])
                return {input_name: normalised_batch(chunk)}
            return None

    return FaceReader()


def stem_conv_names(model_path: str | Path) -> list[str]:
    """Names of the Conv nodes that read the graph's image input directly (the stem)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def shortcut_conv_names(model_path: str | Path) -> list[str]:
    """Names of the 1x1 Conv nodes: in an IResNet, the shortcuts of each stage's first block."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and len(n.input) > 1
            and shapes.get(n.input[1], [])[2:] == [1, 1]]


def quantised_ops(model) -> tuple[tuple[str, ...], bool]:
    """(op types to quantise, whether 1x1 convs stay float) for the model's family (see the module doc)."""
    from irface.models import MobileFaceNet, VisionTransformer

    if isinstance(model, VisionTransformer):
        return ("MatMul", "Gemm"), False
    if isinstance(model, MobileFaceNet):
        return ("Conv",), False
    return INT8_OP_TYPES, True


def write_int8_onnx(model, output: str | Path, calib_images: np.ndarray, form: str = "qdq", *,
                    batch_size: Optional[int] = None, opset: Optional[int] = None,
                    method: Optional[str] = None, workdir: Optional[str | Path] = None,
                    fold_bn: bool = True) -> Int8Form:
    """Write an int8 ONNX model of the PyTorch backbone `model` (eval mode) to `output` in `form`.

    `fold_bn=False` keeps every BatchNorm (as `irface export --no-fold-bn`); otherwise the form decides.
    """
    from irface.models.fold import fold_batchnorm
    from irface.export.graph import prelu_as_max
    from irface.export.onnx_export import DEFAULT_OPSET, export_onnx

    if form not in INT8_FORMS:
        raise UserError(f"unknown int8 form '{form}'; known: {', '.join(INT8_FORMS)}")
    spec = INT8_FORMS[form]
    with tempfile.TemporaryDirectory(prefix="irface-int8-", dir=workdir) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        net = fold_batchnorm(model, leading=False) if fold_bn else model
        export_onnx(net, fp32, model.input_size, opset=opset or DEFAULT_OPSET, batch_size=batch_size)
        if spec.prelu_as_max:
            rewritten = Path(tmp) / "fp32-max.onnx"
            prelu_as_max(fp32, rewritten)
            fp32 = rewritten
        op_types, float_1x1 = quantised_ops(model)
        keep_float = stem_conv_names(fp32) + (shortcut_conv_names(fp32) if float_1x1 else [])
        quantize_int8(fp32, output, calib_images, batch_size, method or INT8_METHOD, quant_format=spec.quant_format,
                      activations=spec.activations, keep_float=keep_float, op_types=op_types)
    return spec


QUANT_FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("int8", "uint8")


def quantize_int8(fp32_onnx: str | Path, output: str | Path, calib_images: np.ndarray,
                  batch_size: Optional[int] = None, method: str = "minmax", quant_format: str = "qdq",
                  activations: str = "int8", keep_float: Sequence[str] = (),
                  op_types: Optional[Sequence[str]] = None) -> None:
    """Write an int8 QDQ model of `fp32_onnx` to `output`, calibrated on uint8 RGB `calib_images`.

    `keep_float`: node names left unquantised. `op_types`: the op types to quantise (default: every
    op type in the graph but BatchNormalization, Identity, Mul and Max).

    `batch_size`: the model's fixed batch, or None for a dynamic-batch model. `quant_format` "qoperator"
    with `activations` "uint8" writes onnxruntime's CPU operators (QLinearConv, ...) with uint8
    activations instead: CPU-only, and faster there (`irface bench infer --compare`, benchmarks/README.md).
    """
    import_extra("onnxruntime.quantization.shape_inference", "int8 export", "export", UserError)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise UserError(f"unknown calibration method '{method}'; known: {', '.join(CALIB_METHODS)}")
    if quant_format not in QUANT_FORMATS or activations not in ACTIVATION_TYPES:
        raise UserError(f"int8: format {quant_format!r} / activations {activations!r}; known: "
                        f"{', '.join(QUANT_FORMATS)} / {', '.join(ACTIVATION_TYPES)}")
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="irface-int8-") as tmp:
        source = Path(fp32_onnx)
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference and graph clean-up first, as onnxruntime recommends before quantising.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            source = prepared
        except Exception as e:  # optional step: quantise the plain export if it fails
            log.warning("int8: pre-processing skipped (%s)", first_line(e))
        import onnx

        # The blocks' leading BatchNorms (before a padded conv, not foldable) have no channel axis to
        # quantise per channel and no int8 kernel: they stay float between the quantised convs.
        # Mul and Max only appear as PReLU rewritten for speed (irface.export.graph): two fast float
        # passes beat onnxruntime's quantised Mul followed by a float Max.
        if op_types is None:
            op_types = sorted({n.op_type for n in onnx.load(str(source), load_external_data=False).graph.node}
                              - {"BatchNormalization", "Identity", "Mul", "Max"})
        # The percentile and entropy calibrators print progress on stdout, which belongs to --json.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(source), str(output), _reader(calib_images, "data", batch_size or CALIB_BATCH),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator, per_channel=True,
                op_types_to_quantize=list(op_types),
                activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                nodes_to_exclude=list(keep_float),
            )
    log.info("int8: quantised %d calibration images (%s)", len(calib_images), method)
