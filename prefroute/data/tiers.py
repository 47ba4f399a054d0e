"""Group models into tiers of similar strength.

``optimal_tiers`` splits sorted ratings into k contiguous groups with the least total
within-group squared deviation (1-d k-means, solved exactly by dynamic programming).
Routers that learn "tier a vs tier b" win rates use ``ModelTiers`` and
``map_battles_to_tiers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefroute.data.battles import Battles
from prefroute.data.ratings import BTRatings
from prefroute.errors import ConfigError, DataError, check_range


def optimal_tiers(values: np.ndarray, k: int) -> np.ndarray:
    """Split values into k contiguous tiers with minimal within-tier squared deviation.

    Exact dynamic programming over the distinct values sorted from highest to lowest,
    O(k n^2) with prefix sums; equal values always share a tier, so the result does not
    depend on the input order.

    Parameters
    ----------
    values: float [n] (e.g. Bradley-Terry strengths).
    k: number of tiers, 1 <= k <= number of distinct values.

    Returns
    -------
    int [n], the tier of each input value; tier 0 holds the highest values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise DataError(f"values must be 1-d, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise DataError("values must be finite")
    n = v.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(
            f"The 'k' parameter of optimal_tiers must be an int in [1, {n}]. Got {k!r} instead."
        )
    check_range("k", "optimal_tiers", k, low=1, high=n)
    distinct, inverse, mult = np.unique(v, return_inverse=True, return_counts=True)
    if k > distinct.size:
        raise ConfigError(
            f"The 'k' parameter of optimal_tiers must be at most the number of distinct "
            f"values ({distinct.size}), since equal values share a tier. Got {k} instead."
        )
    # highest first, so that tier 0 is the strongest
    u, c = distinct[::-1], mult[::-1].astype(np.float64)
    m = u.size
    u = u - np.average(u, weights=c)  # centring limits cancellation in sum(x^2) - sum(x)^2/n
    s0 = np.concatenate([[0.0], np.cumsum(c)])
    s1 = np.concatenate([[0.0], np.cumsum(c * u)])
    s2 = np.concatenate([[0.0], np.cumsum(c * u * u)])
    # cost[i, j]: squared deviation of the group u[i:j]; inf where the group would be empty
    i, j = np.triu_indices(m + 1, k=1)
    cost = np.full((m + 1, m + 1), np.inf)
    cnt = s0[j] - s0[i]
    sum1 = s1[j] - s1[i]
    cost[i, j] = np.maximum(s2[j] - s2[i] - sum1 * sum1 / cnt, 0.0)

    # best[j] = least cost of splitting u[:j] into t groups; choice[t, j] = start of the last
    best = cost[0].copy()
    choice = np.zeros((k, m + 1), dtype=np.int64)
    for t in range(1, k):
        total = best[:, None] + cost
        choice[t] = np.argmin(total, axis=0)
        best = total[choice[t], np.arange(m + 1)]

    tier_of_distinct = np.empty(m, dtype=np.int64)
    end = m
    for t in range(k - 1, -1, -1):
        start = choice[t, end] if t > 0 else 0
        tier_of_distinct[start:end] = t
        end = start
    # tier_of_distinct is indexed highest-first; np.unique's inverse indexes lowest-first
    return tier_of_distinct[::-1][inverse]


@dataclass
class ModelTiers:
    """An assignment of models to tiers (tier 0 = strongest).

    Attributes
    ----------
    models: model names.
    tier_of: model name -> tier index in ``range(n_tiers)``.
    n_tiers: number of tiers.
    """

    models: list[str]
    tier_of: dict[str, int]
    n_tiers: int

    def __post_init__(self) -> None:
        self.models = list(self.models)
        self.tier_of = {str(m): int(t) for m, t in self.tier_of.items()}
        missing = [m for m in self.models if m not in self.tier_of]
        if missing:
            raise DataError(f"models without a tier: {missing}")
        bad = {m: t for m, t in self.tier_of.items() if not 0 <= t < self.n_tiers}
        if bad:
            raise DataError(f"tiers outside [0, {self.n_tiers - 1}]: {bad}")

    def members(self, tier: int) -> list[str]:
        """Models in ``tier``, in ``models`` order."""
        return [m for m in self.models if self.tier_of[m] == tier]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`)."""
        return {
            "models": list(self.models),
            "tier_of": dict(self.tier_of),
            "n_tiers": int(self.n_tiers),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelTiers:
        """Rebuild from :meth:`to_dict` output."""
        try:
            return cls(
                models=list(data["models"]),
                tier_of=dict(data["tier_of"]),
                n_tiers=int(data["n_tiers"]),
            )
        except KeyError as e:
            raise DataError(f"tiers dict lacks {e.args[0]!r}") from None


def tiers_from_ratings(ratings: BTRatings, k: int) -> ModelTiers:
    """Group rated models into k tiers with :func:`optimal_tiers` on their strengths.

    Parameters
    ----------
    ratings: fitted ratings.
    k: number of tiers.

    Returns
    -------
    ModelTiers over ``ratings.models``.
    """
    tiers = optimal_tiers(ratings.theta, k)
    return ModelTiers(
        models=list(ratings.models),
        tier_of={m: int(t) for m, t in zip(ratings.models, tiers, strict=True)},
        n_tiers=k,
    )


def map_battles_to_tiers(battles: Battles, tiers: ModelTiers) -> tuple[np.ndarray, np.ndarray]:
    """The tier of each side of each battle.

    Parameters
    ----------
    battles: the battles.
    tiers: the tier of every model that appears in them.

    Returns
    -------
    (tier_a, tier_b), int arrays of length ``len(battles)``.

    Raises
    ------
    DataError naming the first row (counted from 1) and field whose model has no tier.
    """
    names = list(tiers.tier_of)
    value_set = pa.array(names, type=pa.string())
    lookup = np.array([tiers.tier_of[m] for m in names], dtype=np.int64)
    out = []
    for field in ("model_a", "model_b"):
        idx = pc.index_in(battles.table[field], value_set=value_set)
        missing = pc.is_null(idx).to_numpy(zero_copy_only=False)
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            model = battles.table[field][row].as_py()
            raise DataError(f"model {model!r} has no tier", row=row + 1, field=field)
        out.append(lookup[idx.to_numpy(zero_copy_only=False).astype(np.int64)])
    return out[0], out[1]


def drop_same_tier(battles: Battles, tiers: ModelTiers) -> Battles:
    """Remove battles whose two models share a tier, logging how many went.

    Parameters
    ----------
    battles: the battles.
    tiers: the tier of every model in them.

    Returns
    -------
    The battles between models of different tiers.
    """
    tier_a, tier_b = map_battles_to_tiers(battles, tiers)
    return battles.log_filter(tier_a != tier_b, "same-tier battles")
