"""Image decoding: every mode a user may have, the same pixels from both decoders, image bombs refused early."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from irface.data import images
from irface.data.images import decode_image
from irface.errors import DataError


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.faults
def test_grey_rgba_palette_cmyk_become_rgb():
    grey = decode_image(encoded(Image.new("L", (112, 112), 90)))
    assert grey.shape == (112, 112, 3) and (grey == 90).all()
    rgba = decode_image(encoded(Image.new("RGBA", (112, 112), (10, 20, 30, 0))))
    assert rgba[0, 0].tolist() == [10, 20, 30]  # alpha dropped, as OpenCV does
    pal = decode_image(encoded(Image.new("RGB", (112, 112), (200, 0, 0)).convert("P")))
    assert pal[5, 5, 0] > 150 and pal[5, 5, 1] < 50
    cmyk = decode_image(encoded(Image.new("CMYK", (112, 112), (0, 255, 255, 0)), "JPEG"))
    assert cmyk[5, 5, 0] > 200 and cmyk[5, 5, 1] < 60  # cyan-free, magenta+yellow: red


@pytest.mark.faults
def test_16_bit_grey_png_is_scaled_not_clipped():
    a = np.full((112, 112), 32768, dtype=np.uint16)  # mid grey in 16 bits
    img = decode_image(encoded(Image.fromarray(a)))
    assert img.shape == (112, 112, 3) and abs(int(img[0, 0, 0]) - 128) <= 1


@pytest.mark.faults
def test_other_sizes_resize_short_side_and_centre_crop():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :40] = 255  # a white band on the left that the centre crop removes
    img = decode_image(encoded(Image.fromarray(arr)), size=56)
    assert img.shape == (56, 56, 3) and img[:, 0].max() < 30


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge image (a decompression bomb): only the IHDR is real."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.faults
@pytest.mark.parametrize("side", [9000, 40000])  # under and over Pillow's own bomb limit
def test_image_bomb_is_refused_before_decoding(side):
    with pytest.raises(DataError, match=r"bomb\.png: image .*larger than allowed"):
        decode_image(png_declaring(side, side), source="bomb.png")


@pytest.mark.faults
def test_undecodable_bytes_name_the_source():
    with pytest.raises(DataError, match=r"x\.jpg: cannot decode image"):
        decode_image(b"\xff\xd8\xff\xe0 not really a jpeg", source="x.jpg")
    truncated = encoded(Image.new("RGB", (112, 112), (1, 2, 3)), "JPEG")[:200]
    with pytest.raises(DataError, match="t.jpg"):
        decode_image(truncated, source="t.jpg")


def test_fast_decoder_and_pillow_agree(monkeypatch):
    pytest.importorskip("simplejpeg")
    rng = np.random.default_rng(0)
    arr = (rng.random((112, 112, 3)) * 60 + np.linspace(0, 190, 112)[None, :, None]).astype(np.uint8)
    data = encoded(Image.fromarray(arr), "JPEG")
    fast = decode_image(data)
    monkeypatch.setattr(images, "_FAST_JPEG", False)  # force Pillow
    slow = decode_image(data)
    assert np.array_equal(fast, slow)


@pytest.mark.faults
def test_photos_crops_and_uploads_decode_through_one_path_with_one_wording(tmp_path):
    from irface.infer.images import open_rgb
    from irface.serve.limits import Limits, RequestError, decode_upload

    truncated = encoded(Image.new("RGB", (300, 200), (1, 2, 3)), "PNG")[:60]  # header fine, pixels cut off
    (tmp_path / "t.png").write_bytes(truncated)
    lines = []
    for decode in (lambda: decode_image(truncated, source="t.png"), lambda: open_rgb(tmp_path / "t.png"),
                   lambda: decode_upload(truncated, "t.png", Limits())):
        with pytest.raises((DataError, RequestError)) as e:
            decode()
        lines.append(str(e.value).replace(str(tmp_path) + "/", ""))
    assert lines[0].startswith("t.png: cannot decode image (") and lines == [lines[0]] * 3
    # The same pixels whichever entry point: a photo at its size, a crop resized to the model's.
    arr = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    (tmp_path / "ok.png").write_bytes(encoded(Image.fromarray(arr)))
    assert np.array_equal(open_rgb(tmp_path / "ok.png"), arr)
    assert np.array_equal(decode_upload(encoded(Image.fromarray(arr)), "ok.png", Limits()), arr)
    assert np.array_equal(decode_image(encoded(Image.fromarray(arr))), arr)
