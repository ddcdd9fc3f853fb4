"""A folder of embeddings in Parquet shards with a manifest: what `irface embed --ray` writes and
`irface gallery build --from-embeddings` reads. No Ray and no torch here.

Layout of `DIR`:
- `manifest.json`: what the run is (model fingerprint, options, the photo listing's count and hash,
  shard size) and which shards are done, with their photo, face and skip counts. Written atomically
  after each shard, so a crash leaves the last complete state; a rerun skips the shards marked done.
- `shard-00000.parquet`, ...: shard k holds the faces of photos k*S .. (k+1)*S - 1 of the sorted
  listing, one row per face: `source` (the photo, named as `irface embed` names it), `face` (0 is the
  largest; more with --all-faces), `box` ([x1, y1, x2, y2], null for an aligned crop), `score` (null
  likewise), `embedding` (L2-normalised float32), and `norm` (the length before normalisation) with
  --quality. The photos of the shard that were skipped, with the reason, are in the file's metadata
  (key `irface.shard`), so each file is one complete unit, written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from irface.errors import ConfigError, DataError, OutputError, import_extra
from irface.utils import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "irface-embeddings"
VERSION = 1
SHARD_META_KEY = b"irface.shard"
# The run's settings a rerun must share to continue the same shards (batch size and device may change).
SAME_RUN_KEYS = ("fingerprint", "embedding_size", "input_size", "precision", "options", "listing", "shard_size")


def import_ray_extra(module: str) -> Any:
    """`module` of the ray extra (ray, pyarrow), or one line naming the extra when it is missing."""
    return import_extra(module, "irface embed --ray", "ray")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def listing_digest(names: Sequence[str]) -> dict[str, Any]:
    """Count and SHA-256 of the photo listing: a rerun over other photos must not continue these shards."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return {"photos": len(names), "sha256": h.hexdigest()}


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard over a listing of `count` photos."""
    if shard_size <= 0:
        raise ConfigError(f"--shard-size must be positive, got {shard_size}")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


class Manifest:
    """`DIR/manifest.json`: the run's settings and the shards done."""

    def __init__(self, folder: Path, data: dict[str, Any]):
        self.folder = Path(folder)
        self.data = data

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def shards(self) -> int:
        return int(self.data["shards"])

    @property
    def done(self) -> dict[str, dict[str, int]]:
        return self.data["done"]

    def is_done(self, k: int) -> bool:
        return str(k) in self.done and (self.folder / shard_name(k)).is_file()

    def complete(self) -> bool:
        return all(self.is_done(k) for k in range(self.shards))

    def mark_done(self, k: int, photos: int, faces: int, skipped: int) -> None:
        self.done[str(k)] = {"photos": photos, "faces": faces, "skipped": skipped}
        self.save()

    def save(self) -> None:
        with atomic_write(self.path, "w") as f:
            json.dump(self.data, f, indent=1)
            f.write("\n")

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (expected the --output folder of irface embed --ray)")
        if not path.is_file():
            raise DataError(f"{folder}: no {MANIFEST} here (not an irface embed --ray output)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path}: not an irface embeddings manifest")
        if data.get("version") != VERSION:
            raise DataError(f"{path}: manifest version {data.get('version')}; this irface reads version {VERSION}")
        return cls(folder, data)

    @classmethod
    def open_or_create(cls, folder: str | Path, run: dict[str, Any]) -> "Manifest":
        """The manifest of `folder` if it describes the same run (else ConfigError naming what differs), or
        a new one for `run` (its settings, `inputs`, `model` and `shards`) in an empty or new folder."""
        folder = Path(folder)
        if (folder / MANIFEST).is_file():
            manifest = cls.read(folder)
            differs = [k for k in SAME_RUN_KEYS if manifest.data.get(k) != run.get(k)]
            if differs:
                raise ConfigError(f"{folder}: holds the shards of another run ({', '.join(differs)} differ); "
                                  "give a new --output folder, or remove this one to start over")
            return manifest
        if folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"{folder}: not empty and holds no {MANIFEST}; give a new or empty --output folder")
        manifest = cls(folder, {"format": FORMAT, "version": VERSION, **run, "done": {}})
        manifest.save()
        return manifest


