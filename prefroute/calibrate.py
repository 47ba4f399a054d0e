"""Turn win probabilities into a threshold: for a strong-model call rate or a cost budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from prefroute.errors import ConfigError, check_range

CHARS_PER_TOKEN = 4.0  # a common rule of thumb for English text with GPT-style tokenizers


def threshold_for_strong_rate(strong_win_prob: np.ndarray, strong_rate: float) -> float:
    """The threshold t such that routing ``p >= t`` to the strong model calls it at ``strong_rate``.

    With n prompts, exactly round(rate * n) of them reach the threshold unless probabilities
    tie at the boundary; the threshold sits halfway between the last strong and the first
    weak probability so small numeric noise does not move the realised rate.
    """
    check_range("strong_rate", "threshold_for_strong_rate", strong_rate, low=0.0, high=1.0)
    p = np.sort(_checked_probs(strong_win_prob))[::-1]
    k = int(round(strong_rate * len(p)))
    if k == 0:
        return float(np.nextafter(p[0], np.inf))
    if k == len(p):
        return float(p[-1])
    if p[k - 1] == p[k]:
        return float(p[k - 1])
    middle = (p[k - 1] + p[k]) / 2.0
    # for neighbouring floats the midpoint rounds onto one of them: keep p[k] out
    return float(middle if middle > p[k] else p[k - 1])


def _checked_probs(strong_win_prob: np.ndarray) -> np.ndarray:
    p = np.asarray(strong_win_prob, dtype=np.float64)
    if p.ndim != 1:
        raise ConfigError(f"strong_win_prob must be a 1-D array; got shape {p.shape}")
    if len(p) == 0:
        raise ConfigError("cannot calibrate on an empty prompt set")
    if not np.isfinite(p).all():
        raise ConfigError(f"strong_win_prob has {int((~np.isfinite(p)).sum())} NaN/inf values")
    return p


@dataclass
class Prices:
    """Prices of the two models: per call, or per 1k prompt / completion tokens.

    Token costs use the prompt length (characters / 4) for input tokens and
    ``expected_output_tokens`` for the answer, since answers are not known when routing.
    """

    strong_per_call: float = 0.0
    weak_per_call: float = 0.0
    strong_per_1k_input: float = 0.0
    strong_per_1k_output: float = 0.0
    weak_per_1k_input: float = 0.0
    weak_per_1k_output: float = 0.0
    expected_output_tokens: float = 256.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check_range(name, "Prices", value, low=0.0)
        if self.strong_total_is_zero():
            raise ConfigError(
                "Prices: the strong model costs nothing; give per-call or per-token prices"
            )

    def strong_total_is_zero(self) -> bool:
        return (
            self.strong_per_call == 0
            and self.strong_per_1k_input == 0
            and self.strong_per_1k_output == 0
        )

    def per_prompt(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Estimated (strong, weak) dollar cost of each prompt."""
        tokens = np.array([len(p) for p in prompts], dtype=np.float64) / CHARS_PER_TOKEN
        out = self.expected_output_tokens
        strong = (
            self.strong_per_call
            + (tokens * self.strong_per_1k_input + out * self.strong_per_1k_output) / 1000
        )
        weak = (
            self.weak_per_call
            + (tokens * self.weak_per_1k_input + out * self.weak_per_1k_output) / 1000
        )
        return strong, weak


@dataclass
class Calibration:
    """A calibrated threshold and what it realises on the calibration prompts."""

    threshold: float
    method: str
    target_strong_rate: float
    realised_strong_rate: float
    n_prompts: int
    cost_per_1k_requests: float | None = None
    budget: dict = field(default_factory=dict)
    # element k: the threshold that sends k% of the calibration prompts to the strong model,
    # so a request can name a rate (router-mf@30) instead of a raw threshold
    rate_thresholds: list[float] = field(default_factory=list)
    # lowest and highest win probability seen on the calibration prompts
    score_range: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_strong_rate(strong_win_prob: np.ndarray, strong_rate: float) -> Calibration:
    """Threshold for a target strong-model call rate, with the realised rate."""
    p = _checked_probs(strong_win_prob)
    t = threshold_for_strong_rate(p, strong_rate)
    return Calibration(
        t,
        "strong_rate",
        strong_rate,
        float((p >= t).mean()),
        len(p),
        rate_thresholds=rate_thresholds(p),
        score_range=[float(p.min()), float(p.max())],
    )


