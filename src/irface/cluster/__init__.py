"""Unlabelled faces into people: DBSCAN over a faiss k-NN graph, an incremental state, clustering metrics."""

from irface.cluster.graph import assign, cluster_embeddings
from irface.cluster.metrics import clustering_scores
from irface.cluster.state import ClusterState

__all__ = ["ClusterState", "assign", "cluster_embeddings", "clustering_scores"]
