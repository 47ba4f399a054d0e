"""Metrics and baselines for N-way routing: accuracy, $ cost, latency, oracle, upper bound, AIQ.

Costs: per-prompt dollar costs from the outcome table when it has them (RouterBench: what
each call actually cost), otherwise configured per-model prices ($ per call). Latency: the
stored data have none, so it comes from a configured per-model table (``ModelProfile``): given
explicitly, or (``latency="cost"``) proportional to each model's mean cost with the most
expensive model at ``reference_latency`` seconds; the numbers are then relative, a stand-in
for measured latencies, and say so in ``ModelProfile.latency_source``.

AIQ (RouterBench, Hu et al. 2024, arXiv 2403.12031, Section 3 "Average Improvement in
Quality"): a router swept over its cost knob gives points (cost, quality); their
non-decreasing convex hull R~(c) is the best quality reachable at cost <= c, where any point
between two configurations is reachable by routing each prompt at random to one of them.

    AIQ = 1 / (c_max - c_min) * integral_{c_min}^{c_max} R~(c) dc

Beyond its most expensive hull point R~ stays flat (RouterBench's reference code,
``evaluation/AIQ.py``, extends each hull the same way); below its cheapest point a router
cannot operate and R~ counts as 0. To compare routers, use one shared cost range: by default
[cheapest, most expensive] single model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.data.outcomes import OutcomeTable
from prefroute.errors import ConfigError, DataError
from prefroute.multi.policies import cost_aware_policy, lambda_grid


@dataclass(frozen=True)
class ModelProfile:
    """Per-model price ($ per call) and latency (seconds per call); either may be None."""

    models: list[str]
    prices: np.ndarray | None = None
    latencies: np.ndarray | None = None
    price_source: str = "none"
    latency_source: str = "none"

    def __post_init__(self) -> None:
        for name in ("prices", "latencies"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (len(self.models),) or not np.isfinite(arr).all() or (arr < 0).any():
                raise ConfigError(
                    f"ModelProfile.{name} must hold one finite value >= 0 per model; got {value}"
                )
            object.__setattr__(self, name, arr)

    @classmethod
    def from_table(
        cls,
        table: OutcomeTable,
        *,
        rows: Sequence[int] | np.ndarray | None = None,
        latency: str | dict[str, float] | None = "cost",
        reference_latency: float = 1.0,
    ) -> ModelProfile:
        """Prices = mean per-call cost in ``table`` (over ``rows``, e.g. the training split).

        ``latency``: ``"cost"`` (proportional to price; the priciest model takes
        ``reference_latency`` s), a {model: seconds} dict, or None (unknown).
        """
        prices, price_source = None, "none"
        if table.costs is not None:
            costs = table.costs if rows is None else table.costs[np.asarray(rows)]
            prices = np.nanmean(costs, axis=0)
            price_source = f"mean $ per call in {table.name}"
        lat, lat_source = None, "none"
        if isinstance(latency, dict):
            lat = _per_model(latency, table.models, "latency")
            lat_source = "configured"
        elif latency == "cost":
            if prices is not None and prices.max() > 0:
                lat = reference_latency * prices / prices.max()
                lat_source = (
                    f"proportional to cost ({reference_latency:g} s for the priciest model)"
                )
        elif latency is not None:
            raise ConfigError(
                "The 'latency' parameter of ModelProfile.from_table must be 'cost', a dict or "
                f"None. Got {latency!r} instead."
            )
        return cls(list(table.models), prices, lat, price_source, lat_source)

    @classmethod
    def from_json(cls, path: str | Path, models: Sequence[str]) -> ModelProfile:
        """``{"prices": {model: $}, "latencies": {model: s}}`` (either key optional)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the model profile ({e})", file=str(path)) from None
        if not isinstance(data, dict) or not ({"prices", "latencies"} & set(data)):
            raise DataError('expected {"prices": {...}, "latencies": {...}}', file=str(path))
        prices = (
            _per_model(data["prices"], models, "prices", str(path)) if "prices" in data else None
        )
        lat = (
            _per_model(data["latencies"], models, "latencies", str(path))
            if "latencies" in data
            else None
        )
        return cls(
            list(models),
            prices,
            lat,
            f"configured ({path.name})" if prices is not None else "none",
            f"configured ({path.name})" if lat is not None else "none",
        )


def _per_model(
    values: Any, models: Sequence[str], what: str, file: str | None = None
) -> np.ndarray:
    if not isinstance(values, dict):
        raise DataError(f"{what} must be a {{model: value}} object", file=file, field=what)
    missing = [m for m in models if m not in values]
    if missing:
        raise DataError(f"no {what} value for models {missing}", file=file, field=what)
    return np.array([float(values[m]) for m in models])


@dataclass
class RoutingResult:
    """What a routing decision achieves on a set of prompts."""

    name: str
    accuracy: float
    cost: float = float("nan")
    latency: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)
    # the score of the chosen model on each prompt (for paired comparisons; not serialised)
    per_prompt: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "cost": self.cost,
            "latency": self.latency,
            **self.extra,
        }


