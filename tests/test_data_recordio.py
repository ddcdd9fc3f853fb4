"""RecordIO without mxnet: files built byte by byte from the format description, both layouts."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from irface.data.recordio import (
    IRHeader, RecordIODataset, RecordIOReader, RecordIOWriter, pack, read_idx, unpack,
)
from irface.errors import DataError

MAGIC = 0xCED7230A


# --- the format, written out by hand (independent of irface's writer) ---------------------------

def frame(payload: bytes, cflag: int = 0) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def irheader(flag: int, label: float, id_: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2)


def jpeg(color, size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]


def write_files(folder, records: list[tuple[int, bytes]], prop: str | None, idx_order=None):
    """records: (key, payload) in file order; the .idx lists them in `idx_order` (default file order)."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = bytearray()
    lines = []
    for key, payload in records:
        lines.append(f"{key}\t{len(rec)}\n")
        rec += frame(payload)
    if idx_order is not None:
        lines = [lines[i] for i in idx_order]
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("".join(lines))
    if prop is not None:
        (folder / "property").write_text(prop)
    return folder


def ms1mv2_like(folder, labels=(0, 0, 1, 1, 1, 2), prop="3,16,16", **kw):
    """insightface's layout: header record 0, images 1..N (scalar labels), identity records after them."""
    n = len(labels)
    n_ids = max(labels) + 1
    first_id, end = n + 1, n + 1 + n_ids
    records = [(0, irheader(2, 0.0) + struct.pack("<2f", first_id, end))]
    records += [(i + 1, irheader(0, float(lab), i + 1) + jpeg(COLORS[i % 6])) for i, lab in enumerate(labels)]
    for c in range(n_ids):
        members = [i + 1 for i, lab in enumerate(labels) if lab == c]
        records.append((first_id + c, irheader(2, 0.0) + struct.pack("<2f", members[0], members[-1] + 1)))
    return write_files(folder, records, prop, **kw)


def plain(folder, labels=(2, 0, 1, 1), prop=None, array_labels=True):
    records = []
    for i, lab in enumerate(labels):
        head = irheader(2, 0.0, i) + struct.pack("<2f", lab, 0.5) if array_labels else irheader(0, float(lab), i)
        records.append((i, head + jpeg(COLORS[i % 6])))
    return write_files(folder, records, prop)


def dominant(img: torch.Tensor) -> int:
    return int(img.float().mean(dim=(1, 2)).argmax())


# --- reading ------------------------------------------------------------------------------------

def test_header_layout_as_insightface_ships_it(tmp_path):
    ds = RecordIODataset(ms1mv2_like(tmp_path / "ms1"))
    assert ds.layout == "header" and len(ds) == 6 and ds.num_classes == 3
    items = [ds[i] for i in range(len(ds))]
    assert [label for _, label in items] == [0, 0, 1, 1, 1, 2]
    img, _ = items[0]
    assert img.shape == (3, 112, 112) and img.dtype == torch.uint8  # 16x16 resized to image_size
    assert dominant(items[0][0]) == 0 and dominant(items[1][0]) == 1 and dominant(items[2][0]) == 2  # RGB order
    np.testing.assert_array_equal(ds.meta.identity_ranges(), [[1, 3], [3, 6], [6, 7]])


def test_header_layout_without_property_counts_identity_records(tmp_path):
    ds = RecordIODataset(ms1mv2_like(tmp_path / "ms1", prop=None), image_size=16)
    assert ds.num_classes == 3 and ds[5][0].shape == (3, 16, 16)


def test_plain_layout_with_array_labels_is_not_taken_for_a_header(tmp_path):
    # Record 0 has flag 2 like a header record, but it carries an image: it is an image.
    ds = RecordIODataset(plain(tmp_path / "p"), image_size=16)
    assert ds.layout == "plain" and len(ds) == 4
    assert ds.num_classes == 3  # no property: read off the labels
    assert [ds[i][1] for i in range(4)] == [2, 0, 1, 1]


