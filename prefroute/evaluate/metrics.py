"""RouteLLM's routing-quality metrics: PGR, APGR, CPT, with bootstrap CIs and references.

Definitions (RouteLLM, arXiv 2406.18665, and ``routellm/evals/evaluate.py``):

PGR(t)
    ``(quality(t) - weak_quality) / (strong_quality - weak_quality)``: the share of the gap
    between the weak and the strong model recovered at threshold t.
APGR
    Area under quality vs strong-call fraction (trapezoid rule over the curve points sorted
    by call fraction, fractions in [0, 1]), normalised by the areas of the constant weak and
    strong lines over the same fractions: ``(auc - weak_auc) / (strong_auc - weak_auc)``.
    RouteLLM's points are its 11 decile thresholds (``rule="routellm"``, the headline number
    here, comparable with the paper); ``rule="all"`` integrates over every realisable call
    rate instead (exact area, less noisy on small benchmarks). Random routing gives 0.5 in
    expectation under both rules.
CPT(x%)
    The smallest strong-call percentage at which the curve reaches PGR x%. The curve is read
    as piecewise linear between its points (sorted by call rate): the answer is the first
    crossing of the target quality, interpolated linearly inside the crossing segment; NaN
    when the curve never reaches it. (RouteLLM uses ``np.interp`` on its decile points,
    which is the same number whenever those points rise monotonically.) Reported on the
    ``"all"`` curve, and on the decile curve as ``cpt_routellm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from prefroute.errors import ConfigError, check_choice, check_range
from prefroute.evaluate.curves import (
    RULES,
    RankedOutcomes,
    RoutingCurve,
    curve_arrays,
    ranked_curve,
)

CPT_LEVELS = (0.2, 0.5, 0.8)


def pgr(quality: float | np.ndarray, weak_quality: float, strong_quality: float
        ) -> float | np.ndarray:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's."""
    gap = strong_quality - weak_quality
    if gap == 0:
        raise ConfigError("PGR is undefined: the strong and weak models have the same quality")
    return (np.asarray(quality) - weak_quality) / gap


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid-rule integral along the last axis (x ascending)."""
    return (np.diff(x, axis=-1) * (y[..., 1:] + y[..., :-1]) / 2.0).sum(axis=-1)


def apgr_from_arrays(rates: np.ndarray, quality: np.ndarray, weak_quality: np.ndarray | float,
                     strong_quality: np.ndarray | float) -> np.ndarray:
    """APGR of curves given as arrays [..., P] (rates ascending); NaN where the gap is 0."""
    area = _trapezoid(quality, rates)
    span = rates[..., -1] - rates[..., 0]
    weak_auc = np.asarray(weak_quality) * span
    strong_auc = np.asarray(strong_quality) * span
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (area - weak_auc) / (strong_auc - weak_auc)
    return np.where(strong_auc != weak_auc, out, np.nan)


def apgr(curve: RoutingCurve, weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered of one curve (see the module docstring)."""
    if len(curve) < 2:
        raise ConfigError("APGR needs a curve with at least two points")
    return float(apgr_from_arrays(curve.strong_rate, curve.quality, weak_quality, strong_quality))


def cpt(curve: RoutingCurve, weak_quality: float, strong_quality: float, level: float) -> float:
    """Call-performance threshold: smallest strong-call fraction reaching PGR ``level``.

    Returns a fraction in [0, 1] (multiply by 100 for %), NaN if never reached.
    """
    check_range("level", "cpt", level, low=0.0, high=1.0)
    target = weak_quality + level * (strong_quality - weak_quality)
    q, r = curve.quality, curve.strong_rate
    reached = np.flatnonzero(q >= target - 1e-12)
    if len(reached) == 0:
        return float("nan")
    j = int(reached[0])
    if j == 0:
        return float(r[0])
    frac = (target - q[j - 1]) / (q[j] - q[j - 1])
    return float(r[j - 1] + frac * (r[j] - r[j - 1]))


