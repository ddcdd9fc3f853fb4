"""A minimal reader of the protobuf wire format: enough to walk a message's fields without a schema.

Only what MindSpore checkpoints need: varints (wire type 0), 64- and 32-bit fixed fields (1, 5) and
length-delimited fields (2). Length-delimited values come back as (start, end) offsets into the
buffer, never as copies, so a large tensor is not touched until someone asks for it. Every length is
checked against the bytes that are really there before anything is sliced or allocated.
"""

from __future__ import annotations

import mmap
from typing import Any, Iterator, Union

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]  # mmap: the checkpoint reader maps its file


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError(f"varint runs past the end of the message at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:  # a varint is at most 10 bytes
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def as_int64(value: int) -> int:
    """Reinterpret a decoded varint as a two's-complement int64 (negative int64 fields use 10 bytes)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for every field in buf[start:end].

    The value (typed Any: which one the wire type says) is an int for varint and fixed fields and a
    (start, end) pair of offsets for length-delimited fields. Groups (wire types 3, 4, deprecated since proto2) are refused.
    """
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield field, wire, value
        elif wire == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise WireError(f"field {field} declares {length} bytes at byte {pos}, only {end - pos} remain")
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if size > end - pos:
                raise WireError(f"fixed field {field} runs past the end at byte {pos}")
            yield field, wire, int.from_bytes(bytes(buf[pos:pos + size]), "little")
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire} (field {field}) at byte {pos}")
    if pos != end:
        raise WireError("message ends inside a field")


def iter_packed_varints(buf: Buffer, start: int, end: int) -> Iterator[int]:
    """The values of a packed repeated varint field stored in buf[start:end]."""
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        yield value
