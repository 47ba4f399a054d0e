"""Routing curves: strong-model call rate against mean quality as the threshold sweeps.

A router sends a prompt to the strong model when ``strong_win_prob >= t``. Sweeping ``t``
traces a curve of (fraction of prompts sent to the strong model, mean quality). Only rates
that some threshold realises exist: prompts with equal probability cross every threshold
together, so a tie group of size m moves the rate by m/n in one step.

Every computation here runs on *tie groups* of the probability-sorted prompts and on a
matrix of per-prompt counts, so the same code gives the point estimate (counts all one) and
bootstrap resamples (multinomial counts), without ever re-sorting.

Two sets of call-rate points (``rule``):

``"routellm"``
    RouteLLM's evaluation (``routellm/evals/benchmarks.py``): thresholds at the 11 decile
    edges of the probabilities (``pandas.qcut(p, 10, retbins=True)``: the 0, 10, ..., 100th
    percentiles, linear interpolation), each routing ``p >= t`` to strong, except the last
    (the maximum) which routes ``p > t``, i.e. nothing. ``p >= quantile(p, q)`` with linear
    interpolation selects exactly the prompts whose probability is at least the value at
    ascending sorted position ``ceil(q (n - 1))``; that is how the points are computed here
    (exact integer arithmetic, no floating-point quantiles).
``"all"``
    Every call rate a threshold can realise: one point per tie-group boundary, from 0 to
    100% strong calls. The trapezoid rule over these points is the exact area under the
    curve of the router with ties broken at random (the expected curve is linear across a
    tie group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefroute.errors import ConfigError, check_choice

RULES = ("routellm", "all")
N_DECILE_EDGES = 11


@dataclass(frozen=True)
class RoutingCurve:
    """Points of a routing curve, ascending in strong-call rate.

    Attributes
    ----------
    strong_rate: fraction of prompts routed to the strong model, in [0, 1], ascending.
    quality: mean score of the routed answers at that rate.
    threshold: the threshold realising the point (route ``p >= threshold`` to strong); the
        0% point uses the next float above the largest probability.
    """

    strong_rate: np.ndarray
    quality: np.ndarray
    threshold: np.ndarray

    def __len__(self) -> int:
        return len(self.strong_rate)

    def pgr(self, weak_quality: float, strong_quality: float) -> np.ndarray:
        """Performance gap recovered at each point (see ``metrics.pgr``)."""
        return (self.quality - weak_quality) / (strong_quality - weak_quality)

    def at_rates(self, rates: Sequence[float] | np.ndarray, n_prompts: int) -> RoutingCurve:
        """The realised point for each target rate, duplicates removed.

        A target rate r asks for k = round(r n) strong calls; when the k-th prompt is inside a
        tie group, the whole group goes strong (the smallest realised rate >= k / n), as
        ``prefroute.calibrate.threshold_for_strong_rate`` does.
        """
        wanted = np.round(np.asarray(rates, dtype=np.float64) * n_prompts) / n_prompts
        idx = np.searchsorted(self.strong_rate, wanted - 0.5 / n_prompts, side="left")
        idx = np.unique(np.minimum(idx, len(self) - 1))
        return RoutingCurve(self.strong_rate[idx], self.quality[idx], self.threshold[idx])

    def to_records(self, weak_quality: float, strong_quality: float) -> list[dict]:
        pgr = self.pgr(weak_quality, strong_quality)
        return [
            {"strong_rate": float(r), "quality": float(q), "pgr": float(g), "threshold": float(t)}
            for r, q, g, t in zip(self.strong_rate, self.quality, pgr, self.threshold,
                                  strict=True)
        ]


class RankedOutcomes:
    """Strong and weak scores of each prompt, grouped by tied ``strong_win_prob``.

    Parameters
    ----------
    strong_scores, weak_scores: per-prompt quality of each model (0/1 or a judge score).
    strong_win_prob: the router's P(strong wins) per prompt.
    """

    def __init__(self, strong_scores: np.ndarray, weak_scores: np.ndarray,
                 strong_win_prob: np.ndarray) -> None:
        s, w, p = (np.asarray(a, dtype=np.float64) for a in (strong_scores, weak_scores,
                                                              strong_win_prob))
        if not (s.ndim == w.ndim == p.ndim == 1) or not (len(s) == len(w) == len(p)):
            raise ConfigError(
                f"strong scores, weak scores and probabilities must be 1-D arrays of one length; "
                f"got shapes {s.shape}, {w.shape}, {p.shape}"
            )
        if len(p) == 0:
            raise ConfigError("cannot evaluate a router on zero prompts")
        for name, a in (("strong scores", s), ("weak scores", w), ("strong_win_prob", p)):
            if not np.isfinite(a).all():
                raise ConfigError(f"{name} contain {int((~np.isfinite(a)).sum())} NaN/inf values")
        self.n = len(p)
        self.strong_scores, self.weak_scores, self.strong_win_prob = s, w, p
        self.order = np.argsort(p, kind="stable")  # ascending probability
        sorted_p = p[self.order]
        self.group_starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
        self.group_values = sorted_p[self.group_starts]
        self.gain_sorted = (s - w)[self.order]

    @property
    def n_groups(self) -> int:
        return len(self.group_starts)

    def group_sums(self, counts: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per tie group: prompt count and strong-minus-weak gain; plus weak and strong totals.

        ``counts`` [B, n] (prompt multiplicities in the original order, e.g. a bootstrap
        resample) gives B rows; None means every prompt once.
        """
        if counts is None:
            counts = np.ones((1, self.n), dtype=np.int64)
        c_sorted = counts[:, self.order]
        gain_sorted = c_sorted * self.gain_sorted
        if self.n_groups == self.n:  # no ties: every prompt is its own group
            count_g, gain_g = c_sorted, gain_sorted
        else:
            count_g = np.add.reduceat(c_sorted, self.group_starts, axis=1)
            gain_g = np.add.reduceat(gain_sorted, self.group_starts, axis=1)
        return count_g, gain_g, counts @ self.weak_scores, counts @ self.strong_scores

    def threshold_of_group(self, group: np.ndarray) -> np.ndarray:
        """The threshold that routes groups >= ``group`` to strong (G: nothing goes strong)."""
        values = np.r_[self.group_values, np.nextafter(self.group_values[-1], np.inf)]
        return values[group]