def apgr_resampled(ranked: RankedOutcomes, counts: np.ndarray, rule: str) -> np.ndarray:
    """APGR of each row of prompt multiplicities ``counts`` [B, n] (all sum to n)."""
    count_g, gain_g, weak_total, strong_total = ranked.group_sums(counts)
    rates, quality, _ = curve_arrays(count_g, gain_g, weak_total, ranked.n, rule)
    n = counts.sum(axis=1)
    return apgr_from_arrays(rates, quality, weak_total / n, strong_total / n)


def bootstrap_apgr(ranked: RankedOutcomes, *, rule: str = "routellm", n_bootstrap: int = 1000,
                   seed: int = 0, level: float = 0.95, chunk: int = 100
                   ) -> tuple[tuple[float, float], np.ndarray]:
    """Percentile bootstrap CI of APGR, resampling prompts with replacement.

    All B resamples are multinomial count vectors over the prompts, processed ``chunk`` at a
    time as matrices (no per-resample sort). Resamples whose weak and strong qualities tie
    give NaN and are left out of the percentiles. Returns ((low, high), samples[B]).
    """
    check_choice("rule", "bootstrap_apgr", rule, RULES)
    if n_bootstrap < 1:
        raise ConfigError(
            f"The 'n_bootstrap' parameter of bootstrap_apgr must be >= 1. Got {n_bootstrap}."
        )
    check_range("level", "bootstrap_apgr", level, low=0.0, high=1.0, low_inclusive=False,
                high_inclusive=False)
    rng = np.random.default_rng(seed)
    n = ranked.n
    samples = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draws + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n)
        samples[start : start + b] = apgr_resampled(ranked, counts.reshape(b, n), rule)
    tail = (1.0 - level) / 2.0 * 100.0
    if np.isnan(samples).all():
        return (float("nan"), float("nan")), samples
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return (float(low), float(high)), samples


def oracle_probs(strong_scores: np.ndarray, weak_scores: np.ndarray) -> np.ndarray:
    """The oracle's P(strong wins): ranks prompts by strong minus weak score.

    Prompts where the strong model beats the weak one go strong first (largest gain first),
    then ties, then prompts where the weak model is better; mapped monotonically into [0, 1]
    (0.5 = tie).
    """
    gain = np.asarray(strong_scores, dtype=np.float64) - np.asarray(weak_scores, dtype=np.float64)
    scale = np.abs(gain).max()
    return 0.5 + 0.5 * gain / scale if scale > 0 else np.full(len(gain), 0.5)


@dataclass
class RouterMetrics:
    """Routing quality of one router on one benchmark.

    apgr: RouteLLM's APGR (11 decile thresholds); apgr_ci: its bootstrap CI (None if not
    computed); apgr_all: APGR over every realisable call rate; cpt / cpt_routellm: strong-call
    % reaching PGR 20/50/80% on the all-rates / decile curve; curve: points at evenly spaced
    call rates (``grid``); curve_routellm: the decile points; apgr_std / n_seeds: spread over
    seeds for the random reference.
    """

    name: str
    apgr: float
    apgr_all: float
    cpt: dict[str, float]
    cpt_routellm: dict[str, float]
    curve: list[dict]
    curve_routellm: list[dict]
    apgr_ci: tuple[float, float] | None = None
    apgr_std: float | None = None
    n_seeds: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["apgr_ci"] = None if self.apgr_ci is None else list(self.apgr_ci)
        return out


def _cpt_dict(curve: RoutingCurve, weak_quality: float, strong_quality: float) -> dict[str, float]:
    return {f"{round(x * 100)}": 100.0 * cpt(curve, weak_quality, strong_quality, x)
            for x in CPT_LEVELS}


