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
from prefroute.errors import DataError
from prefroute.evaluate.paired import paired_bootstrap_apgr_diff

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

    Resamples whose weak and strong qualities tie (APGR undefined) are left out; the bootstrap
    itself is ``prefroute.evaluate.paired.paired_bootstrap_apgr_diff``.
    """
    weak_q = float(np.mean(np.asarray(weak_scores, dtype=np.float64)))
    strong_q = float(np.mean(np.asarray(strong_scores, dtype=np.float64)))
    if weak_q == strong_q:
        raise DataError(f"the strong and weak scores have the same mean ({strong_q:.4g}) on "
                        "these prompts: APGR (the share of the gap recovered) is undefined")
    result = paired_bootstrap_apgr_diff(
        strong_scores, weak_scores, new_probs, old_probs, rule=rule, n_bootstrap=n_bootstrap,
        seed=seed, level=level, chunk=chunk,
    )
    return result.apgr_b, result.apgr_a, result.ci, result.samples


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
