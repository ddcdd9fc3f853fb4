"""Verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...) as the insightface archive ships them.

A `.bin` is a pickle of `(list of 2N encoded images, list of N bools)`; pair i is images (2i, 2i+1).
Pickles can run code, so they are read with an allow-list unpickler: only containers, bytes, str,
numbers, bools and numpy arrays of those come out; anything else is refused before it is built.
"""

from __future__ import annotations

import _codecs
import importlib
import io
import pickle
from pathlib import Path
from typing import IO, Sequence

import numpy as np

from irface.data.images import decode_images, encode_image
from irface.data.transforms import INPUT_SIZE
from irface.errors import DataError, first_line
from irface.utils import atomic_write


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return _codecs.encode(text, "latin1", errors)


_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


def _numpy_global(module: str, name: str):
    # numpy 2 moved numpy.core to numpy._core; pickles from either version name either.
    if name == "dtype":
        return _safe_dtype
    if module == "numpy":
        return getattr(np, name)
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    return getattr(core, name)


class _SafeUnpickler(pickle.Unpickler):
    """Refuses every global except the few that plain data and numpy arrays need."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}': a .bin holds only images and labels")


def _safe_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing numpy object arrays in a .bin")
    return dtype


def safe_unpickle(data: bytes | IO[bytes]):
    """Unpickle bytes or a binary file with the allow-list; Python 2 pickles' str become bytes."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return _SafeUnpickler(stream, encoding="bytes").load()


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Read a `.bin` without decoding: (2N encoded images, N bool "same identity" flags)."""
    path = Path(path)
    try:
        # Unpickled straight from the file: the encoded images are held once, not twice.
        with open(path, "rb") as f:
            obj = safe_unpickle(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a .bin file") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a safe verification .bin ({e})") from None
    except Exception as e:  # truncated or garbage pickle streams raise many types
        raise DataError(f"{path}: not a verification .bin ({first_line(e)})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickle of (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    bins = [b.tobytes() if isinstance(b, np.ndarray) else b for b in bins]
    if not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise DataError(f"{path}: images must be encoded bytes")
    try:
        issame = np.asarray([bool(x) for x in issame], dtype=bool)
    except TypeError:
        raise DataError(f"{path}: the pair list must hold bools") from None
    if len(bins) % 2:
        raise DataError(f"{path}: odd number of images ({len(bins)}); pairs need 2 per entry")
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images but {len(issame)} pairs (expected {2 * len(issame)} images)")
    return bins, issame


def load_bin(path: str | Path, image_size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Load a verification set: uint8 images (2N, size, size, 3) RGB and N bool pair labels."""
    bins, issame = read_bin(path)
    return decode_images(bins, image_size, str(path)), issame


def save_bin(path: str | Path, images: Sequence[bytes] | np.ndarray, issame: Sequence[bool] | np.ndarray) -> None:
    """Write a `.bin` in the archive's format: a protocol-2 pickle of (list of encoded bytes, list of bools).

    `images` may be encoded bytes or a uint8 (2N, H, W, 3) array (encoded as JPEG).
    """
    if isinstance(images, np.ndarray):
        images = [encode_image(img) for img in images]
    images = [bytes(b) for b in images]
    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs")
    with atomic_write(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=2)


def find_targets(targets: Sequence[str], data_dir: str | Path) -> tuple[dict[str, Path], list[Path]]:
    """Verification sets by name: `lfw` and `lfw.bin` are looked up as `<data_dir>/lfw.bin`, an entry with
    a `/` is a path taken as given. Returns (name -> path of each set that exists, paths that do not)."""
    data_dir = Path(data_dir)
    found: dict[str, Path] = {}
    missing: list[Path] = []
    for target in targets:
        entry = target.strip()
        if not entry:
            continue
        path = Path(entry) if "/" in entry else data_dir / (entry if entry.endswith(".bin") else f"{entry}.bin")
        if path.is_file():
            found[path.stem] = path
        else:
            missing.append(path)
    return found, missing
