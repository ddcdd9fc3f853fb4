"""MindSpore `.ckpt` files read without MindSpore, and the seed's parameter names mapped onto irface's IResNet.

The file is a protobuf `Checkpoint { repeated Value value = 1; }` with `Value { string tag = 1;
TensorProto tensor = 2; }` and `TensorProto { repeated int64 dims = 1; string tensor_type = 2;
bytes tensor_content = 3; }`. MindSpore writes one serialised `Checkpoint` per parameter (and splits
very large tensors into several consecutive values with the same tag); concatenated protobuf messages
parse as one, so the whole file is read as one message. The file is memory-mapped and only the
tensors that are asked for are copied out, after their declared sizes were checked against the
bytes that are really in the file.

Name mapping (see docs/mindspore.md): BatchNorm `gamma`/`beta`/`moving_mean`/`moving_variance` ->
`weight`/`bias`/`running_mean`/`running_var`; PReLU `w` -> `weight`, passed through max(w, 0)
because MindSpore's PReLU multiplies by relu(w); conv and dense weights unchanged (same layouts);
the classifier (`weight`/`bias` without a prefix) -> a softmax head state; optimizer state ignored.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from irface.errors import ModelFileError
from irface.interop.protobuf import LENGTH_DELIMITED, VARINT, WireError, as_int64, iter_fields, iter_packed_varints

log = logging.getLogger(__name__)

# MindSpore's tensor_type strings -> little-endian numpy dtypes. BFloat16 is read as raw 16-bit words.
MS_DTYPES: dict[str, np.dtype] = {
    "Float32": np.dtype("<f4"), "Float16": np.dtype("<f2"), "Float64": np.dtype("<f8"),
    "BFloat16": np.dtype("<u2"),
    "Int8": np.dtype("i1"), "Int16": np.dtype("<i2"), "Int32": np.dtype("<i4"), "Int64": np.dtype("<i8"),
    "UInt8": np.dtype("u1"), "UInt16": np.dtype("<u2"), "UInt32": np.dtype("<u4"), "UInt64": np.dtype("<u8"),
    "Bool": np.dtype("?"),
}
FLOAT_TYPES = ("Float32", "Float16", "Float64", "BFloat16")

# Entries a training checkpoint holds besides the network: optimizer slots and bookkeeping scalars.
OPTIMIZER_PREFIXES = ("moments.", "moment1.", "moment2.", "accum.", "adam_m.", "adam_v.", "vhat.",
                      "mean_square.", "mean_grad.", "optimizer.")
BOOKKEEPING = {"learning_rate", "global_step", "beta1_power", "beta2_power", "scale_sense", "loss_scale",
               "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num"}

# MindSpore parameter name (last component) -> PyTorch name.
PARAM_RENAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                 "moving_variance": "running_var", "w": "weight"}


@dataclass
class TensorEntry:
    """One named tensor in a checkpoint: its declared shape and type and where its bytes lie in the file."""

    name: str
    dims: tuple[int, ...]
    dtype: str
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (start, end) byte offsets

    @property
    def nbytes(self) -> int:
        return sum(end - start for start, end in self.chunks)

    @property
    def numel(self) -> int:
        return math.prod(self.dims) if self.dims else 1


class MindSporeCheckpoint:
    """A memory-mapped MindSpore checkpoint: `entries` by name (file order), `tensor(name)` decodes one.

    Use as a context manager, or call `close()`; decoded tensors own their memory and outlive it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.path}: is a folder, not a MindSpore checkpoint") from None
        self._mm: Optional[mmap.mmap] = None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise ModelFileError(f"{self.path}: empty file, not a MindSpore checkpoint")
            self._mm = mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._refuse_other_formats(mm)
            self.entries = self._scan(mm)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "MindSporeCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._file.close()

    def _refuse_other_formats(self, mm: mmap.mmap) -> None:
        head = mm[:4]
        # PyTorch Lightning also names its files .ckpt: say so instead of "malformed protobuf".
        if head == b"PK\x03\x04":
            raise ModelFileError(f"{self.path}: a zip archive (a PyTorch / Lightning checkpoint?), not a MindSpore "
                                 "checkpoint; rename it to .pt to load it as a PyTorch file")
        if head[:1] == b"\x80":
            raise ModelFileError(f"{self.path}: a Python pickle (a PyTorch checkpoint?), not a MindSpore checkpoint; "
                                 "rename it to .pt to load it as a PyTorch file")

    def _bad(self, why: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a MindSpore checkpoint ({why})")

    def _scan(self, buf: mmap.mmap) -> dict[str, TensorEntry]:
        entries: dict[str, TensorEntry] = {}
        previous: Optional[TensorEntry] = None
        try:
            for fnum, wire, value in iter_fields(buf):
                if fnum == 1 and wire == LENGTH_DELIMITED:
                    entry = self._parse_value(buf, *value)
                    if entry is None:
                        previous = None
                        continue
                    if previous is not None and previous.name == entry.name:
                        # A large tensor split into consecutive slices: same tag, same declared shape.
                        if (previous.dims, previous.dtype) != (entry.dims, entry.dtype):
                            raise self._bad(f"slices of '{entry.name}' disagree on shape or type")
                        previous.chunks.extend(entry.chunks)
                        continue
                    if entry.name in entries:
                        log.debug("%s: '%s' appears twice; the later one wins (as in MindSpore)", self.path, entry.name)
                        del entries[entry.name]
                    entries[entry.name] = previous = entry
                elif fnum == 2 and wire == VARINT:
                    continue  # crc_num of newer MindSpore versions
                else:
                    raise self._bad(f"unexpected top-level field {fnum} (wire type {wire})")
        except WireError as e:
            raise self._bad(str(e)) from None
        if not entries:
            raise self._bad("no tensors in it")
        for entry in entries.values():
            self._check_size(entry)
        return entries

    def _parse_value(self, buf, start: int, end: int) -> Optional[TensorEntry]:
        tag: Optional[str] = None
        tensor: Optional[tuple[int, int]] = None
        has_map = False
        for fnum, wire, value in iter_fields(buf, start, end):
            if fnum == 1 and wire == LENGTH_DELIMITED:
                try:
                    tag = bytes(buf[value[0]:value[1]]).decode("utf-8")
                except UnicodeDecodeError:
                    raise self._bad(f"a parameter name at byte {value[0]} is not UTF-8 text") from None
            elif fnum == 2 and wire == LENGTH_DELIMITED:
                tensor = value
            elif fnum == 3 and wire == LENGTH_DELIMITED:
                has_map = True  # a MapTensor (embedding tables): not part of any IResNet
            else:
                raise self._bad(f"unexpected field {fnum} (wire type {wire}) in a value at byte {start}")
        if tag is None or (tensor is None and not has_map):
            raise self._bad(f"a value at byte {start} has no name or no tensor")
        if tensor is None:
            log.info("%s: skipping map tensor '%s' (not supported)", self.path, tag)
            return None
        dims: list[int] = []
        dtype: Optional[str] = None
        content: Optional[tuple[int, int]] = None
        for fnum, wire, value in iter_fields(buf, *tensor):
            if fnum == 1 and wire == VARINT:
                dims.append(as_int64(value))
            elif fnum == 1 and wire == LENGTH_DELIMITED:  # packed encoding of the repeated dims
                dims.extend(as_int64(v) for v in iter_packed_varints(buf, *value))
            elif fnum == 2 and wire == LENGTH_DELIMITED:
                try:
                    dtype = bytes(buf[value[0]:value[1]]).decode("ascii")
                except UnicodeDecodeError:
                    raise self._bad(f"the type of '{tag}' is not text") from None
            elif fnum == 3 and wire == LENGTH_DELIMITED:
                content = value
            else:
                raise self._bad(f"unexpected field {fnum} (wire type {wire}) in tensor '{tag}'")
        if dtype is None:
            raise self._bad(f"tensor '{tag}' has no type")
        if any(d < 0 for d in dims):
            raise self._bad(f"tensor '{tag}' declares a negative dimension {dims}")
        return TensorEntry(tag, tuple(dims), dtype, [content] if content else [])

    def _check_size(self, entry: TensorEntry) -> None:
        """Declared shape x item size must equal the bytes present (which the file size already bounds)."""
        dtype = MS_DTYPES.get(entry.dtype)
        if dtype is None:
            return  # checked when (if ever) the tensor is decoded
        if entry.dims == (0,):
            # MindSpore's marker for "no shape recorded": a flat tensor of whatever is there.
            if entry.nbytes % dtype.itemsize:
                raise self._bad(f"tensor '{entry.name}' holds {entry.nbytes} bytes, not a whole number of {entry.dtype}")
            return
        expected = entry.numel * dtype.itemsize  # Python ints: a crafted shape cannot overflow
        if expected != entry.nbytes:
            shape = "x".join(map(str, entry.dims)) or "scalar"
            raise self._bad(f"tensor '{entry.name}' declares {shape} {entry.dtype} ({expected:,} bytes) "
                            f"but holds {entry.nbytes:,} bytes")

    def tensor(self, name: str) -> torch.Tensor:
        """Decode one tensor (a copy that owns its memory); raises for types irface does not read."""
        entry = self.entries[name]
        dtype = MS_DTYPES.get(entry.dtype)
        if dtype is None:
            raise ModelFileError(f"{self.path}: tensor '{name}' has type {entry.dtype!r}, which irface does not read "
                                 f"(supported: {', '.join(MS_DTYPES)})")
        if self._mm is None:
            raise ValueError("checkpoint is closed")
        parts = [np.frombuffer(self._mm, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start)
                 for start, end in entry.chunks]
        arr = np.concatenate(parts) if len(parts) != 1 else parts[0].copy()
        if entry.dims != (0,):
            arr = arr.reshape(entry.dims)
        if entry.dtype == "BFloat16":
            return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(arr)


def read_mindspore_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a MindSpore checkpoint by its MindSpore name, in file order, dtypes as stored."""
    with MindSporeCheckpoint(path) as ckpt:
        return {name: ckpt.tensor(name) for name in ckpt.entries}


def _is_training_state(name: str) -> bool:
    return name.startswith(OPTIMIZER_PREFIXES) or name in BOOKKEEPING


def _backbone_prefix(names: list[str]) -> Optional[str]:
    """The prefix under which the network's parameters live ('' for the seed's files)."""
    found = []
    for name in names:
        if name.endswith("conv1.weight") and not _is_training_state(name):
            prefix = name[: -len("conv1.weight")]
            if f"{prefix}fc.weight" in names and f"{prefix}bn1.gamma" in names:
                found.append(prefix)
    return min(found, key=len) if found else None


def torch_name(ms_name: str) -> str:
    """`layer1.0.bn1.gamma` -> `layer1.0.bn1.weight`, `prelu.w` -> `prelu.weight`; others unchanged."""
    module, dot, param = ms_name.rpartition(".")
    return f"{module}{dot}{PARAM_RENAMES.get(param, param)}"


def mindspore_name(key: str, ndim: int) -> str:
    """The seed's name for an IResNet state-dict key (for messages): the inverse of `torch_name`."""
    module, dot, param = key.rpartition(".")
    if param == "weight" and ndim == 1:
        param = "w" if module.endswith("prelu") else "gamma"
    else:
        param = {"bias": "beta" if ndim == 1 and not module == "fc" else "bias", "running_mean": "moving_mean",
                 "running_var": "moving_variance"}.get(param, param)
    return f"{module}{dot}{param}"


