"""Logistic regression on the prompt embedding plus surface features.

A linear model of P(strong wins) over the wordllama embedding and standardised surface
features (length, numbers, math symbols, options, code; ``prefroute.embed.features``). It
learns from the battles between exactly the router's pair; soft labels and ties (0.5) enter
as fractional positives, so every battle counts once with its weight.

``two_part=True`` models ties apart: a label y is 0.5 + d (q - 1/2) with d = |2y - 1| (how
decisive the battle was) and q = [y > 1/2] (who won it). One logistic model learns
P(decisive | prompt) from every battle, another P(strong wins | decisive, prompt) from the
decisive ones only, and P(strong wins) = 1/2 + d(x) (q(x) - 1/2). Ties then no longer pull
the direction model towards 1/2; with few labels, most of them ties, that learns more
(benchmarks/RESULTS.md, issue 15 (d): MMLU 1,600 random labels 0.662 against 0.634).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder
from prefroute.errors import ConfigError, check_choice, check_int, check_range
from prefroute.router import checked_tensor, checkpoint_embedder, is_number
from prefroute.routers.base import WinPredictor, register_router, row_dot
from prefroute.routers.embedding_io import fitted_embedder
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


# Inverse L2 strength of the two-part router's decisiveness model (strongly regularised: it
# is fitted on as few as 50 labels, and a wrong guess only scales the direction's margin).
DECISIVE_C = 0.3


def decisive_parts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, q) with labels = 1/2 + d (q - 1/2): how decisive each battle was, who won it."""
    labels = np.asarray(labels, dtype=np.float64)
    return np.abs(2.0 * labels - 1.0), (labels > 0.5).astype(np.float64)


def fit_decisive_logistic(x: np.ndarray, decisive: np.ndarray, weights: np.ndarray, *,
                          max_iter: int = 500) -> tuple[np.ndarray, float]:
    """(coef, intercept) of P(decisive | x): the two-part router's tie model, and what
    ``augment select --labelled`` draws by."""
    return fit_soft_logistic(x, decisive, weights, c=DECISIVE_C, max_iter=max_iter)


LinearModel = tuple[np.ndarray, float]


def fit_two_part_logistic(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, c: float,
                          max_iter: int = 500) -> tuple[LinearModel, LinearModel]:
    """(tie model, direction model) of the two-part router (see the module docstring)."""
    decisive, won = decisive_parts(labels)
    tie = fit_decisive_logistic(x, decisive, weights, max_iter=max_iter)
    rows = decisive > 0
    if not rows.any():  # only ties: no direction to learn, P(strong wins) = 1/2
        return tie, (np.zeros(x.shape[1]), 0.0)
    direction = fit_soft_logistic(x[rows], won[rows], (weights * decisive)[rows], c=c,
                                  max_iter=max_iter)
    return tie, direction


def two_part_proba(x: np.ndarray, tie: LinearModel, direction: LinearModel) -> np.ndarray:
    """P(strong wins) = 1/2 + P(decisive) (P(strong wins | decisive) - 1/2)."""
    decisive = expit(row_dot(x, tie[0]) + tie[1])
    return 0.5 + decisive * (expit(row_dot(x, direction[0]) + direction[1]) - 0.5)


@register_router
class LogisticRouter(WinPredictor):
    """P(strong wins) = sigmoid(coef . embed(prompt) + intercept).

    Parameters
    ----------
    strong_model, weak_model: the pair; only battles between them are used.
    embedder: embedder spec; default wordllama + surface features (``features``).
    c: inverse L2 strength (scikit-learn's ``C``).
    use_soft_labels: a judge's ``p_b_wins`` replaces the hard label where present.
    two_part: model ties apart (see the module docstring; the default); ``coef_`` and
        ``intercept_`` are then the direction model and ``tie_coef_``/``tie_intercept_``
        P(decisive). False: one soft-label model, as before the default changed.

    Attributes
    ----------
    embedder_, coef_ (float64 [d]), intercept_; with two_part also tie_coef_, tie_intercept_.
    """

    router_type = "logistic"
    # two_part became the default after logistic checkpoints without it had been written
    params_absent_from_old_checkpoints = {"two_part": False}

    def __init__(self, *, strong_model: str, weak_model: str,
                 embedder: str | dict[str, Any] | Embedder = DEFAULT_EMBEDDER, c: float = 1.0,
                 use_soft_labels: bool = True, max_iter: int = 500,
                 two_part: bool = True) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.c = c
        self.use_soft_labels = use_soft_labels
        self.max_iter = max_iter
        self.two_part = two_part

    def _check_params(self) -> None:
        owner = type(self).__name__
        if not is_number(self.c):
            raise ConfigError(f"The 'c' parameter of {owner} must be a finite number. "
                              f"Got {self.c!r:.80} instead.")
        check_range("c", owner, self.c, low=0.0, low_inclusive=False)
        check_choice("use_soft_labels", owner, self.use_soft_labels, (True, False))
        check_int("max_iter", owner, self.max_iter)
        check_choice("two_part", owner, self.two_part, (True, False))

    def _fit(self, battles: Battles) -> None:
        self._check_params()
        pairs = pair_rows(battles, self.strong_model, self.weak_model,
                          use_soft_labels=self.use_soft_labels)
        self.embedder_ = fitted_embedder(self.embedder, pairs.prompts)
        x = self.embedder_.encode(pairs.prompts).astype(np.float64)
        if not self.two_part:
            self.coef_, self.intercept_ = fit_soft_logistic(
                x, pairs.labels, pairs.weights, c=float(self.c), max_iter=self.max_iter)
            return
        (self.tie_coef_, self.tie_intercept_), (self.coef_, self.intercept_) = (
            fit_two_part_logistic(x, pairs.labels, pairs.weights, c=float(self.c),
                                  max_iter=self.max_iter))

    def _predict(self, prompts: list[str]) -> np.ndarray:
        x = self.embedder_.encode(prompts).astype(np.float64)
        if not self.two_part:
            return expit(row_dot(x, self.coef_) + self.intercept_)
        return two_part_proba(x, (self.tie_coef_, self.tie_intercept_),
                              (self.coef_, self.intercept_))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"coef": self.coef_, "intercept": np.array([self.intercept_])}
        if self.two_part:
            tensors |= {"tie_coef": self.tie_coef_,
                        "tie_intercept": np.array([self.tie_intercept_])}
        return tensors, {"embedder": self.embedder_.spec()}

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory)

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        names = ["coef", "intercept"]
        return names + ["tie_coef", "tie_intercept"] if self.two_part else names

    def _load_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any],
                    directory: Path) -> None:
        where = Path(directory) / "config.json"
        embedder, dim = checkpoint_embedder(self.embedder, extra.get("embedder"), directory)
        self.coef_ = checked_tensor(tensors, "coef", where, (dim,))
        self.intercept_ = float(checked_tensor(tensors, "intercept", where, (1,))[0])
        if self.two_part:
            self.tie_coef_ = checked_tensor(tensors, "tie_coef", where, (dim,))
            self.tie_intercept_ = float(checked_tensor(tensors, "tie_intercept", where, (1,))[0])
        self.embedder_ = embedder
