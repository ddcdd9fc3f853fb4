"""ONNX export in the layout ONNX Runtime ArcFace pipelines expect.

Input `data`: float32 (batch, 3, S, S), RGB, normalised (x - 127.5) / 127.5; output `embedding`:
float32 (batch, E), not L2-normalised (like the PyTorch model). Only the batch axis is dynamic, so
consumers that read the input size off the session's input shape get integers.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from irface.export.options import DEFAULT_OPSET

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"


class HalfPrecision(nn.Module):
    """Runs the wrapped model in float16 behind float32 input and output, so consumers feed the same tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_onnx(model: nn.Module, path: str | Path, input_size: int, *, opset: int = DEFAULT_OPSET,
                batch_size: Optional[int] = None, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `model` (eval mode, on CPU) to `path`; `batch_size=None` makes the batch axis dynamic."""
    import onnx

    example = torch.zeros(batch_size or 1, 3, input_size, input_size)
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript-based exporter needs no onnxscript and honours `dynamic_axes`.
        kwargs["dynamo"] = False
    dynamic_axes = None if batch_size else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices are not the user's concern
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, **kwargs)
    if metadata:
        proto = onnx.load(str(path))
        set_metadata(proto, metadata)
        onnx.save(proto, str(path))


def set_metadata(proto, metadata: Mapping[str, str]) -> None:
    """Replace or add `metadata_props` entries (key -> string value) on an ONNX ModelProto."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)