def _costs_of(
    choices: np.ndarray, prompt_costs: np.ndarray | None, profile: ModelProfile | None
) -> np.ndarray:
    rows = np.arange(len(choices))
    if prompt_costs is not None:
        return prompt_costs[rows, choices]
    if profile is not None and profile.prices is not None:
        return profile.prices[choices]
    return np.full(len(choices), np.nan)


def evaluate_choices(
    name: str,
    choices: np.ndarray,
    scores: np.ndarray,
    *,
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
) -> RoutingResult:
    """Accuracy (mean score of the chosen model), mean $ cost and mean latency per prompt."""
    choices = np.asarray(choices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(choices))
    got = scores[rows, choices]
    if np.isnan(got).any():
        raise DataError(
            f"{name}: {int(np.isnan(got).sum())} prompts were routed to a model without a result; "
            "evaluate on complete rows (prefroute.multi.data.prepare_table)"
        )
    cost = _costs_of(choices, prompt_costs, profile)
    latency = (
        profile.latencies[choices]
        if profile is not None and profile.latencies is not None
        else np.full(len(choices), np.nan)
    )
    share = np.bincount(choices, minlength=scores.shape[1]) / max(len(choices), 1)
    return RoutingResult(
        name,
        float(got.mean()),
        float(cost.mean()),
        float(latency.mean()),
        {"model_share": share.tolist()},
        per_prompt=got,
    )


def single_model_results(
    models: Sequence[str],
    scores: np.ndarray,
    *,
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
) -> list[RoutingResult]:
    """Every prompt to one model, for each model."""
    n = scores.shape[0]
    return [
        evaluate_choices(m, np.full(n, j), scores, prompt_costs=prompt_costs, profile=profile)
        for j, m in enumerate(models)
    ]


def random_result(
    scores: np.ndarray,
    *,
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
) -> RoutingResult:
    """Uniformly random routing, in expectation: the mean over all (prompt, model) cells."""
    results = single_model_results(
        [str(j) for j in range(scores.shape[1])], scores, prompt_costs=prompt_costs, profile=profile
    )
    return RoutingResult(
        "Random",
        float(np.mean([r.accuracy for r in results])),
        float(np.mean([r.cost for r in results])),
        float(np.mean([r.latency for r in results])),
    )


def _unit_costs(
    scores: np.ndarray, prompt_costs: np.ndarray | None, profile: ModelProfile | None
) -> np.ndarray:
    """[n, N] cost used to break ties (prompt costs, else prices, else latencies, else 0)."""
    if prompt_costs is not None:
        return prompt_costs
    if profile is not None and profile.prices is not None:
        return np.broadcast_to(profile.prices, scores.shape)
    if profile is not None and profile.latencies is not None:
        return np.broadcast_to(profile.latencies, scores.shape)
    return np.zeros(scores.shape)


