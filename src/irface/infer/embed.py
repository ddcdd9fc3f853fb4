"""Embed many faces in batches and write L2-normalised embeddings with their file list.

Output formats, chosen by the output's suffix:
- `.npy`: float32 (N, E) array, plus the sidecar `<name>.txt` with one source name per line, same order;
- `.npz`: arrays `embeddings` (N, E) float32 and `names` (N,) str in one file;
- `.parquet`: columns `name` (string) and `embedding` (list of float32); needs pyarrow.

With `quality` (`irface embed --quality`), each face's feature norm, the length of the model's output
before L2 normalisation, goes beside its embedding: the sidecar `<name>.norm.npy` (float32 (N,)), the
array `norm` in `.npz`, the column `norm` (float32) in `.parquet`. Only a MagFace- or AdaFace-trained
model makes that norm a face-quality score (their losses tie it to recognisability); for other models
it means nothing in particular.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

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


@dataclass
class EmbedResult:
    """What `embed_sources` found: one row per face, and the inputs it skipped with the reason."""

    names: list[str]
    embeddings: np.ndarray  # float32 (N, E), L2-normalised
    norms: np.ndarray  # float32 (N,), each raw embedding's length before normalisation
    faces: list[dict] = field(default_factory=list)  # PhotoFace.to_dict() of each row
    skipped: list[dict] = field(default_factory=list)  # {"name", "reason"}


def embed_sources(embedder: Embedder, sources: Sequence[FaceSource], batch_size: int = 64, progress: bool = True,
                  *, mode: str = "auto", all_faces: bool = False, strict: bool = False,
                  detector=None) -> EmbedResult:
    """Embed every face of `sources` (photos are detected and aligned as `irface.infer.photo` decides).

    An input that cannot be read or holds no face is logged and skipped (with `strict`, it stops the
    run with its DataError); crops are embedded `batch_size` at a time as they come.
    """
    from tqdm import tqdm

    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    names: list[str] = []
    faces: list[dict] = []
    skipped: list[dict] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(embedder.embed(np.stack(pending)).astype(np.float32))
            pending.clear()

    with tqdm(total=len(sources), unit="img", file=sys.stderr, disable=not progress, desc="embed") as bar:
        for source in sources:
            found, skip = source_faces(source, mode=mode, all_faces=all_faces, detector=detector,
                                       size=embedder.input_size, strict=strict)
            if skip:
                skipped.append(skip)
            for face in found:
                names.append(face.name)
                faces.append(face.to_dict())
                pending.append(face.crop)
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    raw = np.concatenate(chunks) if chunks else np.zeros((0, embedder.embedding_size), np.float32)
    return EmbedResult(names, *unit_and_norms(raw), faces, skipped)


def source_faces(source: FaceSource, *, mode: str = "auto", all_faces: bool = False, detector=None,
                 size: int | tuple[int, int] = 112, strict: bool = False) -> tuple[list, Optional[dict]]:
    """The faces of one input, or none and why it was skipped (`{"name", "reason"}`, logged): the one rule
    for a photo that cannot be read or holds no face, shared by `embed_sources` and `irface embed --ray`.
    With `strict`, the DataError is raised instead."""
    from irface.infer.photo import faces_from_source, no_face_error

    try:
        found = faces_from_source(source, mode=mode, all_faces=all_faces, detector=detector, size=size)
        if not found:
            raise no_face_error(source.name, detector)
    except DataError as e:
        if strict:
            raise
        log.warning("skipped %s", e)
        return [], {"name": source.name, "reason": str(e)}
    return found, None


def unit_and_norms(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw outputs (N, E) as L2-normalised float32 rows and each row's length before (the
    feature norm `--quality` writes)."""
    raw = np.asarray(raw, dtype=np.float32)
    return l2_normalize(raw), np.linalg.norm(raw, axis=1).astype(np.float32)


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
    return check_writable(path)


def names_path(path: str | Path) -> Path:
    """The sidecar file list of a `.npy` output."""
    return Path(path).with_suffix(".txt")


def norms_path(path: str | Path) -> Path:
    """The sidecar feature norms of a `.npy` output (`emb.npy` -> `emb.norm.npy`)."""
    return Path(path).with_suffix(".norm.npy")


