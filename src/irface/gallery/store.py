"""The gallery file: one file, written atomically, checked whole before anything in it is used.

Layout (all integers little-endian):

    b"IRFGAL01"                       magic and format version
    sections                          the metadata table (an SQLite database image), then the faiss index
    header                            UTF-8 JSON: fingerprint, sizes, each section's offset and length
    uint64 header length
    32 bytes SHA-256 of every byte before it
    b"IRFGEND1"                       end marker: a file cut short has none

One file rather than a folder so that one rename publishes a save: a reader sees the old gallery or the
new one, never an index from one save beside a table from another. Reading checks the end marker and
the checksum over the whole file before parsing any section, so a torn or edited file is refused
before a byte of it is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import IO, Any, Callable

from irface.errors import GalleryError
from irface.utils import atomic_write

MAGIC = b"IRFGAL01"
END = b"IRFGEND1"
FORMAT_VERSION = 1
_TRAILER = struct.Struct("<Q32s8s")
REQUIRED_KEYS = ("fingerprint", "embedding_size", "index", "sections")
_CHUNK = 1 << 20


class _HashingWriter:
    """A file wrapper that hashes what it writes and counts the bytes (section offsets)."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.hash = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.f.write(data)
        self.hash.update(data)
        self.offset += len(data)
        return len(data)


def write_gallery_file(path: str | Path, header: dict[str, Any],
                       sections: list[tuple[str, Callable[[Callable[[bytes], int]], None]]]) -> bytes:
    """Write `sections` (name, writer(write)) and `header` atomically; returns once the file is on disk,
    with the file's SHA-256 (what names this save: the journal's records are made against it)."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        out = _HashingWriter(f)
        out.write(MAGIC)
        offsets = {}
        for name, writer in sections:
            start = out.offset
            writer(out.write)
            offsets[name] = [start, out.offset - start]
        body = json.dumps({**header, "format": FORMAT_VERSION, "sections": offsets}, sort_keys=True).encode()
        out.write(body)
        out.write(struct.pack("<Q", len(body)))
        digest = out.hash.digest()
        f.write(digest + END)
    return digest


def _refuse(path: Path, why: str) -> GalleryError:
    return GalleryError(f"{path}: {why}")


class GalleryFile:
    """An open, verified gallery file: `header` and `section(name)` readers over one file descriptor.

    The descriptor stays on the verified file even if a save renames a new one over the path.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.f = open(self.path, "rb")
        except FileNotFoundError:
            raise _refuse(self.path, "no such gallery file") from None
        except IsADirectoryError:
            raise _refuse(self.path, "is a folder, not a gallery file") from None
        try:
            self.header = self._verify()
        except BaseException:
            self.f.close()
            raise

    def _verify(self) -> dict[str, Any]:
        f, path = self.f, self.path
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            raise _refuse(path, "not an irface gallery file (no gallery header)")
        if size < len(MAGIC) + _TRAILER.size:
            raise _refuse(path, "gallery file is cut short (torn write?); rebuild it or restore a copy")
        f.seek(size - _TRAILER.size)
        header_len, digest, end = _TRAILER.unpack(f.read(_TRAILER.size))
        if end != END:
            raise _refuse(path, "gallery file is cut short or damaged (no end marker); rebuild it or restore a copy")
        h = hashlib.sha256()
        f.seek(0)
        remaining = size - 40  # everything before the digest and the end marker
        while remaining > 0:
            chunk = f.read(min(_CHUNK, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
        if remaining or h.digest() != digest:
            raise _refuse(path, "gallery file fails its checksum (damaged or edited); rebuild it or restore a copy")
        self.digest = digest
        header_start = size - _TRAILER.size - header_len
        if header_start < len(MAGIC):
            raise _refuse(path, "gallery header is damaged")
        f.seek(header_start)
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise _refuse(path, "gallery header is damaged") from None
        if not isinstance(header, dict):
            raise _refuse(path, "gallery header is damaged")
        if header.get("format") != FORMAT_VERSION:
            raise _refuse(path, f"gallery format {header.get('format')} is not one this irface reads "
                                f"(it reads {FORMAT_VERSION})")
        missing = [k for k in REQUIRED_KEYS if k not in header]
        if missing:
            raise _refuse(path, f"gallery header lacks {', '.join(missing)}")
        for name, (start, length) in header["sections"].items():
            if start < len(MAGIC) or start + length > header_start:
                raise _refuse(path, f"gallery section '{name}' lies outside the file")
        return header

    def has(self, name: str) -> bool:
        return name in self.header["sections"]

    def read_section(self, name: str) -> bytes:
        start, length = self.header["sections"][name]
        self.f.seek(start)
        return self.f.read(length)

    def section_reader(self, name: str) -> Callable[[int], bytes]:
        """A read(n) callable over one section (faiss reads its index through it, without a copy of it all)."""
        start, length = self.header["sections"][name]
        state = {"pos": start, "end": start + length}

        def read(n: int) -> bytes:
            n = min(n, state["end"] - state["pos"])
            self.f.seek(state["pos"])
            data = self.f.read(n)
            state["pos"] += len(data)
            return data

        return read

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "GalleryFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
