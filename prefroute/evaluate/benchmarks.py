"""Evaluate a router on stored benchmark outcomes: no model is called.

For each evaluation prompt the table says how the strong and the weak model did, so the
quality of routing at every strong-call rate follows from the router's ``strong_win_prob``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.data.decontamination import find_contamination
from prefroute.data.outcomes import (
    ROUTELLM_STRONG,
    ROUTELLM_WEAK,
    OutcomeTable,
    load_contaminated_prompts,
    load_outcomes,
)
from prefroute.embed.base import Embedder
from prefroute.errors import ConfigError, check_range
from prefroute.evaluate.metrics import RouterMetrics, oracle_metrics, random_metrics, router_metrics
from prefroute.io import atomic_write_text

ROUTELLM_BENCHMARKS = ("mt-bench", "mmlu", "gsm8k")

# a Router, a WinPredictor, a callable prompts -> probabilities, or an array of probabilities
RouterLike = Any


@dataclass
class EvalSet:
    """The prompts of a benchmark that an evaluation keeps, with the pair's scores.

    rows: indices of the kept prompts in the full outcome table; dropped: how many prompts
    each filter removed; contaminated: the (eval prompt, nearest training prompt, cosine)
    pairs found by embedding decontamination.
    """

    benchmark: str
    strong_model: str
    weak_model: str
    n_total: int
    rows: np.ndarray
    prompts: list[str]
    strong_scores: np.ndarray
    weak_scores: np.ndarray
    dropped: dict[str, int]
    contaminated: list[dict] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def _routellm_contaminated_mask(table: OutcomeTable, data_dir: str | Path) -> np.ndarray:
    """RouteLLM's listed contaminated prompts (MT-Bench: a question goes if either turn is)."""
    listed = load_contaminated_prompts(data_dir, table.name)
    if not listed:
        return np.zeros(len(table), dtype=bool)
    turns = table.meta.get("turns")
    if turns is not None:
        return np.array([any(t in listed for t in ts) for ts in turns], dtype=bool)
    return np.array([p in listed for p in table.prompts], dtype=bool)


def default_pair(table: OutcomeTable) -> tuple[str, str]:
    if ROUTELLM_STRONG in table.models and ROUTELLM_WEAK in table.models:
        return ROUTELLM_STRONG, ROUTELLM_WEAK
    raise ConfigError(
        f"{table.name} has no default strong/weak pair: pass strong_model and weak_model "
        f"(models: {table.models[:12]}{'...' if len(table.models) > 12 else ''})"
    )


