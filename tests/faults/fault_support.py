"""Hostile and broken files for the fault suite, built by the tests themselves, and a CLI driver.

Every crafted file here is tiny: what makes it hostile is what it declares or what it would run.
The payloads only ever create a marker file, so a test proves that nothing ran by its absence.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine_support import CLASSES, SIZE, tiny_images, tiny_overrides, write_image_folder  # noqa: F401 (re-exported)
from irface.cli import main


# --- running the CLI in-process --------------------------------------------------------------------
def run_cli(argv: list, capsys) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the non-empty stderr lines of `irface ARGV`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_line(code: int, err: list[str], *fragments: str, expected_code: int = 2) -> str:
    """The promise for bad input: exit 2 (1 for system refusals), exactly one stderr line, no traceback."""
    assert code == expected_code, (code, err)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("irface ") and ": error: " in line, line
    assert "Traceback" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# --- code-execution payloads -------------------------------------------------------------------------
class SystemPayload:
    """Unpickling this would run `touch MARKER` through os.system."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class ExecPayload:
    """Unpickling this would run Python source through builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def hostile_pt(path: Path, marker: Path, kind: str = "zip") -> Path:
    """A `.pt` that runs code when loaded without `weights_only`.

    kind: `zip` (torch.save's archive, an irface checkpoint's keys around the payload), `legacy`
    (torch's pre-1.6 format), `pickle` (a bare pickle named .pt), `exec` (builtins.exec payload),
    `torchscript` (a zip that also carries TorchScript's code/ and constants.pkl entries).
    """
    payload = ExecPayload(marker) if kind == "exec" else SystemPayload(marker)
    obj = {"format": "irface-checkpoint", "backbone": {"conv1.weight": payload}, "head": {}, "step": 1,
           "epoch": 1, "digest": "0"}
    if kind in ("zip", "exec", "torchscript"):
        torch.save(obj, path)
        if kind == "torchscript":
            with zipfile.ZipFile(path, "a") as z:
                root = z.namelist()[0].split("/")[0]
                z.writestr(f"{root}/code/__torch__.py", "def forward(self, x):\n    return x\n")
                z.writestr(f"{root}/constants.pkl", pickle.dumps((payload,), protocol=2))
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        raise ValueError(kind)
    return path


PT_KINDS = ("zip", "legacy", "pickle", "exec", "torchscript")


class _StorageRef:
    pass


class _HugeTensor:
    """Pickles as torch's `_rebuild_tensor_v2(storage, 0, shape, stride)` over a storage declared `numel` long."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, self.shape, stride, False, OrderedDict()))


def absurd_pt(path: Path, numel: int = 10**10, shape: tuple[int, ...] = (100000, 100000)) -> Path:
    """A torch.save-format archive whose one tensor declares 10^10 floats (40 GB) over 16 bytes of data."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", torch.FloatStorage, "0", "cpu", numel)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"conv1.weight": _HugeTensor(shape)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", b"\0" * 16)
        z.writestr("archive/version", "3\n")
    return path


def hostile_bin(path: Path, marker: Path, kind: str = "system") -> Path:
    """A `.bin` shaped like a verification set whose images would run code when unpickled."""
    if kind == "system":
        images = [SystemPayload(marker), b"x"]
    elif kind == "exec":
        images = [ExecPayload(marker), b"x"]
    elif kind == "numpy-object":  # an object array: its items are unpickled as arbitrary objects
        images = [np.array([SystemPayload(marker)], dtype=object), b"x"]
    else:
        raise ValueError(kind)
    with open(path, "wb") as f:
        pickle.dump((images, [True]), f, protocol=2)
    return path


BIN_KINDS = ("system", "exec", "numpy-object")


# --- image bombs: a few hundred bytes declaring billions of pixels ---------------------------------
def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to declare width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --- small, well-formed things to put the broken ones beside -----------------------------------------
def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def tiny_model_file(path: Path, seed: int = 1) -> Path:
    """A bare state dict of the tiny IResNet (16x16 input, 16-d embedding)."""
    from infer_export_util import save_state_dict

    save_state_dict(path, seed)
    return path


def tiny_bin(path: Path, pairs: int = 10, images: list[bytes] | None = None) -> Path:
    """A well-formed 16x16 verification set (PNG images) of `pairs` pairs."""
    from irface.data.bin import save_bin

    faces = tiny_images()[0]
    encoded = images if images is not None else [png(faces[i % len(faces)]) for i in range(2 * pairs)]
    save_bin(path, encoded, [i % 2 == 0 for i in range(len(encoded) // 2)])
    return path


def tiny_recordio(folder: Path, images: list[bytes] | None = None, labels: list[int] | None = None,
                  num_classes: int = CLASSES, layout: str = "header") -> Path:
    """train.rec/.idx/property of the tiny training set (PNG), or of the images and labels given."""
    from irface.data.recordio import write_recordio_dataset

    if images is None:
        faces, labels_ = tiny_images()
        images, labels = [png(x) for x in faces], [int(v) for v in labels_]
    write_recordio_dataset(folder, zip(labels, images), num_classes, (SIZE, SIZE), layout)
    return folder


def train_args(out: Path, data: Path | str, **extra) -> list[str]:
    """`irface train` arguments for the tiny network (one process, no loader workers unless asked)."""
    return ["train", *tiny_overrides(out, data, **extra)]


def checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob("checkpoint-*.pt"))
