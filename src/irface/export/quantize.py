"""int8: onnxruntime static quantisation (QDQ, per-channel weights, int8 activations) calibrated on faces."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from irface.data.transforms import normalize, to_nchw_tensor
from irface.errors import UserError

log = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")
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


QUANT_FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("int8", "uint8")


def quantize_int8(fp32_onnx: str | Path, output: str | Path, calib_images: np.ndarray,
                  batch_size: Optional[int] = None, method: str = "minmax", quant_format: str = "qdq",
                  activations: str = "int8") -> None:
    """Write an int8 QDQ model of `fp32_onnx` to `output`, calibrated on uint8 RGB `calib_images`.

    `batch_size`: the model's fixed batch, or None for a dynamic-batch model. `quant_format` "qoperator"
    with `activations` "uint8" writes onnxruntime's CPU operators (QLinearConv, ...) with uint8
    activations instead: CPU-only, and faster there (`irface bench infer --compare`, benchmarks/README.md).
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise UserError("int8 export needs onnxruntime (pip install onnxruntime)") from None
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
            log.warning("int8: pre-processing skipped (%s: %s)", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        import onnx

        # The blocks' leading BatchNorms (before a padded conv, not foldable) have no channel axis to
        # quantise per channel and no int8 kernel: they stay float between the quantised convs.
        # Mul and Max only appear as PReLU rewritten for speed (irface.export.graph): two fast float
        # passes beat onnxruntime's quantised Mul followed by a float Max.
        op_types = sorted({n.op_type for n in onnx.load(str(source), load_external_data=False).graph.node}
                          - {"BatchNormalization", "Identity", "Mul", "Max"})
        quantize_static(
            str(source), str(output), _reader(calib_images, "data", batch_size or CALIB_BATCH),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator, per_channel=True,
            op_types_to_quantize=op_types,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
        )
    log.info("int8: quantised %d calibration images (%s)", len(calib_images), method)
