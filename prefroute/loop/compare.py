"""Promote safely: two routers on the same prompts, with a paired bootstrap CI of the APGR gain.

Both routers rank the same evaluation prompts; each bootstrap resample draws one multiset of
prompts and scores BOTH routers on it, so the noise that the prompts share cancels in the
difference (a paired test: far tighter than comparing two separate CIs). The resampling is
the vectorised count-matrix bootstrap of :mod:`prefroute.evaluate.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prefroute.data.tabular import read_records
from prefroute.errors import ConfigError, DataError, check_range
from prefroute.evaluate.curves import RULES, RankedOutcomes, ranked_curve
from prefroute.evaluate.metrics import apgr, apgr_resampled

VERDICTS = ("better", "worse", "no significant difference")


@dataclass
class Comparison:
    """OLD vs NEW on one prompt set: APGRs, the difference NEW - OLD, its paired CI, a verdict.

    ``verdict`` is ``"worse"`` when the whole CI lies below 0, ``"better"`` when above 0.
    """

    benchmark: str
    n_prompts: int
    old_apgr: float
    new_apgr: float
    difference: float
    ci: tuple[float, float]
    level: float
    n_bootstrap: int
    verdict: str

    @property
    def new_is_worse(self) -> bool:
        return self.verdict == "worse"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci)
        return out

    def lines(self) -> list[str]:
        pct = round(100 * self.level)
        return [
            f"{self.benchmark}: {self.n_prompts:,} prompts",
            f"  OLD APGR {self.old_apgr:.4f}   NEW APGR {self.new_apgr:.4f}",
            f"  NEW - OLD = {self.difference:+.4f}  ({pct}% paired bootstrap CI "
            f"[{self.ci[0]:+.4f}, {self.ci[1]:+.4f}], {self.n_bootstrap} resamples)",
            "  verdict: " + (f"NEW is {self.verdict} than OLD"
                             if self.verdict in ("better", "worse") else self.verdict),
        ]


def paired_apgr_difference(
    strong_scores: np.ndarray,
    weak_scores: np.ndarray,
    old_probs: np.ndarray,
    new_probs: np.ndarray,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    rule: str = "routellm",
    chunk: int = 100,
) -> tuple[float, float, tuple[float, float], np.ndarray]:
    """(old APGR, new APGR, percentile CI of new - old, the resampled differences).

    Resamples whose weak and strong qualities tie (APGR undefined) are left out.
    """
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {list(RULES)}, got {rule!r}")
    if n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    check_range("level", "paired_apgr_difference", level, low=0.0, high=1.0,
                low_inclusive=False, high_inclusive=False)
    old = RankedOutcomes(strong_scores, weak_scores, old_probs)
    new = RankedOutcomes(strong_scores, weak_scores, new_probs)
    weak_q, strong_q = float(old.weak_scores.mean()), float(old.strong_scores.mean())
    if weak_q == strong_q:
        raise DataError(f"the strong and weak scores have the same mean ({strong_q:.4g}) on "
                        "these prompts: APGR (the share of the gap recovered) is undefined")
    old_apgr = apgr(ranked_curve(old, points=rule), weak_q, strong_q)
    new_apgr = apgr(ranked_curve(new, points=rule), weak_q, strong_q)
    rng = np.random.default_rng(seed)
    n = old.n
    samples = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draws + (np.arange(b) * n)[:, None]).ravel(),
                             minlength=b * n).reshape(b, n)
        samples[start:start + b] = (apgr_resampled(new, counts, rule)
                                    - apgr_resampled(old, counts, rule))
    if np.isnan(samples).all():
        raise ConfigError("every resample has equal weak and strong quality: APGR is undefined")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return old_apgr, new_apgr, (float(low), float(high)), samples


def compare_probabilities(
    benchmark: str,
    strong_scores: np.ndarray,
    weak_scores: np.ndarray,
    old_probs: np.ndarray,
    new_probs: np.ndarray,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """The :class:`Comparison` of two routers' probabilities on the same prompts."""
    old_apgr, new_apgr, ci, _ = paired_apgr_difference(
        strong_scores, weak_scores, old_probs, new_probs, n_bootstrap=n_bootstrap, seed=seed,
        level=level)
    verdict = "worse" if ci[1] < 0 else "better" if ci[0] > 0 else "no significant difference"
    return Comparison(benchmark, len(strong_scores), old_apgr, new_apgr, new_apgr - old_apgr,
                      ci, level, n_bootstrap, verdict)


def read_outcomes_file(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Prompts and per-prompt strong and weak scores from a JSONL / CSV / Parquet file.

    Each row needs ``prompt`` (the routing text), ``strong_score`` and ``weak_score`` (finite
    numbers: 0/1 correctness, a judge score, a user rating).
    """
    rows = read_records(path)
    if not rows:
        raise DataError("no rows", file=str(path))
    prompts: list[str] = []
    scores = np.empty((len(rows), 2))
    for i, row in enumerate(rows, start=1):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("missing or empty prompt", file=str(path), row=i, field="prompt")
        prompts.append(prompt)
        for j, name in enumerate(("strong_score", "weak_score")):
            value = row.get(name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if isinstance(value, bool) or not np.isfinite(number):
                raise DataError(f"expected a finite number, got {value!r}", file=str(path),
                                row=i, field=name)
            scores[i - 1, j] = number
    return prompts, scores[:, 0], scores[:, 1]


def probabilities(router: object, prompts: Sequence[str]) -> np.ndarray:
    """P(strong wins) of a Router for the prompts."""
    return np.asarray(router.strong_win_prob(list(prompts)), dtype=np.float64)
