"""`irface data info`: what a RecordIO folder, an image folder or a `.bin` holds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from irface.errors import DataError


def _class_stats(counts: np.ndarray) -> dict:
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max()),
            "empty": int((counts == 0).sum())}


def _first_image_size(data: bytes, source: str) -> list[int]:
    from irface.data.convert import image_header

    _, w, h = image_header(data, source)
    return [h, w]


def describe_recordio(folder: Path, scan: bool = False, progress: Optional[bool] = None) -> dict:
    """Images, classes, per-class counts, image size and layout of a RecordIO folder.

    Per-class counts come from the identity records in the header layout (fast) and from reading
    every record's label in the plain layout or with `scan` (which also checks the labels against
    the identity records and the class count).
    """
    from irface.data.recordio import RecordIODataset

    ds = RecordIODataset(folder)
    meta = ds.meta
    info = {"kind": "recordio", "path": str(ds.folder), "layout": meta.layout, "images": len(ds),
            "classes": ds.num_classes, "property": list(meta.property) if meta.property else None}
    key, data, _ = ds.read(0)
    info["image_size"] = _first_image_size(data, f"{ds.reader.rec_path}: record {key}")
    if meta.property:
        info["property_size"] = [meta.property[1], meta.property[2]]
    counts = None
    if meta.layout == "header" and meta.identity_range is not None:
        ranges = meta.identity_ranges()
        counts = ranges[:, 1] - ranges[:, 0]
        if (counts < 0).any() or ranges.min() < 1 or ranges.max() > len(ds) + 1:
            bad = int(np.flatnonzero((counts < 0) | (ranges[:, 0] < 1) | (ranges[:, 1] > len(ds) + 1))[0])
            raise DataError(f"{ds.reader.rec_path}: identity record {meta.identity_range[0] + bad}: "
                            f"range {ranges[bad].tolist()} is outside the images 1..{len(ds)}")
    if meta.layout == "plain" or scan:
        labels = meta.scan_labels(progress=progress)
        over = np.flatnonzero(labels >= ds.num_classes)
        if over.size:
            raise DataError(f"{ds.reader.rec_path}: record {int(ds.keys[over[0]])}: label {int(labels[over[0]])} "
                            f"is outside the {ds.num_classes} classes")
        if counts is not None:  # the header layout's identity records
            expected = np.repeat(np.arange(len(counts)), counts)
            if len(expected) != len(labels) or not np.array_equal(expected, labels):
                i = int(np.flatnonzero(expected[:len(labels)] != labels[:len(expected)])[0]) \
                    if len(expected) == len(labels) else 0
                raise DataError(f"{ds.reader.rec_path}: record {int(ds.keys[i])}: label {int(labels[i])} does not "
                                "match the identity records' ranges")
        counts = np.bincount(labels, minlength=ds.num_classes)
        info["labels_checked"] = True
    assert counts is not None  # from the identity records (header) or the labels (plain: always scanned)
    info["per_class"] = _class_stats(counts)
    return info


def describe_image_folder(folder: Path) -> dict:
    from irface.data.datasets import ImageFolderDataset

    ds = ImageFolderDataset(folder)
    counts = np.bincount([label for _, label in ds.samples], minlength=ds.num_classes)
    path = ds.samples[0][0]
    return {"kind": "image_folder", "path": str(folder), "images": len(ds), "classes": ds.num_classes,
            "per_class": _class_stats(counts), "image_size": _first_image_size(path.read_bytes(), str(path))}


def describe_bin(path: Path) -> dict:
    from irface.data.bin import read_bin

    bins, issame = read_bin(path)
    info = {"kind": "bin", "path": str(path), "pairs": int(len(issame)), "positives": int(issame.sum()),
            "negatives": int((~issame).sum()), "images": len(bins)}
    if bins:
        info["image_size"] = _first_image_size(bins[0], f"{path} image 0")
    return info


def describe(path: str | Path, scan: bool = False, progress: Optional[bool] = None) -> dict:
    """Describe any data path irface reads: a `.bin`, a RecordIO folder (or its `.rec`), an image folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".bin":
        return describe_bin(path)
    from irface.data.recordio import REC_NAME, recordio_folder  # torch: not for a .bin

    if (recordio_folder(path) / REC_NAME).exists():
        return describe_recordio(recordio_folder(path), scan=scan, progress=progress)
    if path.is_dir():
        return describe_image_folder(path)
    raise DataError(f"{path}: not a .bin, a RecordIO folder or an image folder")


def format_info(info: dict) -> str:
    """Human-readable lines for `describe`'s result."""
    lines = [f"{info['path']}: {info['kind'].replace('_', ' ')}"]
    if info["kind"] == "bin":
        lines.append(f"  pairs: {info['pairs']} ({info['positives']} positive, {info['negatives']} negative)")
    else:
        if info["kind"] == "recordio":
            lines.append(f"  layout: {info['layout']}")
        lines.append(f"  images: {info['images']}")
        lines.append(f"  classes: {info['classes']}")
        pc = info["per_class"]
        lines.append(f"  images per class: min {pc['min']}, median {pc['median']:g}, max {pc['max']}"
                     + (f", {pc['empty']} empty" if pc["empty"] else ""))
    if "image_size" in info:
        h, w = info["image_size"]
        lines.append(f"  image size: {w}x{h} (first image)")
    if info.get("property_size"):
        h, w = info["property_size"]
        lines.append(f"  property: {info['classes']} classes, {w}x{h}")
    return "\n".join(lines)
