"""MXNet RecordIO (`train.rec`, `train.idx`, `property`) read and written without mxnet.

Format facts (dmlc-core `recordio.h/.cc`, mxnet `python/mxnet/recordio.py`):

- A record is `uint32 magic 0xced7230a`, `uint32 lrec = cflag << 29 | length`, then `length` bytes,
  then zero padding to a multiple of 4. All little-endian.
- A payload that contains the magic word at a 4-byte aligned position is split there by the writer:
  parts carry cflag 1 (first), 2 (middle), 3 (last), the magic word itself is dropped and the reader
  puts it back between parts. An unsplit record has cflag 0. Records are at most 2**29 - 1 bytes.
- `.idx` is text, one `key<TAB>offset` line per record, offset = byte position of the record's magic.
- A payload is an `IRHeader` (`<IfQQ`: flag, label, id, id2; 24 bytes), then `flag` float32 extra
  labels when flag > 0 (the header's own label is then 0 and the class is the first extra label),
  then the encoded image.
- insightface archives (MS1MV2, ...) start with a header record 0 whose labels are
  (first identity record, end); images are records 1 .. first-1 and each identity record
  holds the (start, end) range of that identity's image records. Other files are records 0..N-1.
- `property` is one line `num_classes,height,width`.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import struct
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from irface.data.badimages import BadImageCounter
from irface.data.images import decode_image
from irface.errors import DataError
from irface.utils import atomic_path, atomic_write

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC = struct.Struct("<II")
MAX_RECORD = (1 << 29) - 1

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24

REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"


# ----------------------------------------------------------------------------- IRHeader

def pack(header: IRHeader | tuple, payload: bytes) -> bytes:
    """`IRHeader` + payload -> record bytes, as `mxnet.recordio.pack` does.

    A number label is stored in the header (flag 0); a sequence label is stored as flag float32
    values before the payload (the header's label becomes 0).
    """
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        label = np.asarray(header.label, dtype=np.float32).ravel()
        header = header._replace(flag=label.size, label=0)
        payload = label.tobytes() + payload
    return _IR.pack(int(header.flag), float(header.label), int(header.id), int(header.id2)) + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Record bytes -> (`IRHeader`, payload), as `mxnet.recordio.unpack` does.

    With flag > 0 the header's label is a float32 array of the flag extra labels.
    """
    if len(record) < IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    header = IRHeader(*_IR.unpack_from(record))
    payload = record[IR_SIZE:]
    if header.flag > 0:
        if len(payload) < 4 * header.flag:
            raise ValueError(f"IRHeader announces {header.flag} labels but only {len(payload)} bytes follow")
        header = header._replace(label=np.frombuffer(payload, np.float32, header.flag))
        payload = payload[4 * header.flag:]
    return header, payload


def record_label(header: IRHeader) -> float:
    """The class label of an image record: the scalar label, or the first extra label when flag > 0."""
    if header.flag > 0:
        return float(header.label[0])
    return float(header.label)


# ----------------------------------------------------------------------------- framing

def _frame(payload: bytes) -> bytes:
    """Frame one payload the way dmlc's RecordIOWriter does (split at aligned magic words, pad to 4)."""
    n = len(payload)
    if n > MAX_RECORD:
        raise ValueError(f"record of {n} bytes is larger than RecordIO allows ({MAX_RECORD})")
    parts = []
    start = 0
    view = memoryview(payload)
    # Find aligned occurrences of the magic word; bytes.find is fast, the alignment check is rare.
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n // 4) * 4:
        if pos % 4 == 0:
            parts.append((1 if start == 0 else 2, view[start:pos]))
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    parts.append((3 if start else 0, view[start:]))
    out = bytearray()
    for cflag, chunk in parts:
        out += _LREC.pack(MAGIC, (cflag << 29) | len(chunk))
        out += chunk
    out += b"\0" * (-n % 4)  # only the last part can be unaligned: every split point is aligned
    return bytes(out)


class RecordIOReader:
    """Reads records of a `.rec` by key (through its `.idx`) or in file order.

    The file is opened lazily in the process that reads, and reopened after a fork, so one reader
    can be handed to DataLoader workers (it also pickles without its handle).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: no such RecordIO file")
        self.size = self.rec_path.stat().st_size
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self.keys = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(0, dtype=np.int64)
        if self.idx_path is not None:
            # Sorted numpy arrays, not a dict: 5.9M keys cost 94 MB here and nothing extra per worker.
            self.keys, self.offsets = read_idx(self.idx_path, self.size)
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    # A handle must never cross a fork or a pickle: each process opens its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as e:
                raise DataError(f"{self.rec_path}: cannot open ({e.strerror})") from None
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return len(self.keys)

    def _pread(self, n: int, offset: int) -> bytes:
        fd = self._handle()
        if hasattr(os, "pread"):
            return os.pread(fd, n, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)

    def read_at(self, offset: int, where: str = "") -> tuple[bytes, int]:
        """The record starting at byte `offset` (parts joined) and the offset just after it."""
        where = where or f"record at byte {offset}"
        chunks: list[bytes] = []
        pos = offset
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise DataError(f"{self.rec_path}: {where}: file ends inside the record header (truncated .rec?)")
            magic, lrec = _LREC.unpack(head)
            if magic != MAGIC:
                raise DataError(f"{self.rec_path}: {where}: bad magic 0x{magic:08x} at byte {pos} "
                                f"(expected 0x{MAGIC:08x}; wrong offset in .idx or corrupt file)")
            cflag, length = lrec >> 29, lrec & MAX_RECORD
            if cflag > 3 or (chunks and cflag not in (2, 3)) or (not chunks and cflag not in (0, 1)):
                raise DataError(f"{self.rec_path}: {where}: bad continuation flag {cflag} at byte {pos}")
            data = self._pread(length, pos + 8)
            if len(data) < length:
                raise DataError(f"{self.rec_path}: {where}: needs {length} bytes at byte {pos + 8} but the file "
                                f"ends after {len(data)} (truncated .rec?)")
            chunks.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
            chunks.append(_MAGIC_BYTES)
        return b"".join(chunks), pos

    def read_idx(self, key: int) -> bytes:
        """The record stored under `key` in the `.idx` (like `MXIndexedRecordIO.read_idx`)."""
        key = int(key)
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            raise DataError(f"{self.idx_path}: no record with key {key}")
        return self.read_at(int(self.offsets[i]), f"record {key}")[0]

    def __iter__(self) -> Iterator[bytes]:
        """Every record in file order (no `.idx` needed)."""
        return (record for _, record in self.walk())

    def scan_offsets(self) -> list[int]:
        """Byte offsets of every record in file order, read off the framing (to rebuild a lost `.idx`)."""
        return [offset for offset, _ in self.walk()]

    def walk(self) -> Iterator[tuple[int, bytes]]:
        """(byte offset, record) of every record, in file order, read off the framing."""
        pos, n = 0, 0
        while pos < self.size:
            record, end = self.read_at(pos, f"record #{n} (in file order)")
            yield pos, record
            pos, n = end, n + 1


def _parse_idx_fast(text: str) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """numpy's parser for the common case (MS1MV2's 5.9M lines in about a second); None if anything is odd."""
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)  # blank lines: the slow path copes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
    except (ValueError, DeprecationWarning):
        return None, None
    if len(values) != 2 * lines or "." in text:
        return None, None
    return values[0::2].copy(), values[1::2].copy()


def _parse_idx_slow(text: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line by line, to name the first bad line."""
    keys, offsets = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        try:
            key, offset = int(fields[0]), int(fields[1])
            if len(fields) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {lineno}: expected 'key<TAB>offset', got {line[:60]!r}") from None
        keys.append(key)
        offsets.append(offset)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def read_idx(path: str | Path, rec_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a `.idx` into (keys, offsets) sorted by key; refuses bad lines, duplicates and offsets past the end."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DataError(f"{path}: no such index file (the .idx beside the .rec)") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a RecordIO index (expected text lines 'key<TAB>offset')") from None
    k, o = _parse_idx_fast(text)
    if k is None or o is None:
        k, o = _parse_idx_slow(text, path)
    if len(k) == 0:
        raise DataError(f"{path}: index is empty")
    order = np.argsort(k, kind="stable")
    k, o = k[order], o[order]
    dup = np.flatnonzero(k[1:] == k[:-1])
    if dup.size:
        raise DataError(f"{path}: key {k[dup[0]]} appears more than once")
    bad = np.flatnonzero((o < 0) | (o % 4 != 0))
    if bad.size:
        raise DataError(f"{path}: record {k[bad[0]]}: offset {o[bad[0]]} is not a record boundary "
                        "(negative or not a multiple of 4)")
    if rec_size is not None:
        past = np.flatnonzero(o + 8 > rec_size)
        if past.size:
            raise DataError(f"{path}: record {k[past[0]]}: offset {o[past[0]]} is past the end of the "
                            f".rec ({rec_size} bytes; truncated .rec or an .idx of another file?)")
    if np.any(np.diff(o) <= 0):
        # Legal (each key still points at its record) but unusual: say so once.
        log.info("%s: offsets are not in key order; reading by key anyway", path)
    return k, o