def _best_cheapest(scores: np.ndarray, allowed: np.ndarray, unit_costs: np.ndarray) -> np.ndarray:
    """Per row: among allowed models, those with the highest score; among them the cheapest."""
    masked = np.where(allowed, scores, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    tied = allowed & (masked >= best)
    return np.where(tied, unit_costs, np.inf).argmin(axis=1)


def oracle_choices(
    scores: np.ndarray,
    *,
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
) -> np.ndarray:
    """The oracle: the cheapest model that solves the prompt (best score, then lowest cost).

    When no model solves it, every model ties at the best score (0) and the oracle takes the
    cheapest. Without any costs, ties go to the lower model index.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    return _best_cheapest(
        scores, np.ones(scores.shape, bool), _unit_costs(scores, prompt_costs, profile)
    )


def upper_bound_choices(
    confidences: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float = 0.5,
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
) -> np.ndarray:
    """The classifier upper bound (Srivatsa et al.'s "Upper bound" row), defined precisely.

    The classifier's predicted label set of prompt q is S(q) = {m : confidence(q, m) >=
    threshold}, or {argmax_m confidence(q, m)} when that set is empty. An oracle restricted
    to S(q) picks a model of S(q) that solves q (the cheapest such one), or the cheapest
    model of S(q) when none does. Its accuracy is the share of prompts whose predicted set
    contains a model that solves them: the best any policy over these predicted label sets
    can reach. It equals the oracle when every S(q) contains a correct model.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    allowed = conf >= threshold
    empty = ~allowed.any(axis=1)
    allowed[empty, conf[empty].argmax(axis=1)] = True
    return _best_cheapest(scores, allowed, _unit_costs(scores, prompt_costs, profile))


# ------------------------------------------------------------------------- cost-quality
@dataclass(frozen=True)
class CostQualityCurve:
    """(cost, quality) of cost-aware routing at each lambda (and the mean latency)."""

    lambdas: np.ndarray
    costs: np.ndarray
    qualities: np.ndarray
    latencies: np.ndarray


def cost_quality_curve(
    confidences: np.ndarray,
    scores: np.ndarray,
    *,
    model_costs: Sequence[float],
    prompt_costs: np.ndarray | None = None,
    profile: ModelProfile | None = None,
    lambdas: Sequence[float] | None = None,
) -> CostQualityCurve:
    """Sweep ``cost_aware_policy`` over lambda; cost is charged per prompt when known."""
    lambdas = lambda_grid(model_costs) if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    if profile is None:
        profile = ModelProfile(
            [str(j) for j in range(len(model_costs))], np.asarray(model_costs, float)
        )
    costs, quals, lats = [], [], []
    for lam in lambdas:
        choice = cost_aware_policy(confidences, model_costs=model_costs, lam=float(lam))
        result = evaluate_choices(
            "cost", choice, scores, prompt_costs=prompt_costs, profile=profile
        )
        costs.append(result.cost)
        quals.append(result.accuracy)
        lats.append(result.latency)
    return CostQualityCurve(np.asarray(lambdas), np.array(costs), np.array(quals), np.array(lats))


def nondecreasing_convex_hull(
    costs: Sequence[float], qualities: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of the non-decreasing convex hull of (cost, quality) points, by cost.

    The upper concave envelope of the points (Andrew's monotone chain, upper half), cut at
    its highest-quality vertex: beyond it, paying more buys nothing (the curve stays flat).
    """
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if c.shape != q.shape or c.ndim != 1 or c.size == 0:
        raise DataError(
            f"costs and qualities must be two 1-d arrays of equal length; got {c.shape}, {q.shape}"
        )
    ok = np.isfinite(c) & np.isfinite(q)
    if not ok.any():
        raise DataError("no point has a finite cost and quality")
    c, q = c[ok], q[ok]
    order = np.lexsort((-q, c))  # by cost, then best quality first
    c, q = c[order], q[order]
    first = np.concatenate([[True], np.diff(c) > 0])  # keep the best quality at each cost
    c, q = c[first], q[first]
    hull: list[int] = []
    for i in range(len(c)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or below the segment a -> i (cross product >= 0)
            if (c[b] - c[a]) * (q[i] - q[a]) - (q[b] - q[a]) * (c[i] - c[a]) >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hc, hq = c[hull], q[hull]
    top = int(np.argmax(hq))
    return hc[: top + 1], hq[: top + 1]


def aiq(
    costs: Sequence[float],
    qualities: Sequence[float],
    *,
    cost_range: tuple[float, float] | None = None,
) -> float:
    """RouterBench's Average Improvement in Quality (see the module docstring).

    ``cost_range``: (c_min, c_max) to integrate over; default: from the cheapest to the
    most expensive of the given points.
    """
    hc, hq = nondecreasing_convex_hull(costs, qualities)
    finite = np.asarray(costs, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    c_min, c_max = (
        (float(finite.min()), float(finite.max())) if cost_range is None else map(float, cost_range)
    )
    if c_max < c_min:
        raise ConfigError(
            f"cost_range must be (c_min, c_max) with c_min <= c_max; got {cost_range}"
        )
    if c_max == c_min:
        return float(np.interp(c_min, hc, hq)) if hc[0] <= c_min else 0.0
    # R~ is 0 below the hull's cheapest point, piecewise linear along the hull, flat after it
    # (np.interp holds the last value beyond the last vertex).
    low = max(c_min, float(hc[0]))
    if low >= c_max:
        return 0.0
    grid = np.unique(np.concatenate([[low, c_max], hc[(hc > low) & (hc < c_max)]]))
    values = np.interp(grid, hc, hq)
    area = float(np.sum(np.diff(grid) * (values[1:] + values[:-1]) / 2.0))
    return float(area / (c_max - c_min))


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a - b) and its percentile bootstrap interval, resampling prompts (paired)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise DataError(f"paired_bootstrap_ci needs two equal-length 1-d arrays; got {diff.shape}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound memory at 256 x n
        k = min(256, n_boot - start)
        means[start : start + k] = diff[rng.integers(0, diff.size, size=(k, diff.size))].mean(
            axis=1
        )
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def oracle_gap_closed(
    router_accuracy: float, best_single_accuracy: float, oracle_accuracy: float
) -> float:
    """(router - best single) / (oracle - best single): the share of the oracle's headroom won."""
    gap = oracle_accuracy - best_single_accuracy
    return float("nan") if gap <= 0 else (router_accuracy - best_single_accuracy) / gap


def cheapest_at_quality(
    costs: Sequence[float], qualities: Sequence[float], target: float
) -> float | None:
    """The lowest cost among measured points with quality >= target (None if none reaches it)."""
    c = np.asarray(costs, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    ok = q >= target - 1e-12
    return float(c[ok].min()) if ok.any() else None
