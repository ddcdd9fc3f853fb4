"""pack / unpack / make-pairs / reindex / info, through the library and the CLI."""

from __future__ import annotations

import io
import json
import struct
import sys

import pytest
from PIL import Image

from irface.cli import main
from irface.data.convert import make_pairs, pack_image_folder, unpack_recordio
from irface.data.datasets import ImageFolderDataset
from irface.data.info import describe
from irface.data.recordio import RecordIODataset
from irface.data.bin import read_bin
from irface.errors import DataError

COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def make_folder(root, per_class=(2, 3, 1), size=16, fmt="JPEG"):
    for c, n in enumerate(per_class):
        d = root / f"person_{c}"
        d.mkdir(parents=True)
        for i in range(n):
            ext = ".jpg" if fmt == "JPEG" else ".png"
            r, g, b = COLORS[c % len(COLORS)]
            Image.new("RGB", (size, size), (r, g, min(255, b + 20 * i))).save(d / f"{i}{ext}", format=fmt)
    return root


def test_pack_keeps_bytes_labels_and_class_names(tmp_path):
    src = make_folder(tmp_path / "faces")
    (src / "person_1" / "2.jpg").unlink()
    Image.new("L", (16, 16), 77).save(src / "person_1" / "2.png")  # grey PNG, stored as is
    r = pack_image_folder(src, tmp_path / "rec")
    assert r["images"] == 6 and r["classes"] == 3 and r["image_size"] == [16, 16]
    ds = RecordIODataset(tmp_path / "rec", image_size=16)
    assert ds.layout == "header" and ds.num_classes == 3
    files = [p for p, _ in ImageFolderDataset(src).samples]
    for i, path in enumerate(files):
        key, data, label = ds.read(i)
        assert data == path.read_bytes()  # no re-encode
    assert [ds[i][1] for i in range(6)] == [0, 0, 1, 1, 1, 2]
    assert (tmp_path / "rec" / "classes.txt").read_text().split() == ["person_0", "person_1", "person_2"]
    assert (tmp_path / "rec" / "property").read_text() == "3,16,16\n"


def test_pack_reencode_and_plain_layout(tmp_path):
    src = make_folder(tmp_path / "f", size=40, fmt="PNG")
    r = pack_image_folder(src, tmp_path / "rec", image_size=24, reencode=True, layout="plain")
    ds = RecordIODataset(tmp_path / "rec", image_size=24)
    assert r["image_size"] == [24, 24] and ds.layout == "plain"
    _, data, _ = ds.read(0)
    assert data[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(data)).size == (24, 24)