def _expected_state(arch: dict[str, Any]) -> dict[str, torch.Size]:
    from irface.models.iresnet import IResNet

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = IResNet(**arch)
    return {k: v.shape for k, v in model.state_dict().items()}


def read_mindspore_backbone(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The seed's backbone from a MindSpore `.ckpt` as an irface / PyTorch IResNet state dict.

    Returns (state_dict, info). `info` has `format`, `network` (registered name or None), `arch`
    (IResNet keyword arguments), `ignored` (number of entries that are not network weights),
    `prelu_clamped` (negative PReLU slopes set to 0, see the module docstring) and, when the file
    holds the seed's classifier, `head` = {kind: softmax, num_classes, embedding_size, state}.
    Floating tensors come out as float32 (lossless from Float16 / BFloat16).
    """
    from irface.models.variants import arch_from_state_dict, network_for_layers

    path = Path(path)
    with MindSporeCheckpoint(path) as ckpt:
        names = list(ckpt.entries)
        prefix = _backbone_prefix(names)
        if prefix is None:
            raise ModelFileError(f"{path}: a MindSpore checkpoint, but not of an IResNet "
                                 f"(no conv1.weight / bn1.gamma / fc.weight among {len(names)} entries)")

        def load(name: str) -> torch.Tensor:
            t = ckpt.tensor(name)
            if ckpt.entries[name].dtype in FLOAT_TYPES:
                return t.float()
            raise ModelFileError(f"{path}: network weight '{name}' has type {ckpt.entries[name].dtype}, "
                                 "expected a float type")

        state: dict[str, torch.Tensor] = {}
        ignored: list[str] = []
        head_names = [n for n in ("weight", "bias") if n in ckpt.entries]
        clamped = 0
        for name in names:
            if _is_training_state(name) or not name.startswith(prefix) or name in head_names:
                if name not in head_names:
                    ignored.append(name)
                continue
            key = torch_name(name[len(prefix):])
            value = load(name)
            if name.endswith("prelu.w"):
                # MindSpore's PReLU multiplies negative inputs by relu(w): store what it computes with.
                clamped += int((value < 0).sum())
                value = value.clamp_min(0)
            state[key] = value
            if key.endswith(".running_mean"):
                state[key[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

        try:
            arch = arch_from_state_dict(state)
        except (KeyError, ValueError) as e:
            raise ModelFileError(f"{path}: {e.args[0] if e.args else e}") from None
        expected = _expected_state(arch)
        missing = [mindspore_name(k, len(v)) for k, v in expected.items() if k not in state]
        extra = [f"{prefix}{k}" for k in state if k not in expected]
        if missing or extra:
            what = []
            if missing:
                what.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            if extra:
                what.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
            raise ModelFileError(f"{path}: the weights do not form an IResNet ({'; '.join(what)})")
        for k, shape in expected.items():
            if state[k].shape != shape:
                raise ModelFileError(f"{path}: '{prefix}{mindspore_name(k, len(shape))}' has shape "
                                     f"{list(state[k].shape)}, the IResNet it belongs to needs {list(shape)}")
        state = {k: state[k] for k in expected}  # the order of a freshly built IResNet

        info: dict[str, Any] = {"format": "mindspore", "arch": arch, "network": network_for_layers(arch["layers"]),
                                "ignored": len(ignored), "prelu_clamped": clamped}
        if "weight" in ckpt.entries:
            w_entry = ckpt.entries["weight"]
            emb = arch["embedding_size"]
            if len(w_entry.dims) == 2 and w_entry.dims[1] == emb:
                head = {"weight": load("weight")}
                if "bias" in ckpt.entries and ckpt.entries["bias"].dims == (w_entry.dims[0],):
                    head["bias"] = load("bias")
                else:
                    head["bias"] = torch.zeros(w_entry.dims[0])
                info["head"] = {"kind": "softmax", "num_classes": int(w_entry.dims[0]), "embedding_size": emb,
                                "state": head}
            else:
                log.warning("%s: 'weight' of shape %s is not a classifier over %d-d embeddings; ignored",
                            path, list(w_entry.dims), emb)
    if ignored:
        shown = ", ".join(sorted({n.split(".")[0] + (".*" if "." in n else "") for n in ignored})[:6])
        log.info("%s: ignored %d entries that are not network weights (%s)", path, len(ignored), shown)
    if clamped:
        log.info("%s: %d negative PReLU slopes stored as 0 (MindSpore's PReLU uses max(w, 0))", path, clamped)
    return state, info
