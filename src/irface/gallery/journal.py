"""The journal beside a gallery file: each enrolment or removal appended as one checksummed record.

Rewriting a whole gallery file per change costs O(gallery) (0.5 s at 100,000 faces); appending the
change costs O(change). A record is

    b"IRFJ" | uint32 payload length | uint32 CRC-32 of the payload | payload

and its payload a JSON header (the change: op, ids, identities, sources, boxes, the gallery file's
generation, the record's number) followed by the embeddings (float32) and pictures (JPEG) it adds.
An append is written, flushed and fsynced before the change is answered. Opening replays the records
made against the file's own generation, in order, and stops at the first torn or damaged one (a crash
mid-append): a change is in the gallery whole or not at all.

Compaction (`Gallery.save`) writes a new gallery file (atomically: old or new) with a new generation,
then empties the journal. A crash between the two leaves records of the old generation beside the new
file, which already holds them: they are skipped, never applied twice.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

from irface.errors import GalleryError, OutputError
from irface.utils import atomic_write, sync_folder

MAGIC = b"IRFJ"
_HEAD = struct.Struct("<4sII")
_JSON_LEN = struct.Struct("<I")
SUFFIX = ".journal"


def journal_path(gallery_path: Path) -> Path:
    return gallery_path.with_name(gallery_path.name + SUFFIX)


def _records(data: bytes) -> Iterator[tuple[int, int, dict[str, Any], bytes]]:
    """(start, end, header, blobs) of each whole record, stopping at the first torn or damaged one."""
    pos = 0
    while pos + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if magic != MAGIC or end > len(data):
            return
        payload = data[pos + _HEAD.size:end]
        if zlib.crc32(payload) != crc or length < _JSON_LEN.size:
            return
        (json_len,) = _JSON_LEN.unpack_from(payload)
        try:
            header = json.loads(payload[_JSON_LEN.size:_JSON_LEN.size + json_len])
        except ValueError:
            return
        yield pos, end, header, payload[_JSON_LEN.size + json_len:]
        pos = end


def encode(header: dict[str, Any], blobs: bytes) -> bytes:
    body = json.dumps(header, separators=(",", ":")).encode()
    payload = _JSON_LEN.pack(len(body)) + body + blobs
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class Journal:
    """The journal of one gallery file generation: `replay()` once after opening, then `append()`."""

    def __init__(self, path: Path, generation: str):
        self.path = Path(path)
        self.generation = generation
        self.seq = 0               # records of this generation so far
        self._end = 0              # where the next record goes
        self._keep: list[bytes] = []  # this generation's records, when the file also holds others
        self._rewrite = False      # the file holds stale records (another generation) to drop first
        self.appended = 0          # records this process wrote (a reader that only replayed writes nothing)

    def replay(self) -> list[tuple[dict[str, Any], bytes]]:
        """This generation's whole records, in order (a torn tail and other generations' records left out)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise GalleryError(f"{self.path}: cannot read the gallery's journal ({e.strerror})") from None
        out = []
        for start, end, header, blobs in _records(data):
            if header.get("gen") != self.generation:
                self._rewrite = True  # compacted into the file already (a crash before the journal was emptied)
                continue
            if header.get("seq") != self.seq + 1:
                break  # not the next record: nothing after it can be trusted
            self.seq += 1
            out.append((header, blobs))
            self._keep.append(data[start:end])
            self._end = end
        if self._rewrite:
            self._end = sum(len(r) for r in self._keep)
        return out

    def append(self, header: dict[str, Any], blobs: bytes = b"") -> None:
        """Write one record and sync it; on return the change survives a crash."""
        record = encode({**header, "gen": self.generation, "seq": self.seq + 1}, blobs)
        try:
            if self._rewrite:
                with atomic_write(self.path, "wb") as f:
                    for kept in self._keep:
                        f.write(kept)
                self._rewrite = False
            self._keep = []
            new = not self.path.exists()
            with open(self.path, "r+b" if not new else "wb") as f:
                f.seek(self._end)
                f.write(record)
                f.truncate()  # a torn record from a crash (or a failed write) after the last whole one
                f.flush()
                os.fsync(f.fileno())
            if new:
                sync_folder(self.path.parent)
        except OSError as e:
            # The disk's failure (full, too large, read-only), not a bad gallery: an OutputError, which
            # the server answers as its own storage error (507).
            raise OutputError(f"{self.path}: could not write the gallery's journal ({e.strerror}); "
                              "the change was not made", e.strerror or "") from None
        self._end += len(record)
        self.seq += 1
        self.appended += 1

    def size(self) -> int:
        return self._end

    def reset(self, generation: str) -> None:
        """After a compaction: the file holds everything; start an empty journal for its new generation."""
        self.generation = generation
        self.seq, self._end, self._keep, self._rewrite, self.appended = 0, 0, [], False, 0
        try:
            if self.path.exists():
                with open(self.path, "r+b") as f:
                    f.truncate(0)
                    os.fsync(f.fileno())
        except OSError as e:
            # The new file is written; stale records are skipped at the next open (their generation is gone).
            self._rewrite = True
            raise OutputError(f"{self.path}: the gallery was saved but its journal could not be emptied "
                              f"({e.strerror})", e.strerror or "") from None



def generation_of(digest: Optional[bytes]) -> str:
    return "" if digest is None else digest.hex()[:32]