def test_plain_layout_scalar_labels_with_property(tmp_path):
    ds = RecordIODataset(plain(tmp_path / "p", labels=(0, 1, 0), prop="5,16,16", array_labels=False), image_size=16)
    assert ds.num_classes == 5 and [ds[i][1] for i in range(3)] == [0, 1, 0]


@pytest.mark.faults
def test_idx_lines_out_of_order_still_read_by_key(tmp_path):
    folder = ms1mv2_like(tmp_path / "s", idx_order=[3, 0, 9, 8, 1, 2, 5, 4, 7, 6])
    ds = RecordIODataset(folder, image_size=16)
    assert [ds[i][1] for i in range(6)] == [0, 0, 1, 1, 1, 2]


@pytest.mark.faults
def test_offsets_out_of_key_order_still_read(tmp_path):
    # Keys written in file order 3, 1, 2, 0: offsets do not grow with the key, each still points at its record.
    records = [(k, irheader(0, float(k), k) + jpeg(COLORS[k])) for k in (3, 1, 2, 0)]
    ds = RecordIODataset(write_files(tmp_path / "o", records, "4,16,16"), image_size=16)
    assert [ds[i][1] for i in range(4)] == [0, 1, 2, 3]
    assert [dominant(ds[i][0]) for i in range(3)] == [0, 1, 2]


def test_dataset_and_reader_pickle_without_a_handle(tmp_path):
    ds = RecordIODataset(ms1mv2_like(tmp_path / "m"), image_size=16)
    ds[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._fd is None
    assert torch.equal(clone[3][0], ds[3][0])


def test_workers_read_the_same_as_the_main_process(tmp_path):
    from torch.utils.data import DataLoader

    ds = RecordIODataset(ms1mv2_like(tmp_path / "m"), image_size=16)
    ds[0]  # a handle opened before the fork must not be shared
    ref = [(x, y) for x, y in DataLoader(ds, batch_size=2)]
    par = [(x, y) for x, y in DataLoader(ds, batch_size=2, num_workers=2)]
    for (x, y), (xp, yp) in zip(ref, par):
        assert torch.equal(x, xp) and torch.equal(y, yp)


# --- writing ------------------------------------------------------------------------------------

def test_pack_unpack_match_mxnet_layout():
    assert pack(IRHeader(0, 7.0, 3, 0), b"img") == irheader(0, 7.0, 3, 0) + b"img"
    packed = pack(IRHeader(0, [5.0, 9.0], 1, 0), b"img")  # sequence label: flag = count, label 0
    assert packed == irheader(2, 0.0, 1, 0) + struct.pack("<2f", 5, 9) + b"img"
    header, rest = unpack(packed)
    assert header.flag == 2 and header.label.tolist() == [5.0, 9.0] and header.id == 1 and rest == b"img"
    header, rest = unpack(irheader(0, 4.0) + b"x")
    assert header.label == 4.0 and rest == b"x"


def test_writer_produces_the_reference_bytes(tmp_path):
    payloads = [b"", b"a", b"abcd", b"abcdefg"]
    with RecordIOWriter(tmp_path / "w.rec", tmp_path / "w.idx") as w:
        for k, p in enumerate(payloads):
            w.write_idx(k, p)
    expected = b"".join(frame(p) for p in payloads)
    assert (tmp_path / "w.rec").read_bytes() == expected
    assert (tmp_path / "w.idx").read_text() == "0\t0\n1\t8\n2\t20\n3\t32\n"


def test_payload_holding_the_magic_word_is_split_like_dmlc(tmp_path):
    m = struct.pack("<I", MAGIC)
    # magic words at 0, 8 and 20 (aligned: split there, the word dropped) and at 14 (unaligned: kept)
    payload = m + b"abcd" + m + b"xy" + m + b"zw" + m + b"q"
    expected = frame(b"", 1) + frame(b"abcd", 2) + frame(payload[12:20], 2) + frame(b"q", 3)
    tail = b"abcd" + m  # an aligned magic in the last word is split off too
    with RecordIOWriter(tmp_path / "s.rec", tmp_path / "s.idx") as w:
        w.write_idx(0, payload)
        w.write_idx(1, tail)
        w.write_idx(2, b"after")
    data = (tmp_path / "s.rec").read_bytes()
    assert data == expected + frame(b"abcd", 1) + frame(b"", 3) + frame(b"after")
    r = RecordIOReader(tmp_path / "s.rec", tmp_path / "s.idx")
    assert r.read_idx(0) == payload and r.read_idx(1) == tail and r.read_idx(2) == b"after"
    assert list(r) == [payload, tail, b"after"]


@pytest.mark.faults
def test_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
            w.write_idx(0, b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.faults
def test_truncated_rec_is_refused_at_open(tmp_path):
    folder = ms1mv2_like(tmp_path / "t")
    rec = folder / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-6])
    with pytest.raises(DataError, match=r"train\.rec: record 9: .*truncated"):
        RecordIODataset(folder)


