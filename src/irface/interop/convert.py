"""Write a converted foreign checkpoint as a file irface (and other PyTorch code) loads.

The output kind follows the suffix:
- `.pth`: the bare backbone state dict, in the common PyTorch IResNet layout;
- `.safetensors`: the same tensors as safetensors;
- `.pt`: an irface checkpoint (`format: irface-checkpoint`, `config`, `backbone`, and `head` when the
  source holds a classifier), which `irface.models.loading` reads and training can start from.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from irface.errors import UserError, import_extra
from irface.models.loading import CHECKPOINT_FORMAT
from irface.models.variants import check_network, network_for_layers
from irface.utils import atomic_write

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".pth", ".safetensors", ".pt")


def irface_checkpoint(state: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """The dict of an irface checkpoint for converted weights (config filled from the architecture)."""
    from irface.config import TrainConfig

    arch = info["arch"]
    head = info.get("head")
    values: dict[str, Any] = {"embedding_size": arch["embedding_size"], "image_size": arch["input_size"],
                              "head": "softmax"}
    if info.get("network"):
        values["network"] = info["network"]
    if head:
        values["num_classes"] = head["num_classes"]
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "config": TrainConfig(**values).to_dict(),
        "arch": arch,
        "backbone": state,
        "source": {"format": info.get("format"), "path": info.get("path")},
    }
    if head:
        ckpt["head"] = head["state"]
    return ckpt


def write_converted(state: dict[str, torch.Tensor], info: dict[str, Any], output: str | Path) -> Path:
    """Write `state` (and the head in `info`, for `.pt`) to `output`, atomically; the kind follows the suffix."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{output}: the output must end in {', '.join(OUTPUT_SUFFIXES)} "
                        "(bare state dict, safetensors, irface checkpoint)")
    if suffix == ".safetensors":
        save = import_extra("safetensors.torch", f"{output}: writing safetensors", "export", UserError).save
        data = save({k: v.contiguous() for k, v in state.items()},
                    metadata={"format": "pt", "source": str(info.get("format", ""))})
        with atomic_write(output, "wb") as f:
            f.write(data)
    else:
        obj: Any = irface_checkpoint(state, info) if suffix == ".pt" else state
        buf = io.BytesIO()
        torch.save(obj, buf)
        with atomic_write(output, "wb") as f:
            f.write(buf.getvalue())
    if info.get("head") and suffix != ".pt":
        log.info("%s: the classifier (%d classes) is kept only in a .pt irface checkpoint", output,
                 info["head"]["num_classes"])
    return output


def convert_mindspore(source: str | Path, output: str | Path, network: Optional[str] = None) -> dict[str, Any]:
    """MindSpore `.ckpt` -> `.pth` / `.safetensors` / `.pt`; returns a summary (network, tensors, parameters, ...)."""
    from irface.interop.mindspore import read_mindspore_backbone

    source = Path(source)
    state, info = read_mindspore_backbone(source)
    info["path"] = str(source)
    layers = info["arch"]["layers"]
    check_network(network, network_for_layers(layers), str(source), f"an IResNet with depths {layers}")
    out = write_converted(state, info, output)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
    head = info.get("head")
    return {"output": str(out), "network": info.get("network"), "arch": info["arch"], "tensors": len(state),
            "parameters": params, "classes": head["num_classes"] if head else None,
            "head_written": bool(head) and out.suffix.lower() == ".pt",
            "ignored": info["ignored"], "prelu_clamped": info["prelu_clamped"]}
