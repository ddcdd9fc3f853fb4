"""`irface export`: export a model to ONNX, TorchScript, .pth or safetensors."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "export", "Export a model to ONNX, TorchScript, .pth or safetensors")
