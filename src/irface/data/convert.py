"""Converters: image folder -> RecordIO (`pack`), RecordIO -> image folder (`unpack`), image folder -> `.bin` pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from irface.data.datasets import CLASSES_NAME, ImageFolderDataset
from irface.data.pairs import plan_pairs
from irface.data.progress import progress_bar
from irface.data.recordio import RecordIODataset, RecordIOReader, write_recordio_dataset
from irface.data.bin import save_bin
from irface.data.images import decode_image, encode_image, open_image
from irface.errors import DataError
from irface.utils import atomic_write

log = logging.getLogger(__name__)

_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


def image_header(data: bytes, source: str) -> tuple[str, int, int]:
    """(format, width, height) read from the image header only; `DataError` if it is not an image."""
    with open_image(data, source) as img:
        fmt, (w, h) = img.format, img.size
    return fmt, w, h


def pack_image_folder(folder: str | Path, out_dir: str | Path, image_size: Optional[int] = None,
                      reencode: bool = False, quality: int = 95, layout: str = "header",
                      skip_bad: bool = False, progress: Optional[bool] = None) -> dict:
    """Pack `folder/<class>/<image>` into `out_dir/train.rec`, `train.idx`, `property` and `classes.txt`.

    Images are stored as their encoded bytes unless `reencode` (then decoded, resized short side to
    `image_size` and centre-cropped, and saved as JPEG at `quality`). Every image's header is read
    first: an unreadable one is a `DataError`, or with `skip_bad` a skip that is counted and logged.
    `property` gets `image_size`, or the first image's size when not given.
    """
    src = ImageFolderDataset(folder)
    out = Path(out_dir)
    stats: dict[str, Any] = {"skipped": 0, "other_size": 0, "size": None}
    target = image_size or 112

    def items() -> Iterator[tuple[int, bytes]]:
        for path, label in progress_bar(src.samples, desc="pack", unit="img", enabled=progress):
            try:
                data = path.read_bytes()
                if reencode:
                    data = encode_image(decode_image(data, target, str(path)), "JPEG", quality)
                    w = h = target
                else:
                    _, w, h = image_header(data, str(path))
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            except DataError as e:
                if not skip_bad:
                    raise
                stats["skipped"] += 1
                log.warning("skipping %s", e)
                continue
            if stats["size"] is None:
                stats["size"] = (h, w)
            elif stats["size"] != (h, w):
                stats["other_size"] += 1
            yield label, data

    try:
        n = write_recordio_dataset(out, items(), src.num_classes, (target, target), layout)
    except ValueError as e:  # no images left after skipping
        raise DataError(f"{folder}: {e}") from None
    size = (image_size, image_size) if image_size else stats["size"]
    from irface.data.recordio import PROPERTY_NAME, write_property

    write_property(out / PROPERTY_NAME, src.num_classes, size[0], size[1])
    src.save_classes(out)
    if stats["other_size"]:
        log.warning("%d images are not %dx%d; readers resize them (short side, centre crop)",
                    stats["other_size"], size[1], size[0])
    return {"images": n, "classes": src.num_classes, "skipped": stats["skipped"],
            "image_size": list(size), "other_size": stats["other_size"], "layout": layout, "out_dir": str(out)}


def _suffix(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:2] == b"BM":
        return ".bmp"
    return ".jpg"  # unknown: readers decide by content, not by name


def unpack_recordio(rec_dir: str | Path, out_folder: str | Path, progress: Optional[bool] = None) -> dict:
    """Write every image of a RecordIO folder to `out_folder/<class>/<key>.<ext>` (bytes unchanged).

    Class folders are named from `classes.txt` when `pack` left one, otherwise by zero-padded class
    index, so that sorted folder names give back the same class indices.
    """
    ds = RecordIODataset(rec_dir)
    out = Path(out_folder)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output folder exists and is not empty")
    names_file = ds.folder / CLASSES_NAME
    names = None
    if names_file.exists():
        names = names_file.read_text().splitlines()
        if len(names) != ds.num_classes or sorted(names) != names:
            log.warning("%s does not list %d sorted class names; using class numbers", names_file, ds.num_classes)
            names = None
    width = len(str(max(ds.num_classes - 1, 0)))
    kwidth = len(str(int(ds.keys[-1])))
    counts = np.zeros(ds.num_classes, dtype=np.int64)
    for i in progress_bar(range(len(ds)), desc="unpack", unit="img", enabled=progress):
        key, data, label = ds.read(i)
        cls = names[label] if names else f"{label:0{width}d}"
        with atomic_write(out / cls / f"{key:0{kwidth}d}{_suffix(data)}") as f:
            f.write(data)
        counts[label] += 1
    empty = int((counts == 0).sum())
    if empty:
        log.warning("%d classes have no images (no folder written for them)", empty)
    return {"images": len(ds), "classes": ds.num_classes, "empty_classes": empty, "out_folder": str(out)}


def make_pairs(folder: str | Path, out_bin: str | Path, pairs: int, seed: int = 0, folds: int = 10,
               progress: Optional[bool] = None) -> dict:
    """A balanced `.bin` of `pairs` pairs from an image folder of (held-out) identities.

    Pairs alternate positive / negative in `folds` identity-disjoint folds (see `plan_pairs`);
    images are stored as their encoded bytes, after checking that each one decodes.
    """
    src = ImageFolderDataset(folder)
    by_class: list[list[Path]] = [[] for _ in src.classes]
    for path, label in src.samples:
        by_class[label].append(path)
    rows = plan_pairs(np.random.default_rng(seed), [len(p) for p in by_class], pairs, folds, source=str(folder))
    cache: dict[Path, bytes] = {}
    images: list[bytes] = []
    for a, ia, b, ib, _ in progress_bar(rows, desc="pairs", unit="pair", enabled=progress):
        for cls, idx in ((a, ia), (b, ib)):
            path = by_class[cls][idx]
            if path not in cache:
                data = path.read_bytes()
                decode_image(data, 112, str(path))  # refuse now what evaluation could not read
                cache[path] = data
            images.append(cache[path])
    issame = [bool(s) for s in rows[:, 4]]
    save_bin(out_bin, images, issame)
    return {"pairs": len(issame), "positives": int(sum(issame)), "identities": src.num_classes,
            "images": len(cache), "out": str(out_bin)}


def reindex_recordio(rec_dir: str | Path, progress: Optional[bool] = None) -> dict:
    """Rebuild `train.idx` from the framing of `train.rec` (keys 0..N-1 in file order)."""
    from irface.data.recordio import IDX_NAME, REC_NAME, recordio_folder

    folder = recordio_folder(rec_dir)
    reader = RecordIOReader(folder / REC_NAME)
    offsets = reader.scan_offsets()
    with atomic_write(folder / IDX_NAME, "w") as f:
        f.write("".join(f"{k}\t{off}\n" for k, off in enumerate(offsets)))
    return {"records": len(offsets), "idx": str(folder / IDX_NAME)}
