"""Routing policies: turn a confidence table [n_prompts, n_models] into one model per prompt.

Every policy is a pure function returning model indices (int64 [n]); learned policies have a
``fit_*`` function that returns a small frozen object. Ties between equal confidences go to
the lower model index (``np.argmax``'s rule) unless stated otherwise.

Policies of Srivatsa et al. (NAACL 2024 SRW), made precise here:

* ``argmax_policy``: the most confident model.
* ``random_policy``: the argmax when its confidence reaches ``threshold``; otherwise (no
  model is clearly competent) a uniformly random pick among the ``top_k`` most confident.
* ``prediction_policy``: the argmax when its confidence reaches a learned ``tau``, otherwise
  a fallback (the best model overall). ``fit_prediction_policy`` learns tau on a validation
  split, or (``method="forest"``) a random forest that predicts from the confidence vector
  whether the argmax or the fallback is the better pick (the paper used a random forest).
* ``sorted_policy``: walk the models in a global order (best accuracy first) and take the
  first whose confidence reaches ``threshold``; none reaches it -> the argmax.

Cost-aware routing (RouterBench-style): ``cost_aware_policy`` picks
argmax_m confidence[q, m] - lambda * cost[m]; sweeping lambda (``lambda_grid``) traces a
cost-quality curve (``prefroute.multi.metrics.cost_quality_curve``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefroute.errors import ConfigError, DataError, check_choice, check_range


def _check_confidences(confidences: np.ndarray) -> np.ndarray:
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[1] < 1:
        raise DataError(
            f"confidences must be a [n_prompts, n_models] table; got shape {conf.shape}"
        )
    if np.isnan(conf).any():
        raise DataError("confidences contain NaN")
    return conf


def argmax_policy(confidences: np.ndarray) -> np.ndarray:
    """The most confident model of each prompt."""
    return _check_confidences(confidences).argmax(axis=1)


def random_policy(
    confidences: np.ndarray, *, threshold: float = 0.5, top_k: int = 3, seed: int = 0
) -> np.ndarray:
    """Argmax if its confidence >= threshold, else a seeded uniform pick among the top_k."""
    conf = _check_confidences(confidences)
    check_range("threshold", "random_policy", threshold, low=0.0, high=1.0)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(
            f"The 'top_k' parameter of random_policy must be an int >= 1. Got {top_k!r} instead."
        )
    choice = conf.argmax(axis=1)
    low = conf.max(axis=1) < threshold
    k = min(int(top_k), conf.shape[1])
    # stable sort of -conf: the top-k set with ties resolved by model index, as argmax does
    top = np.argsort(-conf, axis=1, kind="stable")[:, :k]
    picks = np.random.default_rng(seed).integers(0, k, size=conf.shape[0])
    choice[low] = top[low, picks[low]]
    return choice


def prediction_policy(confidences: np.ndarray, *, threshold: float, fallback: int) -> np.ndarray:
    """Argmax where its confidence >= threshold, else the ``fallback`` model."""
    conf = _check_confidences(confidences)
    _check_index("fallback", fallback, conf.shape[1])
    choice = conf.argmax(axis=1)
    return np.where(conf.max(axis=1) >= threshold, choice, fallback)


def sorted_policy(
    confidences: np.ndarray, *, order: Sequence[int], threshold: float = 0.5
) -> np.ndarray:
    """The first model in ``order`` whose confidence >= threshold; the argmax when none is."""
    conf = _check_confidences(confidences)
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(conf.shape[1])):
        raise ConfigError(
            "The 'order' parameter of sorted_policy must be a permutation of the "
            f"{conf.shape[1]} model indices. Got {order.tolist()} instead."
        )
    passes = conf[:, order] >= threshold
    first = passes.argmax(axis=1)
    return np.where(passes.any(axis=1), order[first], conf.argmax(axis=1))


def cost_aware_policy(
    confidences: np.ndarray, *, model_costs: Sequence[float], lam: float
) -> np.ndarray:
    """argmax_m confidence[q, m] - lam * model_costs[m] (expected quality minus priced cost)."""
    conf = _check_confidences(confidences)
    costs = np.asarray(model_costs, dtype=np.float64)
    if costs.shape != (conf.shape[1],) or not np.isfinite(costs).all():
        raise DataError(
            f"model_costs must hold one finite cost per model ({conf.shape[1]}); got {costs}"
        )
    check_range("lam", "cost_aware_policy", lam, low=0.0)
    return (conf - lam * costs).argmax(axis=1)


def lambda_grid(model_costs: Sequence[float], n: int = 60) -> np.ndarray:
    """lambda values from 0 (ignore cost) to past the point where the cheapest model always wins.

    Confidences live in [0, 1], so once lambda * (cost gap between any two models) > 1 the
    choice no longer changes; the grid spans 1e-3 .. 1e3 over the smallest positive cost gap.
    """
    costs = np.unique(np.asarray(model_costs, dtype=np.float64))
    gaps = np.diff(costs)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return np.zeros(1)
    scale = 1.0 / gaps.min()
    high = 1.0 / (costs.max() - costs.min())  # above ~scale * 1: every choice is by cost alone
    return np.concatenate([[0.0], np.geomspace(high * 1e-3, scale * 2.0, n - 1)])


# ----------------------------------------------------------------------------- learned
@dataclass(frozen=True)
class PredictionPolicy:
    """A fitted Prediction policy: argmax when trusted, else ``fallback``.

    method ``"threshold"``: trust the argmax when its confidence >= ``threshold``.
    method ``"forest"``: trust it when the random forest says the argmax beats the fallback.
    """

    method: str
    fallback: int
    threshold: float = 0.5
    forest: Any = None

    def __call__(self, confidences: np.ndarray) -> np.ndarray:
        conf = _check_confidences(confidences)
        if self.method == "threshold":
            return prediction_policy(conf, threshold=self.threshold, fallback=self.fallback)
        trust = self.forest.predict_proba(_forest_features(conf, self.fallback))[:, 1] >= 0.5
        return np.where(trust, conf.argmax(axis=1), self.fallback)


def _forest_features(conf: np.ndarray, fallback: int) -> np.ndarray:
    top2 = -np.sort(-conf, axis=1)[:, :2]
    second = top2[:, 1] if conf.shape[1] > 1 else np.zeros(len(conf))
    return np.column_stack(
        [conf, top2[:, 0], top2[:, 0] - second, conf[:, fallback], conf.argmax(axis=1)]
    )


def best_threshold(values: np.ndarray, gain: np.ndarray) -> float:
    """tau maximising sum(gain[values >= tau]); ties -> the smallest such tau.

    ``gain[i]`` is what choosing the "trusted" option instead of the fallback adds on row i.
    Candidates are the midpoints between sorted distinct values plus both ends.
    """
    order = np.argsort(-values, kind="stable")
    v, g = values[order], gain[order]
    distinct = np.concatenate(
        [np.flatnonzero(np.diff(v) != 0), [len(v) - 1]]
    )  # last index per value
    cum = np.concatenate([[0.0], np.cumsum(g)[distinct]])  # trust nothing, then down to each value
    best = int(np.argmax(cum[::-1]))  # reversed: prefer trusting more rows (smaller tau) on ties
    k = len(cum) - 1 - best  # number of distinct values trusted
    if k == 0:
        return float(np.nextafter(v[0], np.inf))  # above every confidence: always fall back
    trusted_low = v[distinct[k - 1]]
    below = v[distinct[k]] if k < len(distinct) else None
    return float(trusted_low if below is None else (trusted_low + below) / 2.0)


def fit_prediction_policy(
    confidences: np.ndarray,
    scores: np.ndarray,
    *,
    fallback: int,
    method: str = "threshold",
    seed: int = 0,
    n_estimators: int = 200,
) -> PredictionPolicy:
    """Learn the Prediction policy on a validation split (confidences and true 0/1 scores)."""
    check_choice("method", "fit_prediction_policy", method, ("threshold", "forest"))
    conf = _check_confidences(confidences)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != conf.shape:
        raise DataError(f"scores have shape {scores.shape}; confidences {conf.shape}")
    _check_index("fallback", fallback, conf.shape[1])
    rows = np.arange(len(conf))
    gain = scores[rows, conf.argmax(axis=1)] - scores[:, fallback]
    if method == "threshold":
        return PredictionPolicy("threshold", int(fallback), best_threshold(conf.max(axis=1), gain))
    from sklearn.ensemble import RandomForestClassifier

    differs = gain != 0
    if differs.sum() < 2 or len(np.unique(gain[differs] > 0)) < 2:
        # nothing to learn: always trust (or never trust) the argmax, as the data say
        tau = -np.inf if gain.sum() >= 0 else np.inf
        return PredictionPolicy("threshold", int(fallback), float(tau))
    forest = RandomForestClassifier(
        n_estimators=n_estimators, min_samples_leaf=5, random_state=seed, n_jobs=1
    ).fit(_forest_features(conf[differs], fallback), (gain[differs] > 0).astype(int))
    return PredictionPolicy("forest", int(fallback), forest=forest)


def fit_sorted_threshold(
    confidences: np.ndarray,
    scores: np.ndarray,
    *,
    order: Sequence[int],
    grid: Sequence[float] | None = None,
) -> float:
    """The threshold of ``sorted_policy`` with the best validation accuracy (ties: the lowest)."""
    conf = _check_confidences(confidences)
    scores = np.asarray(scores, dtype=np.float64)
    grid = np.linspace(0.05, 0.95, 19) if grid is None else np.asarray(grid, dtype=np.float64)
    rows = np.arange(len(conf))
    accs = [scores[rows, sorted_policy(conf, order=order, threshold=t)].mean() for t in grid]
    return float(grid[int(np.argmax(accs))])


def _check_index(name: str, value: int, n_models: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 0 <= value < n_models
    ):
        raise ConfigError(
            f"The '{name}' parameter must be a model index in [0, {n_models}). "
            f"Got {value!r} instead."
        )
