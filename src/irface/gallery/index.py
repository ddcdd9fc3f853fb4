"""The faiss index behind a gallery: exact inner product, or IVF / HNSW for very large galleries.

Vectors are L2-normalised float32, so inner product is cosine similarity. Every kind is addressed by
the face's stable 64-bit id (the metadata table's row id), so removing faces never renumbers the rest.
Search-time knobs (`nprobe` for IVF, `ef_search` for HNSW) trade speed for recall;
benchmarks/README.md measures recall@1 against exact search at one million faces.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import numpy as np

from irface.errors import GalleryError, first_line, import_extra

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")

# Defaults from benchmarks/gallery_search.py (benchmarks/README.md): IVF nprobe 32 found exact search's
# top identity for 99.9% of queries at 1 M x 512; HNSW's reached recall 0.996+ at 50,000 faces only
# (at 1 M a cheaper graph, m 16 / ef_construction 40, found the identity for 59%).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 32},  # nlist None: sqrt(faces) of the first batch trained on
    "hnsw": {"m": 32, "ef_construction": 80, "ef_search": 64},
}
# Below this many queries a search runs on one thread (see FaceIndex.search).
_PARALLEL_QUERIES = 8
# Exact batches: database rows per matmul (64 queries x 65536 rows = 16 MB of scores).
_EXACT_CHUNK = 1 << 16
# k-means wants about 39 training points per list (faiss warns below that).
_POINTS_PER_LIST = 39
_TRAIN_POINTS_PER_LIST = 64


def import_faiss() -> Any:
    # faiss's loader logs which CPU build it tried at INFO level: not the user's concern.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    return import_extra("faiss", "a gallery", "gallery", GalleryError)


def index_params(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The kind's defaults updated with `params`; unknown kinds or keys are refused."""
    if kind not in INDEX_KINDS:
        raise GalleryError(f"unknown index kind '{kind}' (use {', '.join(INDEX_KINDS)})")
    out = dict(DEFAULT_PARAMS[kind])
    for key, value in (params or {}).items():
        if key not in out:
            raise GalleryError(f"index '{kind}' has no parameter '{key}' (it has: {', '.join(out) or 'none'})")
        if value is not None and (not isinstance(value, int) or value < 1):
            raise GalleryError(f"index parameter {key}={value!r}: must be a positive whole number")
        out[key] = value
    return out