# ----------------------------------------------------------------------------- writing

class RecordIOWriter:
    """Writes a `.rec` and its `.idx` readable by mxnet's `MXIndexedRecordIO` (and `RecordIOReader`).

    Both files are written under temporary names and renamed into place by `close()`; leaving the
    `with` block by an exception leaves nothing behind.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        # Each file is written under a temporary name that `atomic_path` renames into place on `close()`.
        self._files = contextlib.ExitStack()
        self._rec = open(self._files.enter_context(atomic_path(self.rec_path)), "w+b")
        self._idx = None
        if self.idx_path is not None:
            self._idx = open(self._files.enter_context(atomic_path(self.idx_path)), "w", newline="\n", encoding="ascii")
        self._keys: set[int] = set()
        self.count = 0

    def tell(self) -> int:
        return self._rec.tell()

    def write(self, record: bytes) -> int:
        """Append one record (no index line); returns its byte offset."""
        pos = self._rec.tell()
        self._rec.write(_frame(record))
        self.count += 1
        return pos

    def write_idx(self, key: int, record: bytes) -> int:
        """Append one record under `key` (an index line `key<TAB>offset`); returns its byte offset."""
        if self._idx is None:
            raise ValueError("write_idx needs an .idx path")
        key = int(key)
        if key in self._keys:
            raise ValueError(f"key {key} written twice")
        self._keys.add(key)
        pos = self.write(record)
        self._idx.write(f"{key}\t{pos}\n")
        return pos

    def patch(self, offset: int, record: bytes) -> None:
        """Overwrite the record at `offset` with one of the same framed size (e.g. a header record 0)."""
        framed = _frame(record)
        end = self._rec.tell()
        self._rec.seek(offset)
        old = self._rec.read(len(framed)) if self._rec.readable() else None
        if old is not None and len(old) != len(framed):
            raise ValueError("patch must keep the record's size")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(end)

    def close(self) -> None:
        """Flush, sync and move both files into place."""
        for f in (self._rec, self._idx):
            if f is not None:
                f.close()
        self._files.close()

    def abort(self) -> None:
        """Close both files and remove them; nothing is left behind."""
        for f in (self._rec, self._idx):
            if f is not None:
                f.close()
        self._files.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------- property

def read_property(path: str | Path) -> tuple[int, int, int]:
    """`property` -> (num_classes, height, width)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        values = [int(v) for v in text.split(",")]
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except FileNotFoundError:
        raise DataError(f"{path}: no such property file") from None
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: expected one line 'num_classes,height,width' of positive integers") from None
    return values[0], values[1], values[2]


