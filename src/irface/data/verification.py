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
import re
import warnings
from pathlib import Path
from typing import IO, Sequence

import numpy as np
from PIL import Image

from irface.data.transforms import INPUT_SIZE
from irface.errors import DataError
from irface.utils import atomic_write

# Images larger than this many pixels are refused (a 112 x 112 face is 12,544 pixels).
MAX_IMAGE_PIXELS = 64_000_000


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
        raise DataError(f"{path}: not a verification .bin ({type(e).__name__}: {e})") from None
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


_FAST_JPEG = None  # the optional simplejpeg module, imported on first use (False when absent)


def _fast_jpeg():
    global _FAST_JPEG
    if _FAST_JPEG is None:
        try:
            import simplejpeg

            _FAST_JPEG = simplejpeg
        except ImportError:
            _FAST_JPEG = False
    return _FAST_JPEG


def _too_big(width: int, height: int, source: str) -> DataError:
    return DataError(f"{source}: image of {width}x{height} pixels is larger than allowed "
                     f"({MAX_IMAGE_PIXELS} pixels; an image bomb?)")


def _cannot_decode(e: Exception, source: str) -> DataError:
    if isinstance(e, Image.UnidentifiedImageError):  # its text names a BytesIO object's address
        return DataError(f"{source}: cannot decode image (not an image format Pillow reads)")
    return DataError(f"{source}: cannot decode image ({type(e).__name__}: {e})")


def open_image(data: bytes, source: str = "image") -> Image.Image:
    """Open encoded image bytes reading the header only; refuses images over `MAX_IMAGE_PIXELS` pixels.

    The one place where untrusted image bytes are opened: nothing is decoded yet, Pillow's own
    decompression-bomb warning never reaches the user's terminal, and every refusal is one
    `DataError` line naming `source`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow checks before we can: its message holds the pixel count, not the sides.
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(m.group(1))} pixels" if m else "too many pixels"
        raise DataError(f"{source}: image of {pixels} is larger than allowed ({MAX_IMAGE_PIXELS} pixels; "
                        "an image bomb?)") from None
    except Exception as e:
        raise _cannot_decode(e, source) from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise _too_big(img.width, img.height, source)
    return img


def _decode_jpeg_fast(data: bytes, source: str):
    """RGB array through simplejpeg (libjpeg-turbo, about twice Pillow's speed), or None to use Pillow."""
    sj = _fast_jpeg()
    if not sj or data[:3] != b"\xff\xd8\xff":
        return None
    try:
        height, width, colorspace, _ = sj.decode_jpeg_header(data)
    except Exception:
        return None  # let Pillow decide and word the error
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_big(width, height, source)
    if colorspace not in ("RGB", "YCbCr", "Gray"):  # CMYK / YCCK: Pillow converts those
        return None
    try:
        return sj.decode_jpeg(data, colorspace="RGB")
    except Exception:
        return None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3) RGB; 16- and 32-bit grey are scaled, not clipped."""
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit PNGs open as I;16 (or I): Pillow's convert("RGB") would clip them to white.
        grey = np.asarray(img).astype(np.int64) >> 8
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    # Grey, palette, CMYK (Adobe-inverted handled by Pillow), RGBA / LA (alpha dropped, as OpenCV does).
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _resize_center(img: np.ndarray, size: int) -> np.ndarray:
    """Short side to `size` (bilinear), then the centre `size` x `size`."""
    h, w = img.shape[:2]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray(img).resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_image(data: bytes, size: int = INPUT_SIZE, source: str = "image") -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3) RGB; other sizes are resized short side to `size` and centre-cropped.

    Any mode is accepted (grey, palette, RGBA, CMYK, 16-bit); images declaring more than
    `MAX_IMAGE_PIXELS` pixels are refused before their pixels are decoded. Uses simplejpeg for JPEG
    when it is installed (the `fast` extra), Pillow otherwise; both give the same pixels.
    """
    arr = _decode_jpeg_fast(data, source)
    if arr is None:
        img = open_image(data, source)
        try:
            with warnings.catch_warnings():
                # Pillow's notices (e.g. palette transparency on conversion) would break the one-line rule.
                warnings.simplefilter("ignore")
                img.load()
                arr = _to_rgb(img)
        except Exception as e:
            raise _cannot_decode(e, source) from None
    if arr.shape[0] != size or arr.shape[1] != size:
        arr = _resize_center(arr, size)
    return arr


def decode_images(bins: Sequence[bytes], size: int = INPUT_SIZE, source: str = ".bin") -> np.ndarray:
    out = np.empty((len(bins), size, size, 3), dtype=np.uint8)
    for i, b in enumerate(bins):
        out[i] = decode_image(b, size, f"{source} image {i}")
    return out


def load_bin(path: str | Path, image_size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Load a verification set: uint8 images (2N, size, size, 3) RGB and N bool pair labels."""
    bins, issame = read_bin(path)
    return decode_images(bins, image_size, str(path)), issame


def encode_image(image: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def save_bin(path: str | Path, images: Sequence[bytes] | np.ndarray, issame: Sequence[bool]) -> None:
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
