"""k-nearest-neighbour router: a model's score is its mean correctness on the k most similar
training prompts (cosine similarity of unit embeddings, exact search with FAISS).

    score(q, m) = (sum over known neighbours of label(n, m) + smoothing * acc(m))
                  / (number of known neighbours + smoothing)

The checkpoint stores the training embeddings and labels (safetensors); the FAISS index is
rebuilt from them on load (an exact flat index, so search results are the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefroute.errors import CheckpointError, check_int, check_range
from prefroute.multi.base import EmbeddingRouter, masked_mean, register_multi_router
from prefroute.router import checked_tensor


@register_multi_router
class KNNRouter(EmbeddingRouter):
    """Mean correctness of the k nearest training prompts.

    Parameters
    ----------
    embedder: the frozen prompt embedder (name, spec dict or Embedder).
    k: neighbours per prompt (capped at the number of training prompts).
    smoothing: pseudo-count pulling the neighbourhood mean toward the global accuracy.
    """

    router_type = "multi-knn"

    def __init__(
        self,
        *,
        embedder: str | dict[str, Any] | Any = "wordllama",
        k: int = 50,
        smoothing: float = 1.0,
    ) -> None:
        super().__init__(embedder=embedder)
        self.k = k
        self.smoothing = smoothing

    def _check_params(self) -> None:
        check_int("k", type(self).__name__, self.k)
        check_range("smoothing", type(self).__name__, self.smoothing, low=0.0)

    def _fit(self, prompts: list[str], labels: np.ndarray) -> None:
        self._check_params()
        self.train_embeddings_ = np.ascontiguousarray(self._fit_embedder(prompts), dtype=np.float32)
        self.train_labels_ = labels.astype(np.float64)
        self._build_index()

    def _build_index(self) -> None:
        import faiss

        self.index_ = faiss.IndexFlatIP(self.train_embeddings_.shape[1])
        self.index_.add(self.train_embeddings_)
        self.prior_ = masked_mean(self.train_labels_)

    def neighbours(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, training-row indices) of the k nearest training prompts."""
        self._check_fitted()
        k = min(self.k, self.index_.ntotal)
        sims, idx = self.index_.search(
            np.ascontiguousarray(self._embed(prompts), dtype=np.float32), k
        )
        return sims, idx

    def _predict(self, prompts: list[str]) -> np.ndarray:
        _, idx = self.neighbours(prompts)
        neighbour_labels = self.train_labels_[idx]  # [n, k, N]
        known = ~np.isnan(neighbour_labels)
        sums = np.where(known, neighbour_labels, 0.0).sum(axis=1)
        counts = known.sum(axis=1)
        denom = counts + self.smoothing
        return np.where(
            denom > 0, (sums + self.smoothing * self.prior_) / np.maximum(denom, 1e-12), self.prior_
        )

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"train_embeddings": self.train_embeddings_, "train_labels": self.train_labels_}
        return tensors, self._embedder_extra()

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str]:
        return ["train_embeddings", "train_labels"]

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = directory / "config.json"
        dim = self._load_embedder(extra, directory)
        embeddings = checked_tensor(tensors, "train_embeddings", where, (None, dim))
        n = embeddings.shape[0]
        labels = checked_tensor(tensors, "train_labels", where, (n, len(self.models_)),
                                finite=False)  # NaN: unknown
        if n < 1 or ((labels < 0) | (labels > 1)).any():
            raise CheckpointError(f"{where}: train_labels must hold at least one row of labels "
                                  "in [0, 1] (or NaN)")
        self.train_embeddings_ = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.train_labels_ = labels
        self._build_index()