class FaceIndex:
    """A faiss index of (id, unit vector) rows, with the kind's search parameters applied."""

    def __init__(self, kind: str, dim: int, params: dict[str, Any] | None = None, index: Any = None):
        self.faiss = import_faiss()
        self.kind = kind
        self.dim = dim
        self.params = index_params(kind, params)
        self.index = index if index is not None else self._new()
        self._labels: np.ndarray | None = None  # flat: row -> face id, cached between changes
        self._apply_search_params()

    def _new(self, nlist: int | None = None) -> Any:
        faiss, d = self.faiss, self.dim
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, self.params["m"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.params["ef_construction"]
            return faiss.IndexIDMap2(inner)
        # IVF: untrained until the first add (its lists are learnt from that batch).
        if nlist is None:
            return None
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on at most 64 faces per list (faiss's default, 256, costs 4x more for lists as good
        # for search: minutes at a million faces on two cores).
        index.cp.max_points_per_centroid = _TRAIN_POINTS_PER_LIST
        return index

    def _apply_search_params(self) -> None:
        if self.index is None:
            return
        if self.kind == "ivf":
            self.index.nprobe = min(self.params["nprobe"], self.index.nlist)
        elif self.kind == "hnsw":
            self.faiss.downcast_index(self.index.index).hnsw.efSearch = self.params["ef_search"]

    def tune(self, wanted: dict[str, int]) -> None:
        """Change search-time parameters (`nprobe`, `ef_search`) of this kind; others are refused."""
        params = index_params(self.kind, {**self.params, **wanted})
        self.params = params
        self._apply_search_params()

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def train(self, vectors: np.ndarray) -> None:
        """IVF: learn the lists (k-means) from `vectors`; the other kinds need no training."""
        if self.kind != "ivf" or self.index is not None:
            return
        n = len(vectors)
        nlist = self.params["nlist"] or max(1, round(math.sqrt(n)))
        nlist = max(1, min(nlist, n // _POINTS_PER_LIST))
        self.params["nlist"] = nlist
        index = self._new(nlist)
        if nlist == 1:
            # One list is exact search; its centroid is the mean (k-means of one would only warn).
            index.quantizer.add(vectors.mean(0, keepdims=True).astype(np.float32))
            index.is_trained = True
        else:
            index.train(vectors)
        self.index = index
        self._apply_search_params()
        log.info("IVF index: %d lists learnt from %d faces", nlist, n)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None:  # an untrained IVF: learn the lists from its first batch
            self.train(vectors)
        self._labels = None
        self.index.add_with_ids(vectors, ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if self.index is None or not len(ids):
            return
        self._labels = None
        if self.kind == "hnsw":
            # HNSW graphs cannot drop nodes: rebuild from the vectors that stay.
            all_ids = self.faiss.vector_to_array(self.index.id_map).astype(np.int64)
            keep = ~np.isin(all_ids, ids)
            vectors = self.faiss.downcast_index(self.index.index).reconstruct_n(0, len(all_ids))[keep]
            self.index = self._new()
            self._apply_search_params()
            if keep.any():
                self.index.add_with_ids(np.ascontiguousarray(vectors), all_ids[keep])
            return
        self.index.remove_ids(self.faiss.IDSelectorBatch(ids.astype(np.int64)))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (Q, k); id -1 where fewer than k rows exist."""
        if self.index is None or not len(self):
            q = len(vectors)
            return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
        if len(vectors) >= _PARALLEL_QUERIES:
            if self.kind == "flat":
                return self._exact_batch(vectors, k)
            return self.index.search(vectors, k)
        # faiss shares out queries among OpenMP threads: a few queries gain nothing from more threads, and
        # waking them costs up to 100x the search on a busy machine (HNSW, one query: 0.2 ms alone,
        # 20 ms with two threads under load). The setting is this thread's own (an OpenMP ICV).
        threads = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(1)
        try:
            return self.index.search(vectors, k)
        finally:
            self.faiss.omp_set_num_threads(threads)

    def _exact_batch(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a batch of queries: one matmul per chunk of the faiss index's own vectors.

        faiss's flat search spends 6-9x the CPU time of a plain matmul on these machines (its wheel's
        BLAS path; benchmarks/README.md), so batches go through torch's sgemm and topk instead; the
        vectors stay in faiss (read in place, no copy). Callers hold the gallery's read lock.
        """
        import torch

        inner = self.faiss.downcast_index(self.index.index)
        n = int(inner.ntotal)
        xb = self.faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
        if self._labels is None:
            self._labels = self.faiss.vector_to_array(self.index.id_map).astype(np.int64)
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        best_s = best_i = None
        for a in range(0, n, _EXACT_CHUNK):
            with torch.inference_mode():
                s = qt @ torch.from_numpy(xb[a:a + _EXACT_CHUNK]).T
                v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
                i += a
                if best_s is not None:
                    v, i = torch.cat([best_s, v], 1), torch.cat([best_i, i], 1)
                    v, j = torch.topk(v, min(k, v.shape[1]), dim=1)
                    i = torch.gather(i, 1, j)
            best_s, best_i = v, i
        assert best_s is not None and best_i is not None  # search() comes here only with rows in the index
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        sims[:, :best_s.shape[1]] = best_s.numpy()
        ids[:, :best_i.shape[1]] = self._labels[best_i.numpy()]
        return sims, ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these face ids, bit for bit (N, dim) float32."""
        out = np.empty((len(ids), self.dim), np.float32)
        if not len(ids):
            return out
        if self.kind == "ivf":
            # IVF keeps no id -> place map unless asked: a hash table one while reading (ids need not be
            # dense), dropped after (faiss's IVF removes by a batch of ids only without one).
            self.index.set_direct_map_type(self.faiss.DirectMap.Hashtable)
        try:
            out[:] = self.index.reconstruct_batch(np.ascontiguousarray(ids, np.int64))
        finally:
            if self.kind == "ivf":
                self.index.set_direct_map_type(self.faiss.DirectMap.NoMap)
        return out

    def trained_bytes(self) -> Optional[bytes]:
        """IVF: its learnt lists (an empty trained index, serialised) so that a copy searches alike; else None."""
        if self.kind != "ivf" or self.index is None:
            return None
        empty = self.faiss.clone_index(self.index)
        empty.reset()
        return self.faiss.serialize_index(empty).tobytes()

    def load_trained(self, data: bytes) -> None:
        """Take the lists `trained_bytes` gave (before any add)."""
        if self.kind != "ivf" or self.index is not None:
            return
        index = self.faiss.deserialize_index(np.frombuffer(data, np.uint8))
        if index.d != self.dim:
            raise GalleryError(f"the gallery's IVF lists are {index.d}-d, its embeddings {self.dim}-d")
        self.index = index  # already its own class (faiss downcasts what it reads)
        self.params["nlist"] = int(self.index.nlist)
        self._apply_search_params()

    def write(self, write: Callable[[bytes], int]) -> None:
        if self.index is not None:
            self.faiss.write_index(self.index, self.faiss.PyCallbackIOWriter(write))

    @classmethod
    def read(cls, kind: str, dim: int, params: dict[str, Any], read: Callable[[int], bytes] | None) -> "FaceIndex":
        faiss = import_faiss()
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read)) if read is not None else None
        except RuntimeError as e:  # a checksummed file should never get here; one line if it does
            raise GalleryError(f"the gallery's faiss index is unreadable ({first_line(e)})") from None
        if index is not None and index.d != dim:
            raise GalleryError(f"the gallery's faiss index holds {index.d}-d vectors, its header says {dim}")
        return cls(kind, dim, params, index)
