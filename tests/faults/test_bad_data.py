"""Bad data (issue 10, item 2) through the commands users run: handled as a user would expect (converted,
or skipped and counted with a limit) or refused in one line naming the file and record; never a hang,
a silent wrong label or count, or a traceback from a loader worker.
"""

import json
import logging
import random

import numpy as np
import pytest
from PIL import Image

from fault_support import (
    SIZE, assert_one_line, checkpoints, png, run_cli, tiny_images, tiny_model_file, tiny_recordio,
    train_args, write_image_folder,
)

pytestmark = pytest.mark.faults

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x17" * 200  # a JPEG's start, then nonsense


def _rec_with(folder, replace: dict[int, bytes] | None = None, labels: dict[int, int] | None = None, **kw):
    """The tiny training set as RecordIO (header layout: image i is record i + 1), some images or labels swapped."""
    faces, lab = tiny_images()
    images = [png(x) for x in faces]
    labels_ = [int(v) for v in lab]
    for i, data in (replace or {}).items():
        images[i] = data
    for i, value in (labels or {}).items():
        labels_[i] = value
    if labels:  # the header layout wants classes grouped; a label out of range is written as given
        from irface.data.recordio import IRHeader, RecordIOWriter, pack, write_property

        folder.mkdir(parents=True)
        with RecordIOWriter(folder / "train.rec", folder / "train.idx") as w:
            for i, (label, image) in enumerate(zip(labels_, images)):
                w.write_idx(i, pack(IRHeader(0, float(label), i, 0), image))
        write_property(folder / "property", kw.get("num_classes", 6), SIZE, SIZE)
        return folder
    return tiny_recordio(folder, images, labels_, **kw)


def test_corrupt_jpeg_in_a_rec_is_skipped_and_counted_or_refused(tmp_path, capsys, caplog):
    data = _rec_with(tmp_path / "rec", replace={10: CORRUPT_JPEG})
    # Default max_bad_images=100: the record is skipped (the next image stands in, with its own label),
    # logged with file and record, and the run completes.
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(train_args(tmp_path / "a", data, max_steps=6), capsys)
    assert code == 0, err
    skips = [r.getMessage() for r in caplog.records if "skipping undecodable image" in r.getMessage()]
    assert len(skips) == 1 and "train.rec: record 11: cannot decode image" in skips[0]
    assert checkpoints(tmp_path / "a") == ["checkpoint-e0001-s00000006.pt"]
    # max_bad_images=0, read in a loader worker process: one line naming the record, no worker traceback.
    code, _, err = run_cli(train_args(tmp_path / "b", data, max_bad_images=0, num_workers=1,
                                      persistent_workers="false"), capsys)
    assert_one_line(code, err, "train.rec: record 11: cannot decode image", "max_bad_images")
    assert not checkpoints(tmp_path / "b")


def test_embed_skips_an_undecodable_record_instead_of_embedding_its_neighbour(tmp_path, capsys):
    """Before the fix, record 11's row held record 12's embedding under record 11's name (exit 0).
    Now the record is reported and skipped, every other row keeps its own name; --strict refuses it."""
    from irface.data.images import decode_image
    from irface.infer import load_model, read_embeddings

    model = tiny_model_file(tmp_path / "m.pth")
    data = _rec_with(tmp_path / "rec", replace={10: CORRUPT_JPEG})
    code, out, _ = run_cli(["embed", model, data, "-o", tmp_path / "e.npz", "--device", "cpu", "--no-progress",
                            "--json"], capsys)
    assert code == 0
    (skipped,) = json.loads(out)["skipped"]
    assert "train.rec: record 11: cannot decode image" in skipped["reason"]
    emb, names = read_embeddings(tmp_path / "e.npz")
    assert not any(n.endswith("#10") for n in names) and any(n.endswith("#11") for n in names)
    faces, _ = tiny_images()
    own = load_model(model).embed(np.array(decode_image(png(faces[11]), faces.shape[1]))[None])[0]
    row = emb[[n.endswith("#11") for n in names].index(True)]
    assert float(row @ (own / np.linalg.norm(own))) > 0.999  # record 12 (index 11) keeps its own embedding
    code, _, err = run_cli(["embed", model, data, "-o", tmp_path / "s.npy", "--device", "cpu", "--no-progress",
                            "--strict"], capsys)
    assert_one_line(code, err, "train.rec: record 11: cannot decode image")
    assert not (tmp_path / "s.npy").exists()


def _cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("layout", ["header", "plain"])
@pytest.mark.parametrize("damage, message", [
    (lambda d: _cut(d / "train.rec", 0.6), "truncated .rec"),
    (lambda d: (d / "train.idx").write_text("".join((d / "train.idx").read_text().splitlines(True)[:30])),
     "train.idx: "),
    (lambda d: _cut(d / "train.idx", 0.5), "train.idx: "),
    (lambda d: (d / "train.idx").unlink(), "has no train.idx beside it"),
], ids=["rec-cut", "idx-lost-lines", "idx-cut-mid-line", "idx-missing"])
def test_truncated_rec_or_idx_is_refused_before_any_step(tmp_path, capsys, layout, damage, message):
    data = tiny_recordio(tmp_path / "rec", layout=layout)
    damage(data)
    for argv in (train_args(tmp_path / "run", data), ["data", "info", data]):
        code, _, err = run_cli(argv, capsys)
        assert_one_line(code, err, str(data), message)
    assert not checkpoints(tmp_path / "run")