def prepare_eval_set(
    benchmark: str | OutcomeTable,
    data_dir: str | Path | None = None,
    *,
    strong_model: str | None = None,
    weak_model: str | None = None,
    train_prompts: Sequence[str] | None = None,
    embedder: str | dict | Embedder = "wordllama",
    decontaminate: bool = True,
    contamination_threshold: float = 0.95,
    exclude_routellm_contaminated: bool = True,
    train_fingerprints: np.ndarray | None = None,
) -> EvalSet:
    """Load a benchmark and drop the prompts an honest evaluation must not use.

    Filters, in order, each counted: prompts missing a score for either model; RouteLLM's
    listed contaminated prompts (``exclude_routellm_contaminated``); prompts whose wordllama
    (or ``embedder``) cosine to some prompt in ``train_prompts`` is >= the threshold, as the
    RouteLLM paper does (``decontaminate``; skipped when ``train_prompts`` is None).
    """
    if isinstance(benchmark, OutcomeTable):
        table = benchmark
    else:
        if data_dir is None:
            raise ConfigError(f"data_dir is needed to load benchmark {benchmark!r}")
        table = load_outcomes(benchmark, data_dir)
    check_range("contamination_threshold", "prepare_eval_set", contamination_threshold, low=0.0,
                high=1.0)
    if strong_model is None or weak_model is None:
        default_strong, default_weak = default_pair(table)
        strong_model = strong_model or default_strong
        weak_model = weak_model or default_weak
    if strong_model == weak_model:
        raise ConfigError("strong_model and weak_model must differ")
    strong_all, weak_all = table.column(strong_model), table.column(weak_model)
    keep = ~(np.isnan(strong_all) | np.isnan(weak_all))
    dropped = {"missing_scores": int((~keep).sum())}
    if exclude_routellm_contaminated and data_dir is not None:
        listed = _routellm_contaminated_mask(table, data_dir) & keep
        dropped["routellm_contaminated"] = int(listed.sum())
        keep &= ~listed
    if decontaminate and train_fingerprints is not None and len(train_fingerprints):
        from prefroute.data.fingerprints import contains

        rows = np.flatnonzero(keep)
        seen = contains(train_fingerprints, [table.prompts[i] for i in rows])
        dropped["training_prompts"] = int(seen.sum())
        keep[rows[seen]] = False
    contaminated: list[dict] = []
    if decontaminate and train_prompts is not None and len(train_prompts) > 0:
        rows = np.flatnonzero(keep)
        eval_prompts = [table.prompts[i] for i in rows]
        unique_train = sorted(set(train_prompts))
        # eval prompts as queries: each one's nearest training prompt decides
        report = find_contamination(eval_prompts, unique_train, embedder=embedder,
                                    threshold=contamination_threshold)
        contaminated = [
            {"eval_prompt": eval_prompts[e], "train_prompt": unique_train[t], "cosine": float(c)}
            for e, t, c in zip(report.train_rows, report.eval_rows, report.similarity, strict=True)
        ]
        keep[rows[report.train_rows]] = False
        dropped["embedding_contaminated"] = len(report)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ConfigError(f"{table.name}: no prompts left to evaluate after filtering ({dropped})")
    if any(dropped.values()):
        logger.info("%s: evaluating %d of %d prompts; dropped %s", table.name, len(rows),
                    len(table), dropped)
    return EvalSet(
        benchmark=table.name,
        strong_model=strong_model,
        weak_model=weak_model,
        n_total=len(table),
        rows=rows,
        prompts=[table.prompts[i] for i in rows],
        strong_scores=strong_all[rows],
        weak_scores=weak_all[rows],
        dropped=dropped,
        contaminated=contaminated,
    )


def router_probabilities(router_or_probs: RouterLike, eval_set: EvalSet) -> np.ndarray:
    """P(strong wins) of the kept prompts from a Router, a WinPredictor, a callable or an array.

    An array must hold one probability per prompt of the *full* outcome table (its row
    order), so cross-fitted probabilities line up whatever the filters drop.
    """
    if hasattr(router_or_probs, "strong_win_prob"):
        probs = router_or_probs.strong_win_prob(eval_set.prompts)
    elif hasattr(router_or_probs, "predict_proba"):
        probs = router_or_probs.predict_proba(eval_set.prompts)
    elif callable(router_or_probs):
        probs = router_or_probs(eval_set.prompts)
    else:
        full = np.asarray(router_or_probs, dtype=np.float64)
        if full.ndim != 1 or len(full) != eval_set.n_total:
            raise ConfigError(
                f"a probability array must have one value per prompt of {eval_set.benchmark} "
                f"({eval_set.n_total}); got shape {full.shape}"
            )
        probs = full[eval_set.rows]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(eval_set.prompts),):
        raise ConfigError(
            f"the router returned shape {probs.shape} for {len(eval_set.prompts)} prompts"
        )
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).sum())
        raise ConfigError(f"the router returned {bad} NaN/inf probabilities")
    return probs


def _router_name(router_or_probs: RouterLike) -> str:
    value = getattr(router_or_probs, "router_type", None)
    return value if isinstance(value, str) else "router"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def format_apgr(metrics: RouterMetrics) -> str:
    """APGR with an interval: the bootstrap 95% CI, a seed spread labelled as one, or exact."""
    text = f"{metrics.apgr:.3f}"
    if metrics.apgr_ci is not None:
        return text + f" [{metrics.apgr_ci[0]:.3f}, {metrics.apgr_ci[1]:.3f}]"
    if metrics.apgr_std is not None:
        low, high = metrics.apgr - metrics.apgr_std, metrics.apgr + metrics.apgr_std
        return text + f" [{low:.3f}, {high:.3f}] seed spread (±1 sd, {metrics.n_seeds} seeds)"
    # the oracle: a deterministic function of the stored outcomes, nothing resampled
    return text + f" [{metrics.apgr:.3f}, {metrics.apgr:.3f}] exact"


