"""Logistic regression on the prompt embedding plus surface features.

A linear model of P(strong wins) over the wordllama embedding and standardised surface
features (length, numbers, math symbols, options, code; ``prefroute.embed.features``). It
learns from the battles between exactly the router's pair; soft labels and ties (0.5) enter
as fractional positives, so every battle counts once with its weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder
from prefroute.errors import CheckpointError, check_choice, check_int, check_range
from prefroute.routers.base import WinPredictor, register_router
from prefroute.routers.embedding_io import fitted_embedder, reloaded_embedder
from prefroute.routers.pair_data import pair_rows

DEFAULT_EMBEDDER = {"name": "features",
                    "params": {"inner": {"name": "wordllama", "params": {}}, "feature_weight": 1.0}}


def fit_soft_logistic(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, c: float,
                      max_iter: int = 500) -> tuple[np.ndarray, float]:
    """(coef, intercept) of an L2 logistic regression on labels in [0, 1].

    A label y enters as a positive row of weight w y and a negative row of weight w (1 - y),
    which is the cross-entropy of the soft label.
    """
    from sklearn.linear_model import LogisticRegression

    n = len(labels)
    features = np.concatenate([x, x])
    target = np.r_[np.ones(n), np.zeros(n)]
    sample_weight = np.r_[weights * labels, weights * (1.0 - labels)]
    keep = sample_weight > 0
    if len(np.unique(target[keep])) < 2:  # one class only: a constant model
        p = float(np.clip(np.average(labels, weights=weights), 1e-6, 1 - 1e-6))
        return np.zeros(x.shape[1]), float(np.log(p / (1 - p)))
    # mean weight 1, so C means the same whatever the scale of the battle weights
    sample_weight = sample_weight / sample_weight[keep].mean()
    model = LogisticRegression(C=c, max_iter=max_iter)
    model.fit(features[keep], target[keep], sample_weight=sample_weight[keep])
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


@register_router
class LogisticRouter(WinPredictor):
    """P(strong wins) = sigmoid(coef . embed(prompt) + intercept).

    Parameters
    ----------
    strong_model, weak_model: the pair; only battles between them are used.
    embedder: embedder spec; default wordllama + surface features (``features``).
    c: inverse L2 strength (scikit-learn's ``C``).
    use_soft_labels: a judge's ``p_b_wins`` replaces the hard label where present.

    Attributes
    ----------
    embedder_, coef_ (float64 [d]), intercept_.
    """

    router_type = "logistic"

    def __init__(self, *, strong_model: str, weak_model: str,
                 embedder: str | dict[str, Any] | Embedder = DEFAULT_EMBEDDER, c: float = 1.0,
                 use_soft_labels: bool = True, max_iter: int = 500) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.c = c
        self.use_soft_labels = use_soft_labels
        self.max_iter = max_iter

    def _check_params(self) -> None:
        owner = type(self).__name__
        check_range("c", owner, self.c, low=0.0, low_inclusive=False)
        check_choice("use_soft_labels", owner, self.use_soft_labels, (True, False))
        check_int("max_iter", owner, self.max_iter)

    def _fit(self, battles: Battles) -> None:
        self._check_params()
        pairs = pair_rows(battles, self.strong_model, self.weak_model,
                          use_soft_labels=self.use_soft_labels)
        self.embedder_ = fitted_embedder(self.embedder, pairs.prompts)
        x = self.embedder_.encode(pairs.prompts).astype(np.float64)
        self.coef_, self.intercept_ = fit_soft_logistic(x, pairs.labels, pairs.weights,
                                                        c=float(self.c), max_iter=self.max_iter)

    def _predict(self, prompts: list[str]) -> np.ndarray:
        x = self.embedder_.encode(prompts).astype(np.float64)
        return expit(x @ self.coef_ + self.intercept_)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"coef": self.coef_, "intercept": np.array([self.intercept_])},
                {"embedder": self.embedder_.spec()})

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory)

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        return ["coef", "intercept"]

    def _load_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any],
                    directory: Path) -> None:
        where = Path(directory) / "config.json"
        try:
            self._check_params()
        except Exception as e:
            raise CheckpointError(f"{where}: {e}") from None
        embedder = reloaded_embedder(self.embedder, extra.get("embedder"), directory)
        coef, intercept = tensors["coef"], tensors["intercept"]
        if coef.shape != (embedder.dim,) or intercept.shape != (1,):
            raise CheckpointError(f"{where}: coef {coef.shape} / intercept {intercept.shape} do "
                                  f"not match the embedder's dimension {embedder.dim}")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise CheckpointError(f"{where}: coef and intercept must be finite")
        self.embedder_ = embedder
        self.coef_ = coef.astype(np.float64)
        self.intercept_ = float(intercept[0])