def write_property(path: str | Path, num_classes: int, height: int, width: int) -> None:
    with atomic_write(path, "w") as f:
        f.write(f"{num_classes},{height},{width}\n")


def write_recordio_dataset(folder: str | Path, items: Iterable[tuple[int, bytes]], num_classes: int,
                           image_size: tuple[int, int] = (112, 112), layout: str = "header") -> int:
    """Write `train.rec`, `train.idx` and `property` from (label, encoded image) items; returns the image count.

    `layout="header"` writes insightface's layout (header record 0, images 1..N, then one identity
    record per class holding its image range) and needs the items grouped by class in increasing
    order; `layout="plain"` writes images as records 0..N-1. Images are stored as given (no re-encode).
    """
    if layout not in ("header", "plain"):
        raise ValueError(f"layout must be 'header' or 'plain', got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = layout == "header"
    starts = np.full(num_classes + 1, -1, dtype=np.int64)
    n = 0
    last = -1
    with RecordIOWriter(folder / REC_NAME, folder / IDX_NAME) as w:
        if header:
            w.write_idx(0, pack(IRHeader(0, [0.0, 0.0], 0, 0), b""))  # patched once the counts are known
        for label, image in items:
            label = int(label)
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside 0..{num_classes - 1}")
            if header and label < last:
                raise ValueError("the header layout needs the images grouped by class in increasing order")
            key = n + 1 if header else n
            w.write_idx(key, pack(IRHeader(0, float(label), key, 0), image))
            if starts[label] < 0:
                starts[label] = key
            last = label
            n += 1
        if n == 0:
            raise ValueError("no images to write")
        if header:
            first_id = n + 1
            ends = np.empty(num_classes, dtype=np.int64)
            nxt = n + 1
            for c in range(num_classes - 1, -1, -1):  # a class without images gets an empty range
                ends[c] = nxt
                if starts[c] >= 0:
                    nxt = starts[c]
                else:
                    starts[c] = nxt
            for c in range(num_classes):
                w.write_idx(first_id + c, pack(IRHeader(0, [float(starts[c]), float(ends[c])], 0, 0), b""))
            w.patch(0, pack(IRHeader(0, [float(first_id), float(first_id + num_classes)], 0, 0), b""))
    write_property(folder / PROPERTY_NAME, num_classes, image_size[0], image_size[1])
    return n


# ----------------------------------------------------------------------------- layout

class RecordIOLayout:
    """What the records of a `.rec` folder are: which keys are images, how many classes, where the identities are."""

    def __init__(self, reader: RecordIOReader, property_path: Path | None):
        self.reader = reader
        self.property: Optional[tuple[int, int, int]] = None
        if property_path is not None and property_path.exists():
            self.property = read_property(property_path)
        keys = reader.keys
        if len(keys) == 0:
            raise DataError(f"{reader.idx_path}: no records")
        self.identity_range: Optional[tuple[int, int]] = None
        header0 = self._header_record(int(keys[0]))
        if header0 is not None:
            first_id, end = header0
            self.layout = "header"
            self.identity_range = (first_id, end)
            image_keys = np.arange(1, first_id, dtype=np.int64)
            self._require(image_keys, "image")
            self._require(np.arange(first_id, end, dtype=np.int64), "identity")
            self.image_keys = image_keys
            n_ids = end - first_id
        else:
            self.layout = "plain"
            self.image_keys = keys
            n_ids = 0
        if len(self.image_keys) == 0:
            raise DataError(f"{reader.rec_path}: holds no image records")
        if self.property is not None:
            self.num_classes = self.property[0]
            if n_ids and n_ids != self.num_classes:
                raise DataError(f"{reader.rec_path}: {n_ids} identity records but property says "
                                f"{self.num_classes} classes")
        elif n_ids:
            self.num_classes = n_ids
        else:
            log.warning("%s: no property file; reading every record's label to count the classes",
                        reader.rec_path.parent)
            self.num_classes = int(self.scan_labels().max()) + 1
        # Catch a truncated .rec now rather than at the last batch of an epoch.
        reader.read_idx(int(keys[-1]))
        self._check_index_reaches_the_end()

    def _check_index_reaches_the_end(self) -> None:
        """The record at the highest offset must end where the .rec ends (writers pad the last one too).

        An .idx that lost its last lines still parses, and in the plain layout nothing else would
        notice: training would quietly see only the records before the cut.
        """
        reader = self.reader
        last = int(np.argmax(reader.offsets))
        key = int(reader.keys[last])
        _, end = reader.read_at(int(reader.offsets[last]), f"record {key}")
        if end < reader.size:
            raise DataError(f"{reader.idx_path}: the index stops at byte {end} of the {reader.size}-byte "
                            f"{reader.rec_path.name}; the records after it are missing (a truncated .idx?) - "
                            "rebuild it with `irface data reindex FOLDER`")

    def _header_record(self, key: int) -> Optional[tuple[int, int]]:
        """(first identity record, end) if record `key` is an insightface header record, else None."""
        if key != 0:
            return None
        try:
            header, rest = unpack(self.reader.read_idx(0))
        except ValueError as e:
            raise DataError(f"{self.reader.rec_path}: record 0: {e}") from None
        # A plain-layout image with array labels also has flag > 0, but it carries image bytes.
        if header.flag < 2 or rest:
            return None
        a, b = float(header.label[0]), float(header.label[1])
        if not (a.is_integer() and b.is_integer() and 1 <= a <= b):
            return None
        return int(a), int(b)

    def _require(self, wanted: np.ndarray, kind: str) -> None:
        if len(wanted) == 0:
            return
        keys = self.reader.keys  # sorted and unique, so a contiguous range is there iff its count is
        lo, hi = np.searchsorted(keys, [wanted[0], wanted[-1] + 1])
        if hi - lo != len(wanted):
            have = np.isin(wanted, keys[lo:hi])
            missing = int(wanted[~have][0])
            raise DataError(f"{self.reader.idx_path}: header record 0 promises {kind} records "
                            f"{int(wanted[0])}..{int(wanted[-1])} but record {missing} is not in the index")

    def identity_ranges(self) -> np.ndarray:
        """(num_identities, 2) image-record ranges [start, end) from the identity records (header layout)."""
        if self.identity_range is None:
            raise ValueError("only the header layout has identity records")
        first, end = self.identity_range
        out = np.zeros((end - first, 2), dtype=np.int64)
        for i, key in enumerate(range(first, end)):
            header, _ = unpack(self.reader.read_idx(key))
            lab = header.label if header.flag > 0 else [header.label, header.label]
            out[i] = int(lab[0]), int(lab[1])
        return out

    def scan_labels(self, progress: Optional[bool] = False) -> np.ndarray:
        """Every image record's class label, in image order (reads every record header). `progress`: a bar
        on stderr (None: when stderr is a terminal)."""
        from irface.data.progress import progress_bar

        keys = self.image_keys
        labels = np.empty(len(keys), dtype=np.int64)
        for i in progress_bar(range(len(keys)), desc="labels", unit="rec", enabled=progress):
            key = int(keys[i])
            labels[i] = _label_of(self.reader.read_idx(key), self.reader.rec_path, key)
        return labels


def _label_of(record: bytes, rec_path: Path, key: int) -> int:
    try:
        header, _ = unpack(record)
    except ValueError as e:
        raise DataError(f"{rec_path}: record {key}: {e}") from None
    value = record_label(header)
    if not float(value).is_integer() or value < 0:
        raise DataError(f"{rec_path}: record {key}: label {value} is not a class index")
    return int(value)


# ----------------------------------------------------------------------------- dataset

def recordio_folder(path: str | Path) -> Path:
    """The folder a RecordIO path names: the path itself, or the folder of the `.rec` / `.idx` given."""
    path = Path(path)
    if path.is_file() and path.suffix in (".rec", ".idx"):
        path = path.parent
    return path


class RecordIODataset(Dataset):
    """Training images from a RecordIO folder (`train.rec`, `train.idx`, optional `property`).

    Items are `(uint8 tensor (3, H, W) RGB, int label)`; `num_classes` comes from `property` (checked
    against the identity records) or from the identity records, or from a label scan. Safe in
    DataLoader workers: each process opens its own handle. Undecodable images are skipped (replaced by
    the next decodable record, with its own label) and counted; past `max_bad_images` in one process
    the dataset raises `DataError`.
    """

    def __init__(self, path: str | Path, image_size: int | tuple[int, int] = 112, max_bad_images: int = 100):
        folder = recordio_folder(path)
        rec, idx = folder / REC_NAME, folder / IDX_NAME
        if not rec.is_file():
            raise DataError(f"{folder}: no {REC_NAME} here")
        if not idx.is_file():
            raise DataError(f"{folder}: {REC_NAME} has no {IDX_NAME} beside it "
                            "(rebuild it with `irface data reindex FOLDER`)")
        self.folder = folder
        self.image_size = image_size
        self.reader = RecordIOReader(rec, idx)
        self.meta = RecordIOLayout(self.reader, folder / PROPERTY_NAME)
        self.layout = self.meta.layout
        self.keys = self.meta.image_keys
        self.num_classes = self.meta.num_classes
        self.bad = BadImageCounter(max_bad_images)

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> tuple[int, bytes, int]:
        """(key, encoded image bytes, label) of image i, with the label checked against `num_classes`."""
        key = int(self.keys[i])
        record = self.reader.read_idx(key)
        try:
            header, image = unpack(record)
        except ValueError as e:
            raise DataError(f"{self.reader.rec_path}: record {key}: {e}") from None
        label = record_label(header)
        if not float(label).is_integer() or not 0 <= label < self.num_classes:
            raise DataError(f"{self.reader.rec_path}: record {key}: label {label} is outside the "
                            f"{self.num_classes} classes (property / identity records)")
        return key, image, int(label)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.keys)
        for attempt in range(n):
            j = (i + attempt) % n
            key, data, label = self.read(j)
            try:
                img = decode_image(data, self.image_size, f"{self.reader.rec_path}: record {key}")
            except DataError as e:
                self.bad.skip(e)
                continue
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label
        raise DataError(f"{self.reader.rec_path}: no decodable image left")
