"""Export: ONNX, TorchScript, bare state dict, safetensors, int8 ONNX; each checked against PyTorch."""

from irface.export.api import FORMATS, ExportOptions, Int8Options, export_model, format_for
from irface.export.check import ParityError, check_parity, relative_error
from irface.export.fold import fold_batchnorm

__all__ = ["FORMATS", "ExportOptions", "Int8Options", "ParityError", "check_parity", "export_model", "fold_batchnorm", "format_for", "relative_error"]