def rate_thresholds(strong_win_prob: np.ndarray, steps: int = 100) -> list[float]:
    """Thresholds for strong-call rates 0, 1/steps, ..., 1 on these probabilities."""
    p = _checked_probs(strong_win_prob)
    return [threshold_for_strong_rate(p, k / steps) for k in range(steps + 1)]


def threshold_at_rate(calibration: dict | None, percent: float) -> float:
    """The threshold that sends ``percent`` % of the calibration prompts to the strong model.

    Between whole percents the threshold is interpolated linearly. Raises ConfigError when
    the calibration holds no rate table (calibrated before prefroute stored one).
    """
    check_range("percent", "threshold_at_rate", percent, low=0.0, high=100.0)
    table = (calibration or {}).get("rate_thresholds") or []
    if len(table) < 2 or not all(isinstance(t, (int, float)) for t in table):
        raise ConfigError(
            "this router's calibration stores no strong-call-rate table; recalibrate it "
            "(prefroute calibrate CHECKPOINT --prompts FILE --strong-rate 0.3) to use rate names"
        )
    position = percent / 100.0 * (len(table) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(table) - 1)
    fraction = position - low
    return float(table[low] + (table[high] - table[low]) * fraction)


def calibrate_budget(
    strong_win_prob: np.ndarray,
    prompts: Sequence[str],
    prices: Prices,
    *,
    per_1k_requests: float | None = None,
    fraction_of_all_strong: float | None = None,
) -> Calibration:
    """The highest strong-call rate whose cost on these prompts stays within the budget.

    The budget is dollars per 1,000 requests, or a fraction of what sending every prompt to
    the strong model would cost. Prompts go strong in order of win probability, so the cost
    of each candidate rate is exact on the calibration set.
    """
    if (per_1k_requests is None) == (fraction_of_all_strong is None):
        raise ConfigError("give exactly one of per_1k_requests or fraction_of_all_strong")
    p = _checked_probs(strong_win_prob)
    if len(p) != len(prompts):
        raise ConfigError(f"{len(p)} probabilities for {len(prompts)} prompts")
    strong_cost, weak_cost = prices.per_prompt(prompts)
    n = len(p)
    order = np.argsort(-p, kind="stable")
    # a threshold sends a whole tie group to strong: only counts at group boundaries exist
    p_desc = p[order]
    realisable = np.r_[True, p_desc[:-1] > p_desc[1:], True]
    # cost of routing the top-k prompts to strong, for k = 0..n, per 1k requests
    totals = weak_cost.sum() + np.concatenate([[0.0], np.cumsum((strong_cost - weak_cost)[order])])
    per_1k = totals / n * 1000.0
    if per_1k_requests is not None:
        check_range("per_1k_requests", "calibrate_budget", per_1k_requests, low=0.0)
        limit, budget = per_1k_requests, {"per_1k_requests": per_1k_requests}
    else:
        check_range("fraction_of_all_strong", "calibrate_budget", fraction_of_all_strong, low=0.0)
        limit = fraction_of_all_strong * strong_cost.sum() / n * 1000.0
        budget = {"fraction_of_all_strong": fraction_of_all_strong}
    affordable = np.flatnonzero((per_1k <= limit + 1e-12) & realisable)
    if len(affordable) == 0:
        raise ConfigError(
            f"the budget ({limit:.4f} $ per 1k requests) is below the all-weak cost "
            f"({per_1k[0]:.4f} $ per 1k requests)"
        )
    k = int(affordable.max())
    rate = k / n
    cal = calibrate_strong_rate(p, rate)
    cal.method = "budget"
    cal.cost_per_1k_requests = float(per_1k[k])
    cal.budget = budget
    return cal
