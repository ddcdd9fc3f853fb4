"""Export: ONNX, TorchScript, bare state dict, safetensors, int8 ONNX; each checked against PyTorch.

Names are imported on first use, so `irface.export.options` (the CLI's defaults) loads without torch.
"""

from irface.utils import lazy_exports

_HOMES = {"FORMATS": "options", "ExportOptions": "options", "Int8Options": "options", "export_model": "api",
          "format_for": "api", "ParityError": "check", "check_parity": "check", "relative_error": "check"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
