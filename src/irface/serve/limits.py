"""What `irface serve` accepts from a client: request size, image size and format, identity names.

Uploaded bytes are trusted for nothing: an image is an image when it decodes (its file name and
declared content type are ignored), in a format on the allow-list, with at most `max_pixels` pixels
(checked from the header, before any pixel is decoded: an image bomb costs nothing). Identity names
are checked by the gallery (`irface.gallery.validate_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from irface.errors import DataError, UserError

# Formats Pillow decodes that a face photo comes in; others (TIFF, EPS, ...) are refused untouched.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


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

    def __post_init__(self) -> None:
        if self.max_request_bytes <= 0 or self.max_pixels <= 0 or self.max_files <= 0:
            raise UserError(f"serve limits must be positive, got {self}")


def decode_upload(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Uploaded bytes as a uint8 (H, W, 3) RGB photo, EXIF orientation applied; `RequestError` otherwise."""
    from irface.data.images import decode_rgb, open_image

    if not data:
        raise RequestError(f"{name}: empty upload")
    try:
        img = open_image(data, name)
    except DataError as e:
        raise RequestError(str(e)) from None
    if img.format not in IMAGE_FORMATS:
        raise RequestError(f"{name}: {img.format or 'unknown'} images are not accepted "
                           f"(use {', '.join(IMAGE_FORMATS)})", 415)
    if img.width * img.height > limits.max_pixels:
        raise RequestError(f"{name}: image of {img.width}x{img.height} pixels is larger than allowed "
                           f"({limits.max_pixels} pixels)", 413)
    try:
        return decode_rgb(data, name, upright=True, opened=img)
    except DataError as e:
        raise RequestError(str(e)) from None


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


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
        body = (b'{"detail":"request body larger than allowed (%d bytes)"}' % self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