def format_cpt(value: float) -> str:
    return "not reached" if value is None or math.isnan(value) else f"{value:.1f}%"


MARKDOWN_HEADER = (
    "| benchmark | router | n | APGR [95% CI or seed spread] | APGR (all rates) "
    "| CPT(20%) | CPT(50%) | CPT(80%) |\n"
    "|---|---|---:|---|---:|---:|---:|---:|"
)


@dataclass
class EvalResult:
    """A router's routing quality on one benchmark, beside the random and oracle routers.

    Quality is the benchmark's own scale (accuracy in [0, 1], or MT-Bench's 1-10 score).
    ``n_dropped`` sums ``dropped`` (missing scores, RouteLLM-listed and embedding-found
    contamination).
    """

    benchmark: str
    strong_model: str
    weak_model: str
    n_prompts: int
    n_dropped: int
    dropped: dict[str, int]
    weak_quality: float
    strong_quality: float
    router: RouterMetrics
    random: RouterMetrics
    oracle: RouterMetrics
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.router.name

    @property
    def apgr(self) -> float:
        return self.router.apgr

    @property
    def apgr_ci(self) -> tuple[float, float] | None:
        return self.router.apgr_ci

    @property
    def cpt(self) -> dict[str, float]:
        return self.router.cpt

    @property
    def curve(self) -> list[dict]:
        return self.router.curve

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (NaN -> null)."""
        return _json_safe({
            "benchmark": self.benchmark,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "n_prompts": self.n_prompts,
            "n_dropped": self.n_dropped,
            "dropped": self.dropped,
            "weak_quality": self.weak_quality,
            "strong_quality": self.strong_quality,
            "router": self.router.to_dict(),
            "random": self.random.to_dict(),
            "oracle": self.oracle.to_dict(),
            "info": self.info,
        })

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def markdown_rows(self, *, references: bool = True) -> list[str]:
        rows = []
        entries = [self.router] + ([self.random, self.oracle] if references else [])
        for m in entries:
            rows.append(
                f"| {self.benchmark} | {m.name} | {self.n_prompts} | {format_apgr(m)} | "
                f"{m.apgr_all:.3f} | {format_cpt(m.cpt['20'])} | {format_cpt(m.cpt['50'])} | "
                f"{format_cpt(m.cpt['80'])} |"
            )
        return rows

    def to_markdown(self, *, references: bool = True) -> str:
        """A markdown table: this router, then the random and oracle references."""
        return "\n".join([MARKDOWN_HEADER, *self.markdown_rows(references=references)])


def results_markdown(results: Sequence[EvalResult]) -> str:
    """One table: each router's row, then random and oracle once per benchmark."""
    lines = [MARKDOWN_HEADER]
    seen: set[str] = set()
    for r in results:
        lines += r.markdown_rows(references=False)
    for r in results:
        if r.benchmark not in seen:
            seen.add(r.benchmark)
            lines += r.markdown_rows(references=True)[1:]
    return "\n".join(lines)


