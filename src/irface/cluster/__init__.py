"""Unlabelled faces into people: DBSCAN over a faiss k-NN graph, an incremental state, clustering metrics.

Names are imported on first use, so `irface.cluster.settings` (the CLI's defaults) loads without numpy.
"""

from irface.utils import lazy_exports

_HOMES = {"assign": "graph", "cluster_embeddings": "graph", "clustering_scores": "metrics", "ClusterState": "state"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