def test_idx_out_of_order_reads_every_record_by_key(tmp_path, capsys):
    data = tiny_recordio(tmp_path / "rec")
    code, out, _ = run_cli(["data", "info", data, "--scan", "--json"], capsys)
    before = json.loads(out)
    lines = (data / "train.idx").read_text().splitlines(True)
    random.Random(0).shuffle(lines)
    (data / "train.idx").write_text("".join(lines))
    code, out, err = run_cli(["data", "info", data, "--scan", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == before  # same images, classes and per-class counts
    code, _, err = run_cli(train_args(tmp_path / "run", data, max_steps=6), capsys)
    assert code == 0 and checkpoints(tmp_path / "run") == ["checkpoint-e0001-s00000006.pt"]


def test_label_beyond_the_property_class_count_is_refused_naming_the_record(tmp_path, capsys):
    data = _rec_with(tmp_path / "rec", labels={20: 9})  # property says 6 classes
    code, _, err = run_cli(["data", "info", data], capsys)  # plain layout: every label is read
    assert_one_line(code, err, "train.rec: record 20: label 9 is outside the 6 classes")
    code, _, err = run_cli(train_args(tmp_path / "run", data, num_workers=1, persistent_workers="false"), capsys)
    assert_one_line(code, err, "train.rec: record 20: label 9.0 is outside the 6 classes")
    assert not checkpoints(tmp_path / "run")  # never trained with a wrong label


@pytest.mark.parametrize("images, pairs, message", [
    (6, [True, False], "6 images but 2 pairs"),
    (5, [True, False], "odd number of images (5)"),
    (4, [True, False, True], "4 images but 3 pairs"),
])
def test_bin_whose_pair_list_does_not_match_is_refused(tmp_path, capsys, images, pairs, message):
    import pickle

    faces = tiny_images()[0]
    sets = tmp_path / "sets"
    sets.mkdir()
    with open(sets / "lfw.bin", "wb") as f:
        pickle.dump(([png(faces[i]) for i in range(images)], pairs), f, protocol=2)
    model = tiny_model_file(tmp_path / "m.pth")
    for argv in (["eval", "--ckpt", model, "--data", sets, "--targets", "lfw", "--device", "cpu"],
                 ["data", "info", sets / "lfw.bin"]):
        code, _, err = run_cli(argv, capsys)
        assert_one_line(code, err, "lfw.bin", message)


def _other_modes(root):
    """Replace one image of each class with the same picture in another mode or size."""
    faces, _ = tiny_images()
    rgb = Image.fromarray(faces[0])
    grey = rgb.convert("L")
    sixteen = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # 16-bit grey, same picture
    variants = {
        "grey.png": grey, "rgba.png": rgb.convert("RGBA"), "palette.png": rgb.convert("P"),
        "la.png": grey.convert("LA"), "16bit.png": sixteen, "cmyk.jpg": rgb.convert("CMYK"),
    }
    classes = sorted(p for p in root.iterdir())
    for (name, img), folder in zip(variants.items(), classes):
        first = sorted(folder.iterdir())[0]
        first.unlink()
        img.save(folder / name)
    # and one of another size: resized (short side) and centre-cropped
    Image.fromarray(faces[1]).resize((24, 20)).save(classes[0] / "bigger.png")
    return variants


def test_grey_rgba_cmyk_palette_16bit_and_other_sizes_are_converted(tmp_path, capsys, caplog):
    from irface.data.datasets import ImageFolderDataset

    data = write_image_folder(tmp_path / "faces")
    variants = _other_modes(data)
    ds = ImageFolderDataset(data, image_size=SIZE, max_bad_images=0)
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.shape == (3, SIZE, SIZE) and img.dtype.is_floating_point is False
    by_name = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    grey = ds[by_name["grey.png"]][0]
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    # 16-bit: scaled to 8 bits, not clipped to white.
    assert (ds[by_name["16bit.png"]][0] == grey).all()
    # Training reads them all (max_bad_images=0 would stop at the first it could not read) ...
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(train_args(tmp_path / "run", data, max_bad_images=0, batch_size=7, max_steps=7), capsys)
    assert code == 0, err
    # ... and so do embedding and packing.
    model = tiny_model_file(tmp_path / "m.pth")
    # bigger.png is a crop of another size: auto mode would look for a face in it, --aligned resizes it.
    code, _, err = run_cli(["embed", model, data, "-o", tmp_path / "e.npz", "--device", "cpu", "--no-progress",
                            "--aligned"], capsys)
    assert code == 0, err
    emb = np.load(tmp_path / "e.npz")
    assert len(emb["names"]) == len(ds) and np.isfinite(emb["embeddings"]).all()
    assert {n.rsplit("/", 1)[-1] for n in emb["names"]} >= set(variants)
    code, _, err = run_cli(["data", "pack", data, tmp_path / "packed"], capsys)
    assert code == 0, err
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]
