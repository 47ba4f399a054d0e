"""Which prompts to label next: coverage of the embedding space, plus router uncertainty.

``select_prompts`` picks ``budget`` distinct prompts from a pool:

``method="kmeans"`` (default)
    Stratified sampling: the pool's embeddings (wordllama + standardised surface features,
    so long and numeric prompts spread out too; projected on their top 32 principal
    directions) are cut into ``min(STRATA, budget)`` k-means strata, each gets its share of the
    budget in proportion to its size (remainders drawn), and its picks are drawn at random,
    or with router probabilities in proportion to ``((1 - w) + w * uncertainty) ** 2``. The
    picks keep the pool's mix of topics and lengths. (One prompt from each of ``budget``
    clusters, the earlier method, over-represents rare corners of the pool: on MMLU it
    trained routers below random picks; ``benchmarks/RESULTS.md``, issue 15 (f).)
``method="kcenter"``
    Greedy k-center (farthest-first) on cosine distance, each distance scaled by
    ``1 - w + w * uncertainty``.

``method="disagreement"``
    Prompts on which the two models are likely to *disagree*: a logistic model, fitted on
    the prompts labelled so far, predicts P(one model right, the other wrong | prompt), and
    prompts are drawn without replacement with probability proportional to its square. A
    label where both models agree (a tie) says nothing about which to route to, and on
    MMLU 77% of labels are ties; this spends labels on the rest. Measured, it lifts the
    share of decisive labels from 23% to about 30% on MMLU and is level with or a little
    ahead of random picks (``benchmarks/RESULTS.md``, issue 15 (c)).
    Needs ``disagreement`` (see ``disagreement_probability``).

Uncertainty is ``1 - |2 P(strong) - 1|`` (1 at the decision boundary); with several
members (auto) their spread adds disagreement. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefroute.embed.base import Embedder
from prefroute.errors import ConfigError, check_choice, check_int, check_range

METHODS = ("kmeans", "kcenter", "disagreement")
PCA_DIMS = 32
# Strata for method="kmeans": 50 to 400 read alike on MMLU, GSM8K and MMLU-Pro (RESULTS #15 (f)).
STRATA = 100


@dataclass(frozen=True)
class Selection:
    """indices into the pool, in pick order; uncertainty of each pick (NaN: no router)."""

    indices: np.ndarray
    uncertainty: np.ndarray
    method: str


def uncertainty_of(strong_win_prob: np.ndarray | None,
                   member_probs: np.ndarray | None = None) -> np.ndarray | None:
    """1 - |2p - 1| (closeness to the boundary), plus members' spread when given, in [0, 1]."""
    if strong_win_prob is None:
        return None
    p = np.asarray(strong_win_prob, dtype=np.float64)
    u = 1.0 - np.abs(2.0 * p - 1.0)
    if member_probs is not None and member_probs.ndim == 2 and member_probs.shape[1] > 1:
        spread = member_probs.std(axis=1) * 2.0  # std of values in [0, 1] is at most 0.5
        u = 0.5 * u + 0.5 * np.clip(spread, 0.0, 1.0)
    return u


def disagreement_probability(pool: np.ndarray, labelled: np.ndarray,
                             disagreed: np.ndarray) -> np.ndarray:
    """P(the two models disagree | prompt) for each ``pool`` row, from a logistic model of
    the ``labelled`` rows' outcomes (``disagreed``: 1 when one model won, 0 for a tie, or a
    share when a prompt has several labels). Vectors as from ``pool_vectors``. Without
    both outcomes among the labels, every prompt gets their mean rate."""
    from scipy.special import expit

    from prefroute.routers.logistic import fit_decisive_logistic

    y = np.asarray(disagreed, dtype=np.float64)
    if len(y) != len(labelled):
        raise ConfigError(f"{len(y)} disagreement labels for {len(labelled)} labelled prompts")
    if len(y) == 0:
        raise ConfigError("the disagreement method needs labelled prompts (--labelled)")
    if y.min() == y.max():
        return np.full(len(pool), float(y.mean()))
    coef, intercept = fit_decisive_logistic(np.asarray(labelled, np.float64), y,
                                            np.ones(len(y)))
    return expit(np.asarray(pool, np.float64) @ coef + intercept)


def pool_embedder(prompts: Sequence[str], embedder: str | dict | Embedder = "wordllama"
                  ) -> Embedder:
    """wordllama embedding + surface features standardised on the pool (the space coverage
    is judged in), fitted and ready to encode the pool or labelled prompts."""
    from prefroute.embed.features import FeatureAugmentedEmbedder

    return FeatureAugmentedEmbedder(inner=embedder, feature_weight=0.5).fit(list(prompts))


def pool_vectors(prompts: Sequence[str], embedder: str | dict | Embedder = "wordllama"
                 ) -> np.ndarray:
    """The pool's vectors in ``pool_embedder``'s space."""
    return pool_embedder(prompts, embedder).encode(list(prompts))


