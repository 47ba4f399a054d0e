"""Clustering router: k-means on prompt features; a cluster's score is each model's accuracy in it.

Srivatsa et al. cluster prompts on TF-IDF or RoBERTa features; here the features come from
any ``prefroute.embed`` embedder (``"tfidf"``: learned TF-IDF + SVD, saved with the router;
``"wordllama"``: static embeddings). A new prompt gets the scores of its nearest centroid:

    score(c, m) = (sum of known labels of m in cluster c + smoothing * acc(m))
                  / (number of known labels of m in c + smoothing)

where acc(m) is model m's training accuracy, so small clusters shrink toward the global
ranking instead of reporting 0 or 1 from a handful of prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.errors import CheckpointError, check_int, check_range
from prefroute.multi.base import EmbeddingRouter, masked_mean, register_multi_router
from prefroute.router import checked_tensor


def nearest_centroid(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the closest centroid (squared Euclidean distance) for each row of X."""
    X64 = X.astype(np.float64)
    C64 = centroids.astype(np.float64)
    dist = (X64**2).sum(1, keepdims=True) - 2.0 * X64 @ C64.T + (C64**2).sum(1)
    return dist.argmin(axis=1)


@register_multi_router
class KMeansRouter(EmbeddingRouter):
    """k-means clusters of training prompts with smoothed per-cluster model accuracies.

    Parameters
    ----------
    embedder: the feature extractor: ``"tfidf"`` (or a tfidf spec dict) or ``"wordllama"``...
    n_clusters: k (capped at the number of training prompts).
    smoothing: pseudo-count pulling each cluster's accuracy toward the global one (>= 0).
    n_init: k-means restarts (the best inertia is kept).
    seed: k-means random state.
    """

    router_type = "multi-kmeans"

    def __init__(
        self,
        *,
        embedder: str | dict[str, Any] | Any = "tfidf",
        n_clusters: int = 20,
        smoothing: float = 5.0,
        n_init: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(embedder=embedder)
        self.n_clusters = n_clusters
        self.smoothing = smoothing
        self.n_init = n_init
        self.seed = seed

    def _fit(self, prompts: list[str], labels: np.ndarray) -> None:
        from sklearn.cluster import KMeans

        owner = type(self).__name__
        check_int("n_clusters", owner, self.n_clusters)
        check_int("n_init", owner, self.n_init)
        check_range("smoothing", owner, self.smoothing, low=0.0)
        X = self._fit_embedder(prompts).astype(np.float64)
        k = min(self.n_clusters, len(prompts))
        if k < self.n_clusters:
            logger.info(
                "kmeans: %d training prompts, so %d clusters instead of %d",
                len(prompts),
                k,
                self.n_clusters,
            )
        kmeans = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.seed).fit(X)
        centroids = kmeans.cluster_centers_
        assign = nearest_centroid(X, centroids)
        self.centroids_ = centroids
        self.cluster_scores_ = cluster_accuracy(assign, labels, k, self.smoothing)
        self.cluster_sizes_ = np.bincount(assign, minlength=k).astype(np.int64)

    def _predict(self, prompts: list[str]) -> np.ndarray:
        return self.cluster_scores_[nearest_centroid(self._embed(prompts), self.centroids_)]

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {
            "centroids": self.centroids_,
            "cluster_scores": self.cluster_scores_,
            "cluster_sizes": self.cluster_sizes_,
        }
        return tensors, self._embedder_extra()

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str]:
        return ["centroids", "cluster_scores", "cluster_sizes"]

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = directory / "config.json"
        dim = self._load_embedder(extra, directory)
        self.centroids_ = checked_tensor(tensors, "centroids", where, (None, dim))
        k = self.centroids_.shape[0]
        self.cluster_scores_ = checked_tensor(tensors, "cluster_scores", where,
                                              (k, len(self.models_)))
        self.cluster_sizes_ = checked_tensor(tensors, "cluster_sizes", where, (k,)).astype(
            np.int64)
        if k < 1:
            raise CheckpointError(f"{where}: tensor 'centroids' holds no cluster")


def cluster_accuracy(
    assign: np.ndarray, labels: np.ndarray, k: int, smoothing: float
) -> np.ndarray:
    """[k, N] smoothed accuracy of each model within each cluster (NaN labels ignored)."""
    known = ~np.isnan(labels)
    values = np.where(known, labels, 0.0)
    sums = np.zeros((k, labels.shape[1]))
    counts = np.zeros((k, labels.shape[1]))
    np.add.at(sums, assign, values)
    np.add.at(counts, assign, known.astype(np.float64))
    prior = masked_mean(labels)
    denom = counts + smoothing
    return np.where(denom > 0, (sums + smoothing * prior) / np.maximum(denom, 1e-12), prior)
