"""Image bytes in, uint8 RGB arrays out: the one checked way untrusted image bytes are opened and decoded.

Training readers, verification sets, calibration and inference all decode through `decode_image`;
images declaring more than `MAX_IMAGE_PIXELS` pixels are refused before their pixels are decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

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


class TooManyPixels(DataError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def _too_big(width: int, height: int, source: str, max_pixels: int = MAX_IMAGE_PIXELS) -> DataError:
    return TooManyPixels(f"{source}: image of {width}x{height} pixels is larger than allowed "
                     f"({max_pixels} pixels; an image bomb?)")


def pixel_ceiling() -> int:
    """The largest `max_pixels` that can take effect: Pillow refuses images over twice its own limit."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**62


def _cannot_decode(e: Exception, source: str) -> DataError:
    if isinstance(e, Image.UnidentifiedImageError):  # its text names a BytesIO object's address
        return DataError(f"{source}: cannot decode image (not an image format Pillow reads)")
    return DataError(f"{source}: cannot decode image ({first_line(e)})")


def open_image(data: bytes, source: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open encoded image bytes reading the header only; refuses images over `max_pixels` pixels.

    The one place where untrusted image bytes are opened: nothing is decoded yet, Pillow's own
    decompression-bomb warning never reaches the user's terminal (our limit decides, up to
    `pixel_ceiling()`, where Pillow refuses), and every refusal is one `DataError` line naming `source`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        # Pillow checks before we can: its message holds the pixel count, not the sides.
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(m.group(1))} pixels" if m else "too many pixels"
        raise TooManyPixels(f"{source}: image of {pixels} is larger than allowed ({max_pixels} pixels; "
                        "an image bomb?)") from None
    except Exception as e:
        raise _cannot_decode(e, source) from None
    if img.width * img.height > max_pixels:
        raise _too_big(img.width, img.height, source, max_pixels)
    return img


def _decode_jpeg_fast(data: bytes, source: str, max_pixels: int = MAX_IMAGE_PIXELS):
    """RGB array through simplejpeg (libjpeg-turbo, about twice Pillow's speed), or None to use Pillow."""
    sj = _fast_jpeg()
    if not sj or data[:3] != b"\xff\xd8\xff":
        return None
    try:
        height, width, colorspace, _ = sj.decode_jpeg_header(data)
    except Exception:
        return None  # let Pillow decide and word the error
    if width * height > max_pixels:
        raise _too_big(width, height, source, max_pixels)
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


def crop_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a crop size given as one side (a square) or as (height, width)."""
    if isinstance(size, (tuple, list)):
        h, w = size
        return int(h), int(w)
    return int(size), int(size)


def resize_center(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Scaled (bilinear) until it covers `size` (one side or (height, width)), then the centre crop of that size.

    A 112x112 ArcFace crop cut to 112x96 so loses 8 columns each side: the SphereFace 96x112 crop,
    whose template is ArcFace's 8 px to the left.
    """
    th, tw = crop_shape(size)
    h, w = img.shape[:2]
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    pil = Image.fromarray(img)
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return np.asarray(pil.crop((left, top, left + tw, top + th)), dtype=np.uint8)


# EXIF orientation (tag 0x0112) -> the numpy view that shows the photo upright, as Pillow's exif_transpose.
_UPRIGHT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


def decode_rgb(data: bytes, source: str = "image", *, upright: bool = False,
               opened: Optional[Image.Image] = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image -> uint8 (H, W, 3) RGB at its own size: the one decoder.

    Any mode is accepted (grey, palette, RGBA, CMYK, 16-bit); images declaring more than
    `MAX_IMAGE_PIXELS` pixels are refused before their pixels are decoded. Uses simplejpeg for JPEG
    when it is installed (the `fast` extra), Pillow otherwise; both give the same pixels. `upright`
    applies the EXIF orientation (as OpenCV's imread does: photos); `opened` is the same bytes already
    opened by `open_image` (a caller that checked the header itself), so they are not parsed twice;
    `max_pixels` is the limit that header was checked against (checked again on JPEG's own header).
    """
    img = opened
    if img is None and upright:
        img = open_image(data, source, max_pixels)  # the header, for the orientation; its size is checked first
    arr = _decode_jpeg_fast(data, source, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow's notices (e.g. palette transparency on conversion) would break the one-line rule.
            warnings.simplefilter("ignore")
            orientation = img.getexif().get(0x0112, 1) if upright and img is not None else 1
            if arr is None:
                img = open_image(data, source, max_pixels) if img is None else img
                img.load()
                arr = _to_rgb(img)
    except DataError:
        raise
    except Exception as e:
        raise _cannot_decode(e, source) from None
    turn = _UPRIGHT.get(orientation)
    return np.ascontiguousarray(turn(arr)) if turn else arr


def decode_image(data: bytes, size: int | tuple[int, int] = INPUT_SIZE, source: str = "image") -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3) RGB (or (height, width, 3) for a `size` pair) by `decode_rgb`;
    other sizes are resized to cover it and centre-cropped (`resize_center`)."""
    arr = decode_rgb(data, source)
    if arr.shape[:2] != crop_shape(size):
        arr = resize_center(arr, size)
    return arr


def decode_images(bins: Sequence[bytes], size: int | tuple[int, int] = INPUT_SIZE, source: str = ".bin") -> np.ndarray:
    out = np.empty((len(bins), *crop_shape(size), 3), dtype=np.uint8)
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
