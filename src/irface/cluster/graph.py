"""Faces into people: scikit-learn's DBSCAN over a k-nearest-neighbour graph built with faiss.

The graph: each face's `NEIGHBOURS` most similar faces (exact search, `irface.gallery.index.FaceIndex`, up
to `EXACT_LIMIT` faces; a faiss IVF index beyond), of which only those **above** the similarity threshold are kept
(the rule of `irface verify`: same person when the cosine similarity is strictly above it). DBSCAN
(`metric="precomputed"` on that sparse graph, its radius wide enough for every kept edge) then makes
people: a face with at least `min_faces - 1` kept neighbours is a core face; cores joined by an edge are
one person; a face next to a core without being one joins that person; every other face is noise (-1).

Memory is N x NEIGHBOURS, never N x N. Why this and not DBSCAN or HDBSCAN on the whole cosine matrix:
benchmarks/README.md ("Face clustering"), measured by benchmarks/cluster_scale.py.
"""

from __future__ import annotations

import logging
import math
import numpy as np

from irface.cluster.settings import DEFAULT_MIN_FACES
from irface.errors import ConfigError

log = logging.getLogger(__name__)


# Neighbours per face in the graph: enough that a person's faces stay joined (a face's nearest faces
# are its own person's first), few enough that the graph is small (N x 32 edges).
NEIGHBOURS = 32
# Exact search while queries x faces is at most EXACT_LIMIT^2 (N faces against themselves: N <= 20,000,
# four times the 10,000-face time of benchmarks/README.md, as it grows as N^2); beyond, IVF. benchmarks/README.md ("Face clustering") has the figures.
EXACT_LIMIT = 20_000
# IVF for the graph (not the gallery's defaults: every face is a query here, so many small lists are
# cheapest): 4 sqrt(N) lists learnt by 10 k-means rounds on 32 faces a list, 16 probed. A link IVF misses
# leaves a face as noise, never merges two people: at 100,000 synthetic 512-d faces, BCubed F1 0.9885
# with 16 probed, 0.978 with 4, exact search 0.995 for 5.6x the CPU time (benchmarks/README.md).
IVF_LISTS_PER_SQRT_N = 4
IVF_NPROBE = 16
_IVF_TRAIN_PER_LIST = 32
_IVF_ITERATIONS = 10
# Queries per search call: an exact batch holds QUERY_BATCH x 65536 scores (256 MB).
QUERY_BATCH = 1024
# The smallest distance stored: an edge of distance 0 (the same photo twice) would vanish from a sparse matrix.
_MIN_DISTANCE = 1e-6


def _dbscan():
    try:
        from scipy import sparse  # noqa: F401
        from sklearn.cluster import DBSCAN
    except ImportError:
        raise ConfigError("irface cluster needs scikit-learn and scipy: pip install 'irface[cluster]'") from None
    return DBSCAN


def check_knobs(threshold: float, min_faces: int) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ConfigError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1]")
    if not isinstance(min_faces, int) or min_faces < 1:
        raise ConfigError(f"--min-faces {min_faces}: must be a whole number, at least 1")


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of unit length, float32, contiguous: `x` itself when it is so already (no copy of a million faces)."""
    from irface.infer.embed import l2_normalize

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4):
        return x
    return np.ascontiguousarray(l2_normalize(x))


def _ivf(base: np.ndarray):
    """A faiss IVF index of `base` (unit rows), tuned for the graph (see IVF_LISTS_PER_SQRT_N)."""
    from irface.gallery.index import import_faiss

    faiss = import_faiss()
    n, dim = base.shape
    nlist = max(1, min(int(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // _IVF_TRAIN_PER_LIST))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = _IVF_TRAIN_PER_LIST
    index.cp.niter = _IVF_ITERATIONS
    index.train(base)
    index.add(base)
    index.nprobe = min(IVF_NPROBE, nlist)
    log.info("k-NN graph: IVF index of %d lists over %d faces, %d probed", nlist, n, index.nprobe)
    return index


def nearest(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, row numbers in `base`), each (Q, k'), best first, k' = min(k, len(base)); -1 past the end.

    Exact (`irface.gallery.index.FaceIndex`, flat) while the work is small, else approximate (IVF)."""
    from irface.gallery.index import FaceIndex

    same = queries is base
    base = _unit(base)
    queries = base if same else _unit(queries)
    n, dim = base.shape
    k = max(1, min(k, n))
    if n * len(queries) <= EXACT_LIMIT ** 2:
        index = FaceIndex("flat", dim)
        index.add(np.arange(n, dtype=np.int64), base)
        search, batch = index.search, QUERY_BATCH
    else:
        search, batch = _ivf(base).search, 16 * QUERY_BATCH  # IVF holds no score matrix: bigger batches
    sims = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for a in range(0, len(queries), batch):
        sims[a:a + batch], ids[a:a + batch] = search(queries[a:a + batch], k)
    return sims, ids


