"""Read backbone weights from any file irface understands, without the training engine.

- an irface training checkpoint (`.pt`, a dict with `format: irface-checkpoint` and `backbone`),
  or a run folder (its newest complete checkpoint);
- a bare state dict in the common PyTorch IResNet layout or arcface_torch's MobileFaceNet / ViT
  layout (`backbone.pth`), possibly under a `state_dict` / `model` key, possibly with a `module.`
  prefix from DDP;
- a safetensors file;
- a MindSpore `.ckpt` of the seed (converted in memory by `irface.interop.mindspore`).

The architecture is read off the keys, so no network name is needed; when one is given it is checked.
Torch files are loaded with `weights_only=True`: a checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from irface.errors import ModelFileError, first_line, import_extra
from irface.models.iresnet import IResNet
from irface.models.variants import check_network, identify_state_dict

CHECKPOINT_FORMAT = "irface-checkpoint"
CHECKPOINT_GLOB = "checkpoint-*.pt"


_CHECKPOINT_NAME = re.compile(r"^checkpoint-e(\d+)-s(\d+)\.pt$")


def checkpoint_step(path: str | Path) -> Optional[int]:
    """The optimizer step in an engine checkpoint's name (`checkpoint-e0003-s00012000.pt` -> 12000)."""
    m = _CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(2)) if m else None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The run folder's checkpoints, oldest first: by the step in the name (then the name), not by mtime.

    File times lie after a copy or a restore from backup; the step in the name does not.
    """
    found = [p for p in Path(folder).glob(CHECKPOINT_GLOB) if p.is_file()]
    return sorted(found, key=lambda p: (checkpoint_step(p) is not None, checkpoint_step(p) or 0, p.name))


def is_complete_checkpoint_file(path: str | Path) -> bool:
    """Cheap completeness check: a whole torch zip archive (a truncated one has no end record)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def newest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint in a run folder (the highest step in its name); None if none.

    The engine writes each checkpoint to a temporary name and renames it; a file that is not a whole
    archive anyway (copied half-way, a full disk) is passed over. The engine's own resume also checks
    the tensors' digest stored inside.
    """
    for path in reversed(list_checkpoints(folder)):
        if is_complete_checkpoint_file(path):
            return path
    return None


def model_file_path(path: str | Path) -> Path:
    """The file a model argument names: itself, or a run folder's newest complete checkpoint."""
    path = Path(path)
    if path.is_dir():
        ckpt = newest_checkpoint(path)
        if ckpt is None:
            raise ModelFileError(f"{path}: a folder with no complete checkpoint ({CHECKPOINT_GLOB}) in it")
        path = ckpt
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    return path


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, in the legacy format, a pickle starting with PROTO 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def is_torchscript_archive(path: str | Path) -> bool:
    """A TorchScript archive (code and constants beside the tensors), as torch.jit.save writes."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or n.endswith("code/__torch__.py") or "/code/" in n
                       for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def refusal_reason(error: BaseException) -> str:
    """What `torch.load(weights_only=True)` refused, in a few words, without its advice to load unsafely.

    PyTorch's message says that re-running with weights_only=False "will likely succeed": for a file
    from the internet that is exactly the wrong advice, so only the name of the refused object is kept.
    """
    text = str(error)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it refers to the Python object {m.group(1).rstrip('.')}"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if m:
        return m.group(1).split(". ")[0].strip().rstrip(".")
    return "it holds Python objects, not only tensors"


def _torch_load(path: Path) -> Any:
    if not _looks_like_torch_file(path):
        raise ModelFileError(f"{path}: not a PyTorch weights file (neither a torch.save archive nor a pickle)")
    if is_torchscript_archive(path):
        raise ModelFileError(f"{path}: a TorchScript model, not a weights file; use a checkpoint, a .pth state dict "
                             "or .safetensors here (embed, verify and eval run TorchScript files)")
    return load_weights_only(path, "a PyTorch weights file")


def load_weights_only(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)`: nothing in the file runs; `what` names the file expected, in errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"{path}: refused to load: the file holds more than weights ({refusal_reason(e)}); "
                             "nothing in it was run") from None
    except Exception as e:
        raise ModelFileError(f"{path}: not {what} ({first_line(e)})") from None


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("module.", "backbone.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_backbone_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Backbone state dict and what the file said about itself (`kind`, and `config` for checkpoints)."""
    path = model_file_path(path)
    suffix = path.suffix.lower()
    if suffix == ".ckpt":
        from irface.interop.mindspore import read_mindspore_backbone  # only this file type needs it

        state, info = read_mindspore_backbone(path)
        return state, {"kind": "mindspore", "path": str(path), **info}
    if suffix == ".safetensors":
        load_file = import_extra("safetensors.torch", f"{path}: reading safetensors", "export", ModelFileError).load_file
        try:
            return _strip_prefix(load_file(str(path))), {"kind": "safetensors", "path": str(path)}
        except Exception as e:
            raise ModelFileError(f"{path}: not a safetensors file ({e})") from None
    if suffix == ".onnx":
        raise ModelFileError(f"{path}: an ONNX model has no PyTorch weights; use it where a model file is accepted for inference")
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj["backbone"], {"kind": "irface-checkpoint", "path": str(path), "config": obj.get("config", {}),
                                 "threshold": obj.get("threshold"), "cluster_threshold": obj.get("cluster_threshold")}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "backbone"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not a checkpoint or state dict (found {type(obj).__name__})")
    return _strip_prefix(obj), {"kind": "state-dict", "path": str(path)}


def load_backbone(path: str | Path, network: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the backbone stored in `path` (IResNet, MobileFaceNet or ViT, read off the keys) and load its
    weights (strict); check `network` if given. `info` gets `network` (registered name or None), `family`
    (the class name) and `arch` (its constructor arguments)."""
    state, info = read_backbone_state(path)
    try:
        cls, arch, name = identify_state_dict(state)
    except KeyError as e:
        raise ModelFileError(f"{info['path']}: {e.args[0]}") from None
    check_network(network, name, info["path"], f"{'an' if cls is IResNet else 'a'} {cls.__name__} {arch}")
    model = cls(**arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{info['path']}: weights do not fit {name or cls.__name__}: {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    info.update(network=name, family=cls.__name__, arch=arch)
    return model, info
