"""Paired bootstrap of the APGR difference between two routers on the same prompts.

Two routers scored on one benchmark share its prompts, so their APGRs are correlated: a
resample that happens to draw hard prompts lowers both. Resampling the prompts *once* and
scoring both routers on the same resample gives the distribution of the difference itself,
whose CI is far narrower than the two separate CIs suggest. A difference is called
significant only when its CI excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from prefroute.errors import ConfigError, check_choice, check_int, check_range
from prefroute.evaluate.curves import RULES, RankedOutcomes, ranked_curve
from prefroute.evaluate.metrics import apgr, apgr_resampled


@dataclass(frozen=True)
class PairedDifference:
    """APGR(a) - APGR(b) on one set of prompts.

    Attributes
    ----------
    apgr_a, apgr_b: each router's APGR on all prompts; diff: ``apgr_a - apgr_b``.
    ci: percentile CI of the difference over paired resamples; p_value: two-sided bootstrap
    p-value (twice the smaller share of resampled differences on either side of 0).
    significant: the CI excludes 0. n_prompts, n_bootstrap, level, rule: the settings.
    samples: the resampled differences (for plots; left out of ``to_dict``).
    """

    apgr_a: float
    apgr_b: float
    diff: float
    ci: tuple[float, float]
    p_value: float
    significant: bool
    n_prompts: int
    n_bootstrap: int
    level: float
    rule: str
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("samples")
        out["ci"] = list(self.ci)
        return out

    def __str__(self) -> str:
        return (f"{self.diff:+.3f} [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}]"
                f"{' *' if self.significant else ''}")


def paired_bootstrap_apgr_diff(strong_scores: np.ndarray, weak_scores: np.ndarray,
                               probs_a: np.ndarray, probs_b: np.ndarray, *,
                               rule: str = "routellm", n_bootstrap: int = 1000, seed: int = 0,
                               level: float = 0.95, chunk: int = 100) -> PairedDifference:
    """Paired percentile bootstrap of APGR(probs_a) - APGR(probs_b).

    Each resample draws the prompts with replacement once and scores both routers on it.
    Resamples where the weak and strong qualities tie (APGR undefined) are left out.

    Parameters
    ----------
    strong_scores, weak_scores: per-prompt quality of each model.
    probs_a, probs_b: the two routers' P(strong wins) for the same prompts, same order.
    rule: ``"routellm"`` (decile thresholds, the headline APGR) or ``"all"``.
    """
    check_choice("rule", "paired_bootstrap_apgr_diff", rule, RULES)
    check_int("n_bootstrap", "paired_bootstrap_apgr_diff", n_bootstrap, low=1)
    check_int("chunk", "paired_bootstrap_apgr_diff", chunk, low=1)
    check_range("level", "paired_bootstrap_apgr_diff", level, low=0.0, high=1.0,
                low_inclusive=False, high_inclusive=False)
    ranked_a = RankedOutcomes(strong_scores, weak_scores, probs_a)
    ranked_b = RankedOutcomes(strong_scores, weak_scores, probs_b)
    if ranked_a.n != ranked_b.n:
        raise ConfigError(f"router a has {ranked_a.n} probabilities, router b {ranked_b.n}")
    weak_q = float(ranked_a.weak_scores.mean())
    strong_q = float(ranked_a.strong_scores.mean())
    apgr_a = apgr(ranked_curve(ranked_a, points=rule), weak_q, strong_q)
    apgr_b = apgr(ranked_curve(ranked_b, points=rule), weak_q, strong_q)
    rng = np.random.default_rng(seed)
    n = ranked_a.n
    diffs = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draws + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n)
        counts = counts.reshape(b, n)
        diffs[start : start + b] = (apgr_resampled(ranked_a, counts, rule)
                                    - apgr_resampled(ranked_b, counts, rule))
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        raise ConfigError("every bootstrap resample had equal weak and strong quality")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = (float(v) for v in np.percentile(diffs, [tail, 100.0 - tail]))
    p_value = float(min(1.0, 2.0 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    return PairedDifference(
        apgr_a=apgr_a, apgr_b=apgr_b, diff=apgr_a - apgr_b, ci=(low, high), p_value=p_value,
        significant=bool(low > 0 or high < 0), n_prompts=n, n_bootstrap=n_bootstrap,
        samples=diffs,
        level=level, rule=rule,
    )