@pytest.mark.faults
def test_idx_past_the_end_is_refused(tmp_path):
    folder = ms1mv2_like(tmp_path / "t")
    (folder / "train.idx").write_text((folder / "train.idx").read_text() + "10\t999996\n")
    with pytest.raises(DataError, match=r"train\.idx: record 10: offset 999996 is past the end"):
        RecordIODataset(folder)


@pytest.mark.faults
def test_bad_idx_lines_and_duplicates(tmp_path):
    (tmp_path / "a.idx").write_text("0\t0\nzero\t8\n")
    with pytest.raises(DataError, match=r"a\.idx: line 2"):
        read_idx(tmp_path / "a.idx")
    (tmp_path / "b.idx").write_text("0\t0\n0\t8\n")
    with pytest.raises(DataError, match="key 0 appears more than once"):
        read_idx(tmp_path / "b.idx")
    (tmp_path / "c.idx").write_text("0\t6\n")
    with pytest.raises(DataError, match="not a record boundary"):
        read_idx(tmp_path / "c.idx")


@pytest.mark.faults
def test_bad_magic_names_the_record(tmp_path):
    folder = ms1mv2_like(tmp_path / "b")
    keys, offsets = read_idx(folder / "train.idx")
    data = bytearray((folder / "train.rec").read_bytes())
    off = int(offsets[list(keys).index(4)])
    data[off:off + 4] = b"\xde\xad\xbe\xef"
    (folder / "train.rec").write_bytes(bytes(data))
    ds = RecordIODataset(folder)
    with pytest.raises(DataError, match=r"train\.rec: record 4: bad magic 0xefbeadde"):
        ds[3]


@pytest.mark.faults
def test_labels_beyond_property_are_refused(tmp_path):
    ds = RecordIODataset(plain(tmp_path / "l", labels=(0, 1, 7), prop="3,16,16", array_labels=False))
    ds[1]
    with pytest.raises(DataError, match=r"record 2: label 7.0 is outside the 3 classes"):
        ds[2]


@pytest.mark.faults
def test_property_disagreeing_with_identity_records(tmp_path):
    with pytest.raises(DataError, match="3 identity records but property says 2 classes"):
        RecordIODataset(ms1mv2_like(tmp_path / "p", prop="2,112,112"))


@pytest.mark.faults
def test_header_promising_missing_records(tmp_path):
    folder = ms1mv2_like(tmp_path / "m")
    lines = (folder / "train.idx").read_text().splitlines(keepends=True)
    (folder / "train.idx").write_text("".join(line for line in lines if not line.startswith("3\t")))
    with pytest.raises(DataError, match="record 3 is not in the index"):
        RecordIODataset(folder)


