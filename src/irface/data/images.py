"""Image bytes in, uint8 RGB arrays out: the one checked way untrusted image bytes are opened and decoded.

Training readers, verification sets, calibration and inference all decode through `decode_image`;
images declaring more than `MAX_IMAGE_PIXELS` pixels are refused before their pixels are decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from irface.data.transforms import INPUT_SIZE
from irface.errors import DataError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Images larger than this many pixels are refused (a 112 x 112 face is 12,544 pixels).
MAX_IMAGE_PIXELS = 64_000_000


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
    return DataError(f"{source}: cannot decode image ({first_line(e)})")


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
    pil = Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR)
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


def encode_image(image: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()




def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted path order; hidden files and folders skipped."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.append(p)
    return sorted(found)
