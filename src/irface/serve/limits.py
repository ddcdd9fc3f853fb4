"""What `irface serve` accepts from a client: request size, image size and format, identity names.

Uploaded bytes are trusted for nothing: an image is an image when it decodes (its file name and
declared content type are ignored), in a format on the allow-list, with at most `max_pixels` pixels
(checked from the header, before any pixel is decoded: an image bomb costs nothing). Identity names
are checked by the gallery (`irface.gallery.validate_identity`).

Memory: a photo costs about 12 bytes a pixel while it is decoded and its faces found (the 3-byte
array, Pillow's 4-byte copies for decoding and for the detector's resize), hundreds of times its
upload for a plain PNG. So a request's images may hold
`max_request_pixels` pixels in all (checked from their headers, before any is decoded), and the whole
server decodes at most `decoding_budget()` pixels at once (`PixelBudget`): a photo waits until its
pixels fit, and each photo is let go (reduced to its face crops) before the request's next one is decoded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import numpy as np
from PIL import Image

from irface.errors import DataError, UserError
from irface.serve.hosts import ASGIApp, send_json_error

# Formats Pillow decodes that a face photo comes in; others (TIFF, EPS, ...) are refused untouched.
# MPO is a JPEG with more pictures after the first (phones and cameras write them): the first is the photo.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP")


class RequestError(UserError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    status = 400

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request limits; the defaults fit phone photos with room to spare."""

    max_request_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 20
    # All images of one request together (20 phone photos of 10 MP fit).
    max_request_pixels: int = 200_000_000
    # Pixels decoded at once by the whole server; None: two of the largest images (`decoding_budget`).
    max_decoding_pixels: Optional[int] = None

    def __post_init__(self) -> None:
        from irface.data.images import pixel_ceiling

        values = (self.max_request_bytes, self.max_pixels, self.max_files, self.max_request_pixels,
                  self.decoding_budget())
        if min(values) <= 0:
            raise UserError(f"serve limits must be positive, got {self}")
        if self.max_pixels > pixel_ceiling():
            raise UserError(f"--max-pixels {self.max_pixels}: at most {pixel_ceiling()} "
                            "(Pillow refuses larger images as decompression bombs)")
        if self.decoding_budget() < self.max_pixels:
            raise UserError(f"--max-decoding-pixels {self.decoding_budget()} is below --max-pixels "
                            f"{self.max_pixels}: the largest image could never be decoded")

    def decoding_budget(self) -> int:
        return self.max_decoding_pixels if self.max_decoding_pixels is not None else 2 * self.max_pixels


def open_upload(data: bytes, name: str, limits: Limits) -> Image.Image:
    """An upload's header, checked (format, size) before any pixel is decoded; `RequestError` otherwise."""
    from irface.data.images import TooManyPixels, open_image

    if not data:
        raise RequestError(f"{name}: empty upload")
    try:
        img = open_image(data, name, max_pixels=limits.max_pixels)
    except DataError as e:
        raise RequestError(str(e), 413 if isinstance(e, TooManyPixels) else 400) from None
    if img.format not in IMAGE_FORMATS:
        raise RequestError(f"{name}: {img.format or 'unknown'} images are not accepted "
                           f"(use {', '.join(f for f in IMAGE_FORMATS if f != 'MPO')})", 415)
    return img


def decode_opened(img: Image.Image, data: bytes, name: str, limits: Limits) -> np.ndarray:
    """An upload opened by `open_upload` as a uint8 (H, W, 3) RGB photo, EXIF orientation applied."""
    from irface.data.images import decode_rgb

    try:
        return decode_rgb(data, name, upright=True, opened=img, max_pixels=limits.max_pixels)
    except DataError as e:
        raise RequestError(str(e)) from None
    finally:
        img.close()  # Pillow's own copy of the pixels goes now, not when the collector finds it


def decode_upload(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Uploaded bytes as a uint8 (H, W, 3) RGB photo, EXIF orientation applied; `RequestError` otherwise."""
    return decode_opened(open_upload(data, name, limits), data, name, limits)


def check_request_pixels(images: list[tuple[str, Image.Image]], limits: Limits) -> None:
    """Refuse (413) a request whose images hold more pixels together than `max_request_pixels`."""
    total = sum(img.width * img.height for _, img in images)
    if total > limits.max_request_pixels:
        raise RequestError(f"the {len(images)} images of this request hold {total} pixels together, more than "
                           f"allowed ({limits.max_request_pixels} pixels); send fewer or smaller images", 413)


class PixelBudget:
    """How many pixels the server may hold decoded at once; `hold(n)` waits (first come, first served) until n fit.

    Waiting happens on the event loop, so a waiting request holds no worker thread. `peak` is the most
    ever held at once.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(int(pixels), self.capacity)  # larger images were refused by `max_pixels` already
        if self._waiting or self.in_use + pixels > self.capacity:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((pixels, turn))
            try:
                await turn
            except BaseException:
                # Cancelled (the client went away): give back a turn granted meanwhile, or leave the queue.
                if turn.done() and not turn.cancelled():
                    self._release(pixels)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove((pixels, turn))
                    self._wake()
                raise
        else:
            self._take(pixels)
        try:
            yield
        finally:
            self._release(pixels)

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self.peak = max(self.peak, self.in_use)

    def _release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            pixels, turn = self._waiting[0]
            if turn.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            if self.in_use + pixels > self.capacity:
                break
            self._waiting.popleft()
            self._take(pixels)
            turn.set_result(None)


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is parsed.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and cut off at the limit, so no upload can fill the memory or the disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        exceeded = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            # Once the body ran over, whatever the app makes of the cut-off (a parse error) is
            # replaced by the 413 below.
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded:
            await self._refuse(send)

    async def _refuse(self, send: Callable[[dict], Awaitable[None]]) -> None:
        await send_json_error(send, 413, f"request body larger than allowed ({self.max_bytes} bytes)")


class _TooLarge(Exception):
    pass