def decile_positions(n: int) -> np.ndarray:
    """Ascending sorted positions ceil(q (n - 1)) for q = 0.1 .. 0.9 (exact integers)."""
    i = np.arange(1, N_DECILE_EDGES - 1)
    return -((-i * (n - 1)) // (N_DECILE_EDGES - 1))


def curve_arrays(count_g: np.ndarray, gain_g: np.ndarray, weak_total: np.ndarray, n: int,
                 rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates, qualities and first-strong group index [B, P] of each curve point, rate ascending.

    Point with group index g routes every tie group >= g (ascending probability) to strong.
    """
    check_choice("rule", "curve_arrays", rule, RULES)
    b, g_count = count_g.shape
    zeros = np.zeros((b, 1), dtype=count_g.dtype)
    # suffix sums over groups: calls and gain when groups g.. go strong; column G is "none"
    suffix_count = np.concatenate([np.cumsum(count_g[:, ::-1], axis=1)[:, ::-1], zeros], axis=1)
    suffix_gain = np.concatenate(
        [np.cumsum(gain_g[:, ::-1], axis=1)[:, ::-1], np.zeros((b, 1))], axis=1
    )
    if rule == "all":
        groups = np.broadcast_to(np.arange(g_count, -1, -1), (b, g_count + 1))
    else:
        ascending_cum = np.cumsum(count_g, axis=1)
        positions = decile_positions(n)
        # the tie group holding ascending position j: how many groups end at or before j
        inner = (ascending_cum[:, None, :] <= positions[None, :, None]).sum(axis=2)
        first = np.zeros((b, 1), dtype=np.int64)
        last = np.full((b, 1), g_count, dtype=np.int64)
        groups = np.concatenate([last, inner[:, ::-1], first], axis=1)
    rates = np.take_along_axis(suffix_count, groups, axis=1) / n
    quality = (weak_total[:, None] + np.take_along_axis(suffix_gain, groups, axis=1)) / n
    return rates, quality, np.ascontiguousarray(groups)


def routing_curve(strong_scores: np.ndarray, weak_scores: np.ndarray, strong_win_prob: np.ndarray,
                  *, points: str | int = "all") -> RoutingCurve:
    """The routing curve of ``strong_win_prob`` on per-prompt scores.

    ``points``: ``"routellm"`` (RouteLLM's 11 decile thresholds), ``"all"`` (every realisable
    call rate) or an int g >= 2 (the realised points nearest to g evenly spaced rates).
    """
    return ranked_curve(RankedOutcomes(strong_scores, weak_scores, strong_win_prob), points=points)


def ranked_curve(ranked: RankedOutcomes, *, points: str | int = "all") -> RoutingCurve:
    """``routing_curve`` on already-grouped outcomes."""
    if isinstance(points, (int, np.integer)) and not isinstance(points, bool):
        if points < 2:
            raise ConfigError(
                f"The 'points' parameter of routing_curve must be >= 2. Got {points}."
            )
        full = ranked_curve(ranked, points="all")
        return full.at_rates(np.linspace(0.0, 1.0, int(points)), ranked.n)
    if not isinstance(points, str):
        raise ConfigError(
            f"The 'points' parameter of routing_curve must be 'routellm', 'all' or an int. "
            f"Got {points!r} instead."
        )
    check_choice("points", "routing_curve", points, RULES)
    count_g, gain_g, weak_total, _ = ranked.group_sums()
    rates, quality, groups = curve_arrays(count_g, gain_g, weak_total, ranked.n, points)
    # the decile rule can hit one tie group from several deciles: keep one point per rate
    _, keep = np.unique(rates[0], return_index=True)
    thresholds = ranked.threshold_of_group(groups[0][keep])
    return RoutingCurve(rates[0][keep], quality[0][keep], thresholds)