@pytest.mark.faults
def test_missing_files_and_bad_property(tmp_path):
    with pytest.raises(DataError, match="no train.rec"):
        RecordIODataset(tmp_path)
    folder = ms1mv2_like(tmp_path / "x", prop="lots")
    with pytest.raises(DataError, match="property: expected one line"):
        RecordIODataset(folder)
    (folder / "property").unlink()
    (folder / "train.idx").unlink()
    with pytest.raises(DataError, match="has no train.idx"):
        RecordIODataset(folder)


def corrupt_image(folder, key):
    keys, offsets = read_idx(folder / "train.idx")
    data = bytearray((folder / "train.rec").read_bytes())
    off = int(offsets[list(keys).index(key)]) + 8 + 24
    data[off:off + 40] = b"\x00" * 40  # wipe the JPEG's start: not an image any more
    (folder / "train.rec").write_bytes(bytes(data))


@pytest.mark.faults
def test_undecodable_image_is_skipped_counted_and_limited(tmp_path, caplog):
    folder = ms1mv2_like(tmp_path / "c")
    corrupt_image(folder, 2)
    ds = RecordIODataset(folder, image_size=16, max_bad_images=1)
    img, label = ds[1]  # record 2 is bad: the next record (3, class 1) stands in, with its own label
    assert label == 1 and dominant(img) == 2
    assert ds.bad.count == 1 and "record 2: cannot decode" in caplog.text
    with pytest.raises(DataError, match=r"record 2: cannot decode .*more than 1 undecodable"):
        ds[1]
    strict = RecordIODataset(folder, image_size=16, max_bad_images=0)
    with pytest.raises(DataError, match="max_bad_images"):
        strict[1]


@pytest.mark.faults
def test_worker_error_reaches_the_user_as_one_line(tmp_path):
    from irface.data.loader import build_train_loader

    folder = ms1mv2_like(tmp_path / "w", labels=(0, 0, 0, 1, 1, 1), prop="2,16,16")
    corrupt_image(folder, 2)
    ds = RecordIODataset(folder, image_size=16, max_bad_images=0)
    loader = build_train_loader(ds, 2, num_workers=1, persistent_workers=False)
    with pytest.raises(DataError) as e:
        list(loader)
    msg = str(e.value)
    assert "\n" not in msg and "record 2: cannot decode" in msg and "Traceback" not in msg


@pytest.mark.parametrize("layout", ["header", "plain"])
def test_dataset_writer_round_trip_in_both_layouts(tmp_path, layout):
    from irface.data.recordio import write_recordio_dataset

    labels = [0, 0, 2, 2, 2, 3]  # class 1 has no images: an empty identity range
    items = [(lab, jpeg(COLORS[i])) for i, lab in enumerate(labels)]
    assert write_recordio_dataset(tmp_path, items, num_classes=4, image_size=(16, 16), layout=layout) == 6
    assert (tmp_path / "property").read_text() == "4,16,16\n"
    ds = RecordIODataset(tmp_path, image_size=16)
    assert ds.layout == layout and len(ds) == 6 and ds.num_classes == 4
    assert [ds[i][1] for i in range(6)] == labels
    if layout == "header":
        # byte-level: record 0 is the header record at offset 0, as in insightface's files
        data = (tmp_path / "train.rec").read_bytes()
        assert data[:8 + 24] == struct.pack("<II", MAGIC, 32) + irheader(2, 0.0)
        assert struct.unpack("<2f", data[32:40]) == (7.0, 11.0)
        np.testing.assert_array_equal(ds.meta.identity_ranges(), [[1, 3], [3, 3], [3, 6], [6, 7]])


def test_open_train_dataset_passes_the_bad_image_limit(tmp_path):
    from irface.data.datasets import open_train_dataset

    folder = ms1mv2_like(tmp_path / "o")
    assert open_train_dataset(folder / "train.rec", image_size=16).bad.limit == 100
    assert open_train_dataset(folder, image_size=16, max_bad_images=3).bad.limit == 3