def select_prompts(prompts: Sequence[str], budget: int, *, seed: int = 0,
                   method: str = "kmeans", vectors: np.ndarray | None = None,
                   strong_win_prob: np.ndarray | None = None,
                   member_probs: np.ndarray | None = None, uncertainty_weight: float = 0.5,
                   disagreement: np.ndarray | None = None,
                   embedder: str | dict | Embedder = "wordllama") -> Selection:
    """Pick ``budget`` distinct prompts of ``prompts`` to label (see the module docstring).

    Identical prompts count once. ``vectors`` skips embedding (one row per prompt).
    ``disagreement`` (one per prompt, for ``method="disagreement"``): P(the models disagree).
    """
    check_int("budget", "select_prompts", budget)
    check_int("seed", "select_prompts", seed, low=0)
    check_choice("method", "select_prompts", method, METHODS)
    check_range("uncertainty_weight", "select_prompts", uncertainty_weight, low=0.0, high=1.0)
    prompts = list(prompts)
    first = {}
    for i, p in enumerate(prompts):
        first.setdefault(p, i)
    distinct = np.array(sorted(first.values()), dtype=np.int64)
    if budget > len(distinct):
        raise ConfigError(f"--budget {budget} is more than the pool's {len(distinct)} "
                          "distinct prompts")
    if vectors is None:
        vectors = pool_vectors(prompts, embedder)
    if len(vectors) != len(prompts):
        raise ConfigError(f"{len(vectors)} vectors for {len(prompts)} prompts")
    x = np.asarray(vectors, dtype=np.float32)[distinct]
    if strong_win_prob is not None:
        probs = np.asarray(strong_win_prob, dtype=np.float64)
        if probs.shape != (len(prompts),):
            raise ConfigError(f"{probs.size} router probabilities for {len(prompts)} prompts")
        bad = np.flatnonzero(~((probs >= 0.0) & (probs <= 1.0)))  # NaN fails both
        if len(bad):
            raise ConfigError(f"router probability {float(probs[bad[0]])} for prompt {bad[0]} "
                              "is not a probability in [0, 1]")
    u_all = uncertainty_of(strong_win_prob, member_probs)
    u = None if u_all is None else np.asarray(u_all, dtype=np.float64)[distinct]
    if method == "disagreement":
        if disagreement is None or len(disagreement) != len(prompts):
            raise ConfigError("method 'disagreement' needs one disagreement probability per "
                              "prompt (from labelled prompts: --labelled)")
        picks = _weighted_draw(np.asarray(disagreement, np.float64)[distinct] ** 2, budget, seed)
    elif method == "kmeans":
        picks = _stratified_draw(x, budget, seed, u, uncertainty_weight)
    else:
        picks = _k_center(x, budget, seed, u, uncertainty_weight)
    chosen = distinct[picks]
    unc = np.full(len(chosen), np.nan) if u is None else u[picks]
    return Selection(indices=chosen, uncertainty=unc, method=method)


def _weighted_draw(weights: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """``budget`` distinct indices drawn with probability proportional to ``weights``
    (uniform where every weight is 0)."""
    w = np.clip(np.nan_to_num(weights, nan=0.0), 0.0, None) + 1e-12
    return np.random.default_rng(seed).choice(len(w), budget, replace=False, p=w / w.sum())


def _stratified_draw(x: np.ndarray, budget: int, seed: int, u: np.ndarray | None,
                     weight: float) -> np.ndarray:
    """``budget`` distinct rows of ``x``, each k-means stratum given its proportional share
    (see the module docstring), returned in a seeded random order so that any prefix of the
    picks is itself a random subsample of them."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    if budget == len(x):
        return rng.permutation(len(x))
    # k-means cost grows with n * strata * dim: cluster in the top principal directions
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x).astype(np.float32)
    # at most one stratum per pick, so that a router's uncertainty acts inside each one
    n_strata = min(STRATA, budget)
    strata = KMeans(n_clusters=n_strata, n_init=1, max_iter=30,
                    random_state=seed).fit_predict(x)
    preference = np.ones(len(x)) if u is None else ((1.0 - weight) + weight * u) ** 2
    picks = stratified_draw(strata, preference, budget, rng)
    return rng.permutation(picks)


def stratified_draw(strata: np.ndarray, preference: np.ndarray, budget: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``budget`` distinct row indices: each stratum (``strata``: one label per row) gets its
    share of the budget in proportion to its size, the fractional remainders decide the last
    picks, and inside a stratum rows are drawn in proportion to ``preference``."""
    n_strata = int(strata.max()) + 1
    quota = np.bincount(strata, minlength=n_strata) * (budget / len(strata))
    take = np.floor(quota).astype(np.int64)
    short = budget - int(take.sum())
    if short > 0:  # each remainder is below 1, so enough strata have one
        remainder = quota - take
        take[rng.choice(n_strata, short, replace=False, p=remainder / remainder.sum())] += 1
    picks = []
    for stratum in np.flatnonzero(take):
        members = np.flatnonzero(strata == stratum)
        w = preference[members] + 1e-12
        picks.append(members[rng.choice(len(members), take[stratum], replace=False,
                                        p=w / w.sum())])
    return np.concatenate(picks).astype(np.int64)


def _k_center(x: np.ndarray, budget: int, seed: int, u: np.ndarray | None,
              weight: float) -> np.ndarray:
    scale = np.ones(len(x)) if u is None else (1.0 - weight) + weight * u
    start = int(np.random.default_rng(seed).integers(len(x)))
    picks = [start]
    min_dist = 1.0 - x @ x[start]
    min_dist[start] = -np.inf
    for _ in range(budget - 1):
        nxt = int(np.argmax(min_dist * scale))
        picks.append(nxt)
        min_dist = np.minimum(min_dist, 1.0 - x @ x[nxt])
        min_dist[picks] = -np.inf
    return np.array(picks, dtype=np.int64)
