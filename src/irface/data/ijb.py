"""The insightface-prepared IJB-B / IJB-C archive: its layout and meta files, read and checked.

    ROOT/loose_crop/<name>.jpg                       the photos (not aligned)
    ROOT/meta/<t>_name_5pts_score.txt                name x1 y1 ... x5 y5 faceness   (one line per image)
    ROOT/meta/<t>_face_tid_mid.txt                   name template_id media_id      (same order)
    ROOT/meta/<t>_template_pair_label.txt            template_id1 template_id2 label
    ROOT/meta/<t>_1N_gal_G1.csv, ..._G2.csv          1:N galleries (IJB-B: _S1, _S2), header line,
    ROOT/meta/<t>_1N_probe_mixed.csv                 then TEMPLATE_ID,SUBJECT_ID,... per image

`<t>` is `ijbc` or `ijbb`. ROOT may also be the folder holding `IJBC/` or `IJBB/`. The 1:N files are
optional (`gallery_G1` spellings are accepted too: the reference script asks for those names).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from irface.errors import DataError

TARGETS = ("IJBC", "IJBB")
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
# The meta files' names after the `<t>_` prefix (the module docstring shows the layout).
LANDMARKS, TEMPLATES, PAIRS = "name_5pts_score.txt", "face_tid_mid.txt", "template_pair_label.txt"
PROBE = "1N_probe_mixed.csv"


def meta_name(target: str, suffix: str) -> str:
    """A meta file's name for `target`: `meta_name("IJBC", PAIRS)` is `ijbc_template_pair_label.txt`."""
    return f"{normalize_target(target).lower()}_{suffix}"


def gallery_names(target: str, gallery: str) -> tuple[str, str]:
    """A 1:N gallery's file names: insightface's `_gal_` and the reference script's `_gallery_`."""
    return meta_name(target, f"1N_gal_{gallery}.csv"), meta_name(target, f"1N_gallery_{gallery}.csv")


@dataclass
class Gallery:
    """One 1:N file: its template ids and their subjects, one entry per template (first row wins)."""

    name: str
    templates: np.ndarray
    subjects: np.ndarray


@dataclass
class IJBMeta:
    root: Path
    target: str
    names: list[str]
    landmarks: np.ndarray      # float32 (N, 5, 2), as the reference parses them
    faceness: np.ndarray       # float32 (N,)
    templates: np.ndarray      # int64 (N,)
    medias: np.ndarray         # int64 (N,)
    pair_t1: np.ndarray        # int64 (P,)
    pair_t2: np.ndarray
    labels: np.ndarray         # int8 (P,), 1 = same subject
    galleries: list[Gallery] = field(default_factory=list)
    probe: Optional[Gallery] = None

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    def fingerprint(self) -> dict:
        """What a feature cache must match: the image list (count and a hash of the names and landmarks)."""
        import hashlib

        h = hashlib.sha256()
        h.update("\n".join(self.names).encode())
        h.update(np.ascontiguousarray(self.landmarks).tobytes())
        return {"target": self.target, "images": len(self.names), "sha256": h.hexdigest()}


def find_root(root: str | Path, target: str) -> Path:
    """The target's folder (holding loose_crop/ and meta/): ROOT itself or ROOT/<target>."""
    target = normalize_target(target)
    root = Path(root)
    for cand in (root, root / target):
        if (cand / "meta").is_dir():
            return cand
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    raise DataError(f"{root}: not an IJB folder (expected {root}/meta/ or {root}/{target}/meta/ "
                    f"with {meta_name(target, TEMPLATES)}; see docs/eval.md)")


def normalize_target(target: str) -> str:
    t = target.upper().replace("-", "")
    if t not in TARGETS:
        raise DataError(f"unknown IJB target '{target}' (use IJBC or IJBB)")
    return t


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (the IJB meta folder must hold it; see docs/eval.md)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _check_columns(path: Path, rows: list[list[str]], n: int, what: str) -> None:
    for i, row in enumerate(rows):
        if len(row) != n:
            raise DataError(f"{path}: line {i + 1} has {len(row)} columns, expected {n} ({what})")