def similarity_graph(x: np.ndarray, threshold: float, neighbours: int = NEIGHBOURS):
    """The symmetric sparse (N, N) graph of cosine distances (1 - similarity) between each face and those of
    its `neighbours` nearest that are above `threshold`."""
    from scipy import sparse

    n = len(x)
    sims, ids = nearest(x, x, neighbours + 1)  # + 1: a face finds itself first
    rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    sims, ids = sims.ravel(), ids.ravel()
    keep = (ids >= 0) & (ids != rows) & (sims > threshold)
    dist = np.maximum(1.0 - sims[keep], _MIN_DISTANCE).astype(np.float32)
    graph = sparse.csr_matrix((dist, (rows[keep], ids[keep])), shape=(n, n))
    return graph.maximum(graph.T).tocsr()  # b near a means a near b


def by_size(labels: np.ndarray, start: int = 0) -> np.ndarray:
    """Clusters renumbered start, start + 1, ... from the largest (ties: the one met first); noise stays -1."""
    labels = np.asarray(labels, np.int64)
    out = np.full(len(labels), -1, np.int64)
    kept = labels >= 0
    if not kept.any():
        return out
    values, first, counts = np.unique(labels[kept], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    new = np.empty(len(values), np.int64)
    new[order] = np.arange(start, start + len(values))
    out[kept] = new[np.searchsorted(values, labels[kept])]
    return out


def cluster_embeddings(x: np.ndarray, threshold: float, min_faces: int = DEFAULT_MIN_FACES, neighbours: int = NEIGHBOURS
                       ) -> np.ndarray:
    """A person number for each row of `x` (N, E): 0 the person with most faces, -1 noise."""
    DBSCAN = _dbscan()
    check_knobs(threshold, min_faces)
    x = np.asarray(x, np.float32)
    if len(x) == 0:
        return np.zeros(0, np.int64)
    graph = similarity_graph(x, threshold, neighbours)
    # Every stored edge is already above the threshold: DBSCAN's radius (a distance, at most 2) takes them all.
    labels = DBSCAN(eps=2.0, min_samples=min_faces, metric="precomputed").fit(graph).labels_
    return by_size(labels)


def assign(old: np.ndarray, old_labels: np.ndarray, new: np.ndarray, threshold: float,
           min_faces: int = DEFAULT_MIN_FACES,
           neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """New faces into an earlier clustering without changing its people: (labels of old, labels of new).

    A new face whose most similar earlier face in a person is above `threshold` joins that person. The
    rest, with the earlier noise, are clustered among themselves (`cluster_embeddings`); the people they
    make are numbered after the earlier ones (largest first). Earlier noise may so become a new person;
    an earlier person never changes number, never loses a face and is never merged with another.
    """
    check_knobs(threshold, min_faces)
    old_labels = np.asarray(old_labels, np.int64).copy()
    new_labels = np.full(len(new), -1, np.int64)
    placed = np.where(old_labels >= 0)[0]
    if len(placed) and len(new):
        sims, ids = nearest(old[placed], new, 1)
        hit = sims[:, 0] > threshold
        new_labels[hit] = old_labels[placed[ids[hit, 0]]]
    rest_old = np.where(old_labels < 0)[0]
    rest_new = np.where(new_labels < 0)[0]
    pool = np.concatenate([np.asarray(old, np.float32)[rest_old], np.asarray(new, np.float32)[rest_new]])
    if len(pool):
        first = int(old_labels.max(initial=-1)) + 1
        labels = cluster_embeddings(pool, threshold, min_faces, neighbours)
        labels = np.where(labels >= 0, labels + first, -1)
        old_labels[rest_old] = labels[:len(rest_old)]
        new_labels[rest_new] = labels[len(rest_old):]
    return old_labels, new_labels
