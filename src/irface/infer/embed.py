"""Embed many faces in batches and write L2-normalised embeddings with their file list.

Output formats, chosen by the output's suffix:
- `.npy`: float32 (N, E) array, plus the sidecar `<name>.txt` with one source name per line, same order;
- `.npz`: arrays `embeddings` (N, E) float32 and `names` (N,) str in one file;
- `.parquet`: columns `name` (string) and `embedding` (list of float32); needs pyarrow.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from irface.errors import ConfigError, DataError
from irface.infer.images import FaceSource, collect_faces
from irface.infer.model_file import Embedder
from irface.utils import atomic_write, check_writable

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".npz", ".parquet")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def embed_faces(embedder: Embedder, sources: Sequence[FaceSource], batch_size: int = 64,
                progress: bool = True) -> np.ndarray:
    """L2-normalised float32 (N, E) embeddings of `sources`, in order, with a progress bar on stderr."""
    from tqdm import tqdm

    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    out = np.empty((len(sources), embedder.embedding_size), dtype=np.float32)
    with tqdm(total=len(sources), unit="img", file=sys.stderr, disable=not progress, desc="embed") as bar:
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            images = np.stack([s.load() for s in chunk])
            out[start:start + len(chunk)] = l2_normalize(embedder.embed(images))
            bar.update(len(chunk))
    return out


def check_output(path: str | Path) -> Path:
    """Refuse an output the writer cannot produce, before any work is done."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"{path}: output must end in {', '.join(OUTPUT_SUFFIXES)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"{path}: writing parquet needs pyarrow (pip install pyarrow); or use .npy / .npz") from None
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a file name")
    return check_writable(path)


def names_path(path: str | Path) -> Path:
    """The sidecar file list of a `.npy` output."""
    return Path(path).with_suffix(".txt")


def write_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str]) -> list[Path]:
    """Write embeddings and names atomically (format by suffix, see the module doc); returns the files written."""
    path = check_output(path)
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names for {len(embeddings)} embeddings")
    bad = [n for n in names if "\n" in n or "\r" in n]
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if bad:
            raise DataError(f"{bad[0]!r}: a file name with a line break cannot go in {names_path(path)}; use .npz")
        # Both are written before either is renamed: a full disk leaves neither, never a new list beside
        # an old array (the array is renamed first, the list right after it).
        with atomic_write(names_path(path), "w") as fn:
            fn.writelines(f"{n}\n" for n in names)
            with atomic_write(path, "wb") as fa:
                np.save(fa, embeddings.astype(np.float32))
        return [path, names_path(path)]
    if suffix == ".npz":
        with atomic_write(path, "wb") as f:
            np.savez(f, embeddings=embeddings.astype(np.float32), names=np.asarray(list(names), dtype=str))
        return [path]
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"name": pa.array(list(names), pa.string()),
                      "embedding": pa.array(list(embeddings.astype(np.float32)), pa.list_(pa.float32()))})
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f)
    return [path]


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read back what `write_embeddings` wrote: (float32 (N, E), names)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path), names_path(path).read_text().splitlines()
    if suffix == ".npz":
        with np.load(path) as z:
            return z["embeddings"], [str(n) for n in z["names"]]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return np.asarray(table.column("embedding").to_pylist(), dtype=np.float32), table.column("name").to_pylist()


def embed_to_file(embedder: Embedder, inputs: Sequence[str | Path], output: str | Path, batch_size: int = 64,
                  progress: bool = True) -> dict:
    """Embed every face under `inputs` and write them to `output`; returns a summary dict."""
    output = check_output(output)
    sources = collect_faces(inputs, embedder.input_size)
    embeddings = embed_faces(embedder, sources, batch_size, progress)
    files = write_embeddings(output, embeddings, [s.name for s in sources])
    log.info("wrote %d embeddings of size %d to %s", len(sources), embeddings.shape[1], output)
    return {"count": len(sources), "embedding_size": int(embeddings.shape[1]), "files": [str(f) for f in files]}