def _numbers(path: Path, rows: list[list[str]], cols: slice, kind: type, what: str) -> np.ndarray:
    """Columns `cols` of every row as float32 (parsed with float(), then cast, as the reference) or int64."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append([kind(v) for v in row[cols]])
        except ValueError:
            raise DataError(f"{path}: line {i + 1}: expected {what}, got {' '.join(row)!r}") from None
    arr = np.array(out, dtype=np.float64 if kind is float else np.int64).reshape(len(rows), -1)
    if kind is float:
        arr = arr.astype(np.float32)
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise DataError(f"{path}: line {int(np.argmin(finite)) + 1}: {what} must be finite numbers")
    return arr


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`t1 t2 label` lines -> three int arrays (fast path for IJB-C's 15.6 million lines)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (the IJB meta folder must hold it; see docs/eval.md)") from None
    lines = sum(1 for line in data.splitlines() if line.strip())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a parse stop is caught by the count check below
        flat = np.fromstring(data, dtype=np.int64, sep=" ") if lines else np.zeros(0, np.int64)
    if flat.size != 3 * lines:
        rows = [line.decode(errors="replace").split() for line in data.splitlines() if line.strip()]
        _check_columns(path, rows, 3, "template_id1 template_id2 label")
        _numbers(path, rows, slice(0, 3), int, "three integers")
        raise DataError(f"{path}: cannot parse as 'template_id1 template_id2 label' lines")
    pairs = flat.reshape(-1, 3)
    bad = ~np.isin(pairs[:, 2], (0, 1))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise DataError(f"{path}: line {i + 1}: label must be 0 or 1, got {pairs[i, 2]}")
    return pairs[:, 0].copy(), pairs[:, 1].copy(), pairs[:, 2].astype(np.int8)


def read_subject_csv(path: Path, name: str) -> Gallery:
    """A 1:N csv (header, then TEMPLATE_ID,SUBJECT_ID,... per row) -> one entry per template."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    body = [r for r in rows[1:] if r]
    tids, sids = [], []
    for i, row in enumerate(body):
        try:
            tids.append(int(row[0]))
            sids.append(int(row[1]))
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {i + 2}: expected TEMPLATE_ID,SUBJECT_ID,..., got {','.join(row)!r}") from None
    templates, first = np.unique(np.asarray(tids, dtype=np.int64), return_index=True)
    return Gallery(name, templates, np.asarray(sids, dtype=np.int64)[first])


def _find_1n(meta: Path, target: str) -> tuple[list[Gallery], Optional[Gallery]]:
    galleries = []
    for g in GALLERIES[target]:
        for name in gallery_names(target, g):
            if (meta / name).is_file():
                galleries.append(read_subject_csv(meta / name, g))
                break
    probe_path = meta / meta_name(target, PROBE)
    if len(galleries) != 2 or not probe_path.is_file():
        return [], None
    return galleries, read_subject_csv(probe_path, "probe_mixed")


def read_ijb(root: str | Path, target: str) -> IJBMeta:
    """Read and check every meta file of the IJB set at ROOT (see the module docstring)."""
    target = normalize_target(target)
    folder = find_root(root, target)
    meta = folder / "meta"
    lmk_path = meta / meta_name(target, LANDMARKS)
    tid_path = meta / meta_name(target, TEMPLATES)
    rows = _lines(lmk_path)
    _check_columns(lmk_path, rows, 12, "name x1 y1 ... x5 y5 faceness")
    numbers = _numbers(lmk_path, rows, slice(1, 12), float, "10 landmark coordinates and a faceness score")
    names = [r[0] for r in rows]
    tid_rows = _lines(tid_path)
    _check_columns(tid_path, tid_rows, 3, "name template_id media_id")
    ids = _numbers(tid_path, tid_rows, slice(1, 3), int, "integer template and media ids")
    if len(tid_rows) != len(rows):
        raise DataError(f"{tid_path}: {len(tid_rows)} lines, but {lmk_path.name} has {len(rows)}; "
                        "both list every image in the same order")
    for i, (a, b) in enumerate(zip(names, tid_rows)):
        if a != b[0]:
            raise DataError(f"{tid_path}: line {i + 1} names {b[0]}, but line {i + 1} of {lmk_path.name} "
                            f"names {a}; both list every image in the same order")
    if not names:
        raise DataError(f"{lmk_path}: no images listed")
    t1, t2, labels = read_pairs(meta / meta_name(target, PAIRS))
    galleries, probe = _find_1n(meta, target)
    return IJBMeta(root=folder, target=target, names=names, landmarks=numbers[:, :10].reshape(-1, 5, 2),
                   faceness=numbers[:, 10].copy(), templates=ids[:, 0].copy(), medias=ids[:, 1].copy(),
                   pair_t1=t1, pair_t2=t2, labels=labels, galleries=galleries, probe=probe)