def write_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str],
                     norms: Optional[np.ndarray] = None) -> list[Path]:
    """Write embeddings and names, and the feature `norms` if given, atomically (format by suffix, see
    the module doc); returns the files written."""
    path = check_output(path)
    if len(names) != len(embeddings) or (norms is not None and len(norms) != len(embeddings)):
        raise ValueError(f"{len(names)} names and {'no' if norms is None else len(norms)} norms for "
                         f"{len(embeddings)} embeddings")
    norms = None if norms is None else np.asarray(norms, dtype=np.float32)
    bad = [n for n in names if "\n" in n or "\r" in n]
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if bad:
            raise DataError(f"{bad[0]!r}: a file name with a line break cannot go in {names_path(path)}; use .npz")
        # All are written before any is renamed: a full disk leaves none, never a new list beside an old
        # array (the array is renamed first, then the norms, the list last).
        with contextlib.ExitStack() as stack:
            stack.enter_context(atomic_write(names_path(path), "w")).writelines(f"{n}\n" for n in names)
            if norms is not None:
                np.save(stack.enter_context(atomic_write(norms_path(path), "wb")), norms)
            with atomic_write(path, "wb") as fa:
                np.save(fa, embeddings.astype(np.float32))
        if norms is None:
            norms_path(path).unlink(missing_ok=True)  # an earlier run's norms would not belong to these rows
            return [path, names_path(path)]
        return [path, norms_path(path), names_path(path)]
    extra: dict[str, Any] = {} if norms is None else {"norm": norms}
    if suffix == ".npz":
        with atomic_write(path, "wb") as f:
            np.savez(f, embeddings=embeddings.astype(np.float32), names=np.asarray(list(names), dtype=str), **extra)
        return [path]
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"name": pa.array(list(names), pa.string()),
               "embedding": pa.array(list(embeddings.astype(np.float32)), pa.list_(pa.float32()))}
    columns.update({k: pa.array(v, pa.float32()) for k, v in extra.items()})
    with atomic_write(path, "wb") as f:
        pq.write_table(pa.table(columns), f)
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


def read_norms(path: str | Path) -> np.ndarray:
    """The feature norms `write_embeddings` wrote beside the embeddings in `path` (float32 (N,))."""
    path = Path(path)
    suffix = path.suffix.lower()
    missing = DataError(f"{path}: no feature norms beside these embeddings (write them with irface embed --quality)")
    if suffix == ".npy":
        if not norms_path(path).is_file():
            raise missing
        return np.load(norms_path(path))
    if suffix == ".npz":
        with np.load(path) as z:
            if "norm" not in z.files:
                raise missing
            return z["norm"]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "norm" not in table.column_names:
        raise missing
    return np.asarray(table.column("norm").to_pylist(), dtype=np.float32)


def embed_to_file(embedder: Embedder, inputs: Sequence[str | Path], output: str | Path, batch_size: int = 64,
                  progress: bool = True, *, mode: str = "auto", all_faces: bool = False, strict: bool = False,
                  detector=None, quality: bool = False) -> dict:
    """Embed every face under `inputs` and write them to `output` (with each face's feature norm when
    `quality`); returns a summary dict (count, embedding_size, files, skipped; norm: min, median, max)."""
    output = check_output(output)
    sources = collect_faces(inputs, embedder.input_size)
    result = embed_sources(embedder, sources, batch_size, progress, mode=mode, all_faces=all_faces,
                           strict=strict, detector=detector)
    if not result.names:
        raise DataError(f"no face embedded: all {len(sources)} inputs were skipped "
                        f"(first: {result.skipped[0]['reason']})")
    files = write_embeddings(output, result.embeddings, result.names, result.norms if quality else None)
    summary = {"count": len(result.names), "embedding_size": int(result.embeddings.shape[1]),
               "files": [str(f) for f in files], "skipped": result.skipped}
    if quality:
        summary["norm"] = {"min": float(result.norms.min()), "median": float(np.median(result.norms)),
                           "max": float(result.norms.max())}
    return summary