def router_metrics(strong_scores: np.ndarray, weak_scores: np.ndarray, strong_win_prob: np.ndarray,
                   *, name: str = "router", grid: int = 101, n_bootstrap: int = 1000, seed: int = 0,
                   level: float = 0.95) -> RouterMetrics:
    """All metrics of one router's probabilities; ``n_bootstrap=0`` skips the CI."""
    ranked = RankedOutcomes(strong_scores, weak_scores, strong_win_prob)
    weak_q, strong_q = float(ranked.weak_scores.mean()), float(ranked.strong_scores.mean())
    decile = ranked_curve(ranked, points="routellm")
    full = ranked_curve(ranked, points="all")
    ci = None
    if n_bootstrap:
        ci, _ = bootstrap_apgr(ranked, rule="routellm", n_bootstrap=n_bootstrap, seed=seed,
                               level=level)
    return RouterMetrics(
        name=name,
        apgr=apgr(decile, weak_q, strong_q),
        apgr_all=apgr(full, weak_q, strong_q),
        cpt=_cpt_dict(full, weak_q, strong_q),
        cpt_routellm=_cpt_dict(decile, weak_q, strong_q),
        curve=full.at_rates(np.linspace(0, 1, grid), ranked.n).to_records(weak_q, strong_q),
        curve_routellm=decile.to_records(weak_q, strong_q),
        apgr_ci=ci,
    )


def random_router_apgr(strong_scores: np.ndarray, weak_scores: np.ndarray, *, seeds: Sequence[int]
                       = tuple(range(10)), rule: str = "routellm") -> np.ndarray:
    """APGR of uniformly random probabilities, one value per seed."""
    out = []
    for s in seeds:
        probs = np.random.default_rng(s).random(len(strong_scores))
        ranked = RankedOutcomes(strong_scores, weak_scores, probs)
        out.append(apgr(ranked_curve(ranked, points=rule), float(np.mean(weak_scores)),
                        float(np.mean(strong_scores))))
    return np.array(out)


def random_metrics(strong_scores: np.ndarray, weak_scores: np.ndarray, *, n_seeds: int = 10,
                   grid: int = 101) -> RouterMetrics:
    """The random router: mean over ``n_seeds`` seeded random probability vectors.

    In expectation its curve is the straight line from (0, weak) to (1, strong), so its APGR
    is 0.5 and CPT(x%) = x%; ``curve`` holds that expected line, the APGR and CPT fields the
    seeded means (``apgr_std`` their spread).
    """
    if n_seeds < 1:
        raise ConfigError(f"The 'n_seeds' parameter of random_metrics must be >= 1. Got {n_seeds}.")
    s = np.asarray(strong_scores, dtype=np.float64)
    w = np.asarray(weak_scores, dtype=np.float64)
    weak_q, strong_q = float(w.mean()), float(s.mean())
    per_seed = [router_metrics(s, w, np.random.default_rng(seed).random(len(s)), n_bootstrap=0,
                               grid=2) for seed in range(n_seeds)]
    def line(points: int) -> RoutingCurve:
        rates = np.linspace(0.0, 1.0, points)
        return RoutingCurve(rates, weak_q + rates * (strong_q - weak_q), 1.0 - rates)

    apgrs = np.array([m.apgr for m in per_seed])
    return RouterMetrics(
        name=f"random ({n_seeds} seeds)",
        apgr=float(apgrs.mean()),
        apgr_all=float(np.mean([m.apgr_all for m in per_seed])),
        cpt={k: float(np.nanmean([m.cpt[k] for m in per_seed])) for k in per_seed[0].cpt},
        cpt_routellm={k: float(np.nanmean([m.cpt_routellm[k] for m in per_seed]))
                      for k in per_seed[0].cpt_routellm},
        curve=line(grid).to_records(weak_q, strong_q),
        curve_routellm=line(11).to_records(weak_q, strong_q),
        apgr_std=float(apgrs.std(ddof=1)) if n_seeds > 1 else 0.0,
        n_seeds=n_seeds,
        extra={"apgr_expected": 0.5},
    )


def oracle_metrics(strong_scores: np.ndarray, weak_scores: np.ndarray, *, grid: int = 101
                   ) -> RouterMetrics:
    """The oracle router (``oracle_probs``): the best curve any router can reach."""
    return router_metrics(strong_scores, weak_scores, oracle_probs(strong_scores, weak_scores),
                          name="oracle", grid=grid, n_bootstrap=0)