def check_output_folder(path: str | Path) -> Path:
    """Refuse, before any work, an --output that cannot be the shards' folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; irface embed --ray writes a folder of Parquet shards there")
    import_ray_extra("pyarrow")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot make this folder ({e.strerror or e})", e.strerror or "") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write here (not writable)")
    return path


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One writer per shards folder: a second `irface embed --ray` on it is refused, not interleaved."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)  # the folder itself is locked: no lock file left behind
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"{folder}: another irface embed --ray is writing here") from None
        yield
    finally:
        os.close(fd)


def remove_partial_files(folder: Path) -> int:
    """Delete the temporary files a killed writer left (`.shard-00003.parquet.*.tmp`); returns how many."""
    removed = 0
    for p in folder.glob(".shard-*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


def write_shard(path: str | Path, sources: Sequence[str], face_index: Sequence[int],
                boxes: Sequence[Optional[Sequence[float]]], scores: Sequence[Optional[float]],
                embeddings: np.ndarray, norms: Optional[np.ndarray], *, photos: int, skipped: list[dict]) -> None:
    """One shard file, atomically (see the module doc for the columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings = np.asarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    columns = {
        "source": pa.array(list(sources), pa.string()),
        "face": pa.array(list(face_index), pa.int32()),
        "box": pa.array([None if b is None else [float(v) for v in b] for b in boxes], pa.list_(pa.float64())),
        "score": pa.array([None if s is None else float(s) for s in scores], pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    }
    if norms is not None:
        columns["norm"] = pa.array(np.asarray(norms, dtype=np.float32), pa.float32())
    table = pa.table(columns)
    meta = {"photos": int(photos), "faces": int(n), "skipped": skipped}
    table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(meta).encode()})
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f)


def shard_metadata(path: str | Path) -> dict[str, Any]:
    """{"photos", "faces", "skipped"} of one shard file, from its footer only."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet shard ({e})") from None
    raw = (schema.metadata or {}).get(SHARD_META_KEY)
    if raw is None:
        raise DataError(f"{path}: not an irface shard (no {SHARD_META_KEY.decode()} metadata)")
    return json.loads(raw)


@dataclass
class ShardedEmbeddings:
    """Every row of a finished shards folder, in listing order."""

    manifest: Manifest
    sources: list[str]
    face_index: np.ndarray  # int (N,)
    boxes: list[Optional[list[float]]]
    scores: list[Optional[float]]
    embeddings: np.ndarray  # float32 (N, E), L2-normalised
    norms: Optional[np.ndarray]  # float32 (N,) with --quality
    skipped: list[dict] = field(default_factory=list)

    def names(self) -> list[str]:
        """Each row's name as `irface embed` (one process) names it: the photo, or `photo#k` with --all-faces."""
        from irface.infer.photo import face_name

        if not self.manifest.data["options"].get("all_faces"):
            return list(self.sources)
        return [face_name(s, int(k)) for s, k in zip(self.sources, self.face_index)]


def read_shards(folder: str | Path) -> ShardedEmbeddings:
    """All shards of a finished `irface embed --ray` run; DataError if the run is not finished."""
    import pyarrow.parquet as pq

    manifest = Manifest.read(folder)
    missing = [k for k in range(manifest.shards) if not manifest.is_done(k)]
    if missing:
        raise DataError(f"{manifest.folder}: the embedding run is not finished ({manifest.shards - len(missing)} of "
                        f"{manifest.shards} shards done); rerun the same irface embed --ray command to finish it")
    dim = int(manifest.data["embedding_size"])
    sources: list[str] = []
    faces, boxes, scores, chunks, norms, skipped = [], [], [], [], [], []
    quality = bool(manifest.data["options"].get("quality"))
    for k in range(manifest.shards):
        path = manifest.folder / shard_name(k)
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise DataError(f"{path}: not a readable Parquet shard ({e}); delete it and rerun irface embed --ray") from None
        skipped += json.loads(table.schema.metadata[SHARD_META_KEY])["skipped"]
        sources += table.column("source").to_pylist()
        faces.append(table.column("face").to_numpy())
        boxes += table.column("box").to_pylist()
        scores += table.column("score").to_pylist()
        emb = table.column("embedding").combine_chunks()
        chunks.append(emb.flatten().to_numpy().reshape(-1, dim) if len(emb) else np.zeros((0, dim), np.float32))
        if quality:
            norms.append(table.column("norm").to_numpy())
    return ShardedEmbeddings(manifest, sources, np.concatenate(faces).astype(np.int64) if faces else np.zeros(0, np.int64),
                             boxes, scores, np.concatenate(chunks).astype(np.float32),
                             np.concatenate(norms).astype(np.float32) if quality else None, skipped)