def test_pack_bad_image_stops_or_is_skipped(tmp_path):
    src = make_folder(tmp_path / "f")
    (src / "person_1" / "9.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"person_1/9\.jpg: cannot decode image"):
        pack_image_folder(src, tmp_path / "rec")
    assert not (tmp_path / "rec" / "train.rec").exists()  # nothing half written
    r = pack_image_folder(src, tmp_path / "rec", skip_bad=True)
    assert r["skipped"] == 1 and r["images"] == 6


def test_empty_class_folder_is_refused(tmp_path):
    src = make_folder(tmp_path / "f")
    (src / "person_9").mkdir()
    with pytest.raises(DataError, match=r"person_9: class folder has no images"):
        pack_image_folder(src, tmp_path / "rec")


def test_unpack_then_pack_round_trip(tmp_path):
    src = make_folder(tmp_path / "f", per_class=(1, 2, 1, 3))
    pack_image_folder(src, tmp_path / "rec")
    r = unpack_recordio(tmp_path / "rec", tmp_path / "out")
    assert r["images"] == 7
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["person_0", "person_1", "person_2", "person_3"]
    pack_image_folder(tmp_path / "out", tmp_path / "rec2")
    a, b = RecordIODataset(tmp_path / "rec"), RecordIODataset(tmp_path / "rec2")
    assert [a.read(i)[1:] for i in range(7)] == [b.read(i)[1:] for i in range(7)]
    with pytest.raises(DataError, match="not empty"):
        unpack_recordio(tmp_path / "rec", tmp_path / "out")


def test_unpack_without_class_names_pads_numbers(tmp_path):
    src = make_folder(tmp_path / "f", per_class=(1,) * 11)  # person_10 sorts before person_2: class 2 is person_10
    pack_image_folder(src, tmp_path / "rec")
    (tmp_path / "rec" / "classes.txt").unlink()
    unpack_recordio(tmp_path / "rec", tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names[:3] == ["00", "01", "02"] and names[-1] == "10"  # sorted order == class order
    assert ImageFolderDataset(tmp_path / "out").classes == names


def test_make_pairs_balanced_and_identity_disjoint_folds(tmp_path):
    src = make_folder(tmp_path / "f", per_class=(3,) * 4)
    for c in range(4, 24):  # 24 identities: 10 folds of >= 2
        d = src / f"person_{c:02d}"
        d.mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (c * 10, i * 100, 50)).save(d / f"{i}.jpg")
    r = make_pairs(src, tmp_path / "p.bin", pairs=40)
    bins, issame = read_bin(tmp_path / "p.bin")
    assert r["pairs"] == 40 and len(bins) == 80 and issame.sum() == 20
    assert issame.tolist() == [True, False] * 20
    for a, b, same in zip(bins[0::2], bins[1::2], issame):
        assert a != b or not same  # a positive pair is two different images
    with pytest.raises(DataError, match="at least 2 identities"):
        only = tmp_path / "one"
        make_folder(only, per_class=(3,))
        make_pairs(only, tmp_path / "q.bin", pairs=4)


def test_info_on_every_kind(tmp_path):
    src = make_folder(tmp_path / "f", per_class=(2, 3, 1))
    pack_image_folder(src, tmp_path / "rec")
    rec = describe(tmp_path / "rec", scan=True)
    assert rec["kind"] == "recordio" and rec["layout"] == "header" and rec["images"] == 6
    assert rec["per_class"] == {"min": 1, "median": 2.0, "max": 3, "empty": 0} and rec["labels_checked"]
    folder = describe(src)
    assert folder["images"] == 6 and folder["classes"] == 3 and folder["image_size"] == [16, 16]
    make_pairs(src, tmp_path / "p.bin", pairs=4, folds=1)
    b = describe(tmp_path / "p.bin")
    assert b == {"kind": "bin", "path": str(tmp_path / "p.bin"), "pairs": 4, "positives": 2, "negatives": 2,
                 "images": 8, "image_size": [16, 16]}


def test_info_scan_shows_progress_on_a_terminal(tmp_path, monkeypatch):
    # progress=None (the CLI's default) means "a bar when stderr is a terminal"; the scan read it as "no bar".
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    pack_image_folder(make_folder(tmp_path / "f"), tmp_path / "rec")
    monkeypatch.setattr("sys.stderr", Terminal())
    describe(tmp_path / "rec", scan=True)
    assert "labels" in sys.stderr.getvalue()


def test_info_scan_catches_labels_that_contradict_identity_records(tmp_path):
    src = make_folder(tmp_path / "f", per_class=(2, 2))
    pack_image_folder(src, tmp_path / "rec")
    data = bytearray((tmp_path / "rec" / "train.rec").read_bytes())
    # record 1 (first image, class 0): set its label to 1; the identity records still say class 0
    off = int((tmp_path / "rec" / "train.idx").read_text().splitlines()[1].split("\t")[1])
    data[off + 8 + 4:off + 8 + 8] = struct.pack("<f", 1.0)
    (tmp_path / "rec" / "train.rec").write_bytes(bytes(data))
    assert describe(tmp_path / "rec")["images"] == 4  # the fast path trusts the identity records
    with pytest.raises(DataError, match="record 1: label 1 does not match the identity records"):
        describe(tmp_path / "rec", scan=True)


def test_reindex_rebuilds_a_lost_idx(tmp_path):
    pack_image_folder(make_folder(tmp_path / "f"), tmp_path / "rec")
    before = (tmp_path / "rec" / "train.idx").read_text()
    (tmp_path / "rec" / "train.idx").unlink()
    with pytest.raises(DataError, match="reindex"):
        RecordIODataset(tmp_path / "rec")
    assert main(["data", "reindex", str(tmp_path / "rec")]) == 0
    assert (tmp_path / "rec" / "train.idx").read_text() == before


def test_cli_synth_info_json_and_errors(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", str(out), "--ids", "3", "--per-id", "2", "--holdout-ids", "4",
                 "--pairs", "10", "--image-size", "32"]) == 0
    assert "wrote 6 images of 3 identities" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert info["images"] == 6 and info["classes"] == 3 and info["layout"] == "header"
    assert main(["data", "info", str(out / "cfp_fp.bin"), "--json", str(tmp_path / "i.json")]) == 0
    assert json.loads((tmp_path / "i.json").read_text())["pairs"] == 10
    assert "pairs: 10 (5 positive, 5 negative)" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no such file or folder" in err


def test_cli_pack_unpack_make_pairs(tmp_path, capsys):
    src = make_folder(tmp_path / "f", per_class=(2, 2, 2))
    assert main(["data", "pack", str(src), str(tmp_path / "rec")]) == 0
    assert main(["data", "unpack", str(tmp_path / "rec"), str(tmp_path / "out")]) == 0
    assert main(["data", "make-pairs", str(tmp_path / "out"), str(tmp_path / "p.bin"), "--pairs", "6"]) == 0
    out = capsys.readouterr().out
    assert "packed 6 images of 3 classes" in out and "unpacked 6 images" in out and "6 pairs (3 positive)" in out
    assert main(["data", "pack", str(tmp_path / "nothing"), str(tmp_path / "r2")]) == 2
    assert "nothing: not a folder" in capsys.readouterr().err
    assert main(["data"]) == 2
