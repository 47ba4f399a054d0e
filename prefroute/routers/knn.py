"""k-nearest-neighbour router: the weighted mean label of the k most similar training prompts.

The honest baseline every learned router must beat ("the routing plateau": learned routers
cluster at its level). It learns from the battles between exactly the router's pair
(``prefroute.routers.pair_data``); each neighbour counts with its battle weight, so
``--source-weight golden=30`` works as for sw_bt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder
from prefroute.errors import CheckpointError, check_choice, check_int
from prefroute.router import checked_count, checked_tensor, checkpoint_embedder
from prefroute.routers.base import WinPredictor, register_router
from prefroute.routers.embedding_io import fitted_embedder
from prefroute.routers.pair_data import pair_rows

_TENSORS = ("prompt_embeddings", "labels", "weights")


@register_router
class KNNRouter(WinPredictor):
    """P(strong wins) = weighted mean label of the ``k`` nearest pair battles (cosine, FAISS).

    Parameters
    ----------
    strong_model, weak_model: the pair; only battles between them are used.
    embedder: embedder spec (default wordllama).
    k: neighbours per query (capped at the number of training battles).
    use_soft_labels: a judge's ``p_b_wins`` replaces the hard label where present.

    Attributes
    ----------
    embedder_, prompt_embeddings_ (float32 [n, d]), labels_ (P(strong won) per battle),
    weights_ (battle weights).
    """

    router_type = "knn"

    def __init__(self, *, strong_model: str, weak_model: str,
                 embedder: str | dict[str, Any] | Embedder = "wordllama", k: int = 50,
                 use_soft_labels: bool = True) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.k = k
        self.use_soft_labels = use_soft_labels

    def _check_params(self) -> None:
        check_int("k", type(self).__name__, self.k)
        check_choice("use_soft_labels", type(self).__name__, self.use_soft_labels, (True, False))

    def _fit(self, battles: Battles) -> None:
        self._check_params()
        pairs = pair_rows(battles, self.strong_model, self.weak_model,
                          use_soft_labels=self.use_soft_labels)
        self.embedder_ = fitted_embedder(self.embedder, pairs.prompts)
        self._set_state(self.embedder_.encode(pairs.prompts), pairs.labels, pairs.weights)

    def _set_state(self, embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        import faiss

        self.prompt_embeddings_ = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.labels_ = np.asarray(labels, dtype=np.float64)
        self.weights_ = np.asarray(weights, dtype=np.float64)
        self.index_ = faiss.IndexFlatIP(self.prompt_embeddings_.shape[1])
        self.index_.add(self.prompt_embeddings_)

    def _predict(self, prompts: list[str]) -> np.ndarray:
        return self.strong_win_prob_from_embeddings(self.embedder_.encode(prompts))

    def strong_win_prob_from_embeddings(self, queries: np.ndarray) -> np.ndarray:
        """P(strong wins) for already-embedded queries [B, d]."""
        k = min(int(self.k), len(self.labels_))
        _, neighbours = self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        w = self.weights_[neighbours]
        total = w.sum(axis=1)
        mean = (w * self.labels_[neighbours]).sum(axis=1) / np.where(total > 0, total, 1.0)
        # neighbours that all carry weight 0 say nothing: fall back to the unweighted mean
        return np.where(total > 0, mean, self.labels_[neighbours].mean(axis=1))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"prompt_embeddings": self.prompt_embeddings_, "labels": self.labels_,
                   "weights": self.weights_}
        return tensors, {"embedder": self.embedder_.spec(), "n_prompts": len(self.labels_)}

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory)

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        return list(_TENSORS)

    def _load_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any],
                    directory: Path) -> None:
        where = Path(directory) / "config.json"
        embedder, dim = checkpoint_embedder(self.embedder, extra.get("embedder"), directory)
        n = checked_count(extra.get("n_prompts"), where, "state.n_prompts", low=1)
        emb = checked_tensor(tensors, "prompt_embeddings", where, (n, dim))
        labels = checked_tensor(tensors, "labels", where, (n,))
        weights = checked_tensor(tensors, "weights", where, (n,))
        if not (((labels >= 0) & (labels <= 1)).all() and (weights >= 0).all()):
            raise CheckpointError(f"{where}: labels must lie in [0, 1] and weights be >= 0")
        self.embedder_ = embedder
        self._set_state(emb, labels, weights)