def evaluate_router(
    router_or_probs: RouterLike,
    benchmark: str | OutcomeTable,
    data_dir: str | Path | None = None,
    *,
    strong_model: str | None = None,
    weak_model: str | None = None,
    name: str | None = None,
    train_prompts: Sequence[str] | None = None,
    embedder: str | dict | Embedder = "wordllama",
    decontaminate: bool = True,
    contamination_threshold: float = 0.95,
    exclude_routellm_contaminated: bool = True,
    grid: int = 101,
    n_bootstrap: int = 1000,
    n_random_seeds: int = 10,
    seed: int = 0,
    eval_set: EvalSet | None = None,
) -> EvalResult:
    """Routing quality of a router on a stored benchmark (RouteLLM's metrics).

    Parameters
    ----------
    router_or_probs: a ``Router``, a fitted ``WinPredictor``, a callable prompts -> P(strong
        wins), or an array with one probability per prompt of the full outcome table.
    benchmark: ``"mt-bench"``, ``"mmlu"``, ``"gsm8k"`` (RouteLLM's stored results), any other
        ``load_outcomes`` name (``"mmlu_pro"``, ``"routerbench"``) or an ``OutcomeTable``; for
        tables without RouteLLM's pair give ``strong_model`` and ``weak_model``.
    train_prompts: the router's training prompts; eval prompts within
        ``contamination_threshold`` cosine of one are dropped (``decontaminate``).
    exclude_routellm_contaminated: drop the prompts RouteLLM lists as contaminated (its
        published numbers exclude them).
    grid: number of evenly spaced call rates in the stored curve.
    n_bootstrap: resamples for the APGR CI (0: none); ``seed`` seeds them.
    n_random_seeds: seeds averaged for the random-router reference.
    eval_set: a prepared ``EvalSet`` to reuse (skips loading and filtering).
    """
    if eval_set is None:
        eval_set = prepare_eval_set(
            benchmark, data_dir, strong_model=strong_model, weak_model=weak_model,
            train_prompts=train_prompts, embedder=embedder, decontaminate=decontaminate,
            contamination_threshold=contamination_threshold,
            exclude_routellm_contaminated=exclude_routellm_contaminated,
            train_fingerprints=training_fingerprints(router_or_probs),
        )
    pair_note = pair_mismatch(router_or_probs, eval_set)
    if pair_note:
        logger.warning("%s", pair_note)
    probs = router_probabilities(router_or_probs, eval_set)
    s, w = eval_set.strong_scores, eval_set.weak_scores
    if float(s.mean()) == float(w.mean()):
        raise ConfigError(f"{eval_set.benchmark}: the strong and weak models have the same mean "
                          "quality, so PGR and APGR are undefined")
    metrics = router_metrics(s, w, probs, name=name or _router_name(router_or_probs), grid=grid,
                             n_bootstrap=n_bootstrap, seed=seed)
    return EvalResult(
        benchmark=eval_set.benchmark,
        strong_model=eval_set.strong_model,
        weak_model=eval_set.weak_model,
        n_prompts=len(eval_set.prompts),
        n_dropped=eval_set.n_dropped,
        dropped=dict(eval_set.dropped),
        weak_quality=float(w.mean()),
        strong_quality=float(s.mean()),
        router=metrics,
        random=random_metrics(s, w, n_seeds=n_random_seeds, grid=grid),
        oracle=oracle_metrics(s, w, grid=grid),
        info={"contaminated": eval_set.contaminated[:50],
              "n_contaminated_pairs": len(eval_set.contaminated),
              **({"pair_mismatch": pair_note} if pair_note else {})},
    )


def training_fingerprints(router_or_probs: RouterLike) -> np.ndarray | None:
    """The fingerprints of a router's training prompts (None for arrays and callables)."""
    predictor = getattr(router_or_probs, "predictor", router_or_probs)
    return getattr(predictor, "training_prompt_fingerprints_", None)


def pair_mismatch(router_or_probs: RouterLike, eval_set: EvalSet) -> str | None:
    """A warning text when the evaluated pair is not the router's own pair (else None)."""
    from prefroute.data.aliases import ModelAliases

    strong = getattr(router_or_probs, "strong_model", None)
    weak = getattr(router_or_probs, "weak_model", None)
    if not isinstance(strong, str) or not isinstance(weak, str):
        return None
    aliases = ModelAliases()
    same = (aliases.canonical(strong) == aliases.canonical(eval_set.strong_model)
            and aliases.canonical(weak) == aliases.canonical(eval_set.weak_model))
    if same:
        return None
    note = (f"the router was trained for strong {strong!r} vs weak {weak!r}, but is evaluated "
            f"on {eval_set.strong_model!r} vs {eval_set.weak_model!r}")
    return note

