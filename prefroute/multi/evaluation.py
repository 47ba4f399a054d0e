"""Evaluate N-way routers on a held-out split: every policy, the baselines, AIQ, a markdown table.

Shared by ``prefroute multi eval`` and ``benchmarks/bench_multi.py``. Learned policy settings
(the Prediction policy's tau or forest, Sorted's threshold, the cost policy's lambda) are fitted
on the validation split, never on the test split they are reported on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefroute.data.outcomes import OutcomeTable
from prefroute.errors import ConfigError
from prefroute.multi.data import Split
from prefroute.multi.metrics import (
    CostQualityCurve,
    ModelProfile,
    RoutingResult,
    aiq,
    cost_quality_curve,
    evaluate_choices,
    oracle_choices,
    oracle_gap_closed,
    paired_bootstrap_ci,
    random_result,
    single_model_results,
    upper_bound_choices,
)
from prefroute.multi.policies import (
    argmax_policy,
    cost_aware_policy,
    fit_prediction_policy,
    fit_sorted_threshold,
    random_policy,
    sorted_policy,
)

POLICY_NAMES = ("argmax", "random", "prediction", "prediction-rf", "sorted", "cost")


@dataclass
class EvalData:
    """The held-out outcomes all routers are judged on (validation for fitting policies)."""

    models: list[str]
    scores_val: np.ndarray
    scores_test: np.ndarray
    costs_val: np.ndarray | None
    costs_test: np.ndarray | None
    profile: ModelProfile
    train_accuracy: np.ndarray

    @classmethod
    def from_split(
        cls, table: OutcomeTable, split: Split, profile: ModelProfile | None = None
    ) -> EvalData:
        """Profile default: prices = mean training cost; latency proportional to cost."""
        if profile is None:
            profile = ModelProfile.from_table(table, rows=split.train)
        costs = table.costs
        return cls(
            models=list(table.models),
            scores_val=table.scores[split.val],
            scores_test=table.scores[split.test],
            costs_val=None if costs is None else costs[split.val],
            costs_test=None if costs is None else costs[split.test],
            profile=profile,
            train_accuracy=np.nanmean(table.scores[split.train], axis=0),
        )

    @property
    def has_costs(self) -> bool:
        return self.profile.prices is not None

    @property
    def best_model(self) -> int:
        """The best model on the training split (the Prediction policy's fallback)."""
        return int(np.argmax(self.train_accuracy))


@dataclass
class RouterEvaluation:
    """One router's results under each policy, its cost-quality curve and AIQ."""

    router: str
    results: list[RoutingResult]
    upper_bound: RoutingResult
    curve: CostQualityCurve | None = None
    aiq: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def baseline_results(data: EvalData) -> dict[str, Any]:
    """Oracle, Random (expected) and every single model, on the test split."""
    oracle = evaluate_choices(
        "Oracle",
        oracle_choices(data.scores_test, prompt_costs=data.costs_test, profile=data.profile),
        data.scores_test,
        prompt_costs=data.costs_test,
        profile=data.profile,
    )
    rand = random_result(data.scores_test, prompt_costs=data.costs_test, profile=data.profile)
    singles = single_model_results(
        data.models, data.scores_test, prompt_costs=data.costs_test, profile=data.profile
    )
    return {
        "oracle": oracle,
        "random": rand,
        "singles": singles,
        "best_single": max(singles, key=lambda r: (r.accuracy, -np.nan_to_num(r.cost))),
    }


def shared_cost_range(baselines: dict[str, Any]) -> tuple[float, float] | None:
    """[cheapest, most expensive] single model: the common AIQ range."""
    costs = [r.cost for r in baselines["singles"] if math.isfinite(r.cost)]
    return (min(costs), max(costs)) if costs else None


def choose_lambda(conf_val: np.ndarray, data: EvalData) -> tuple[float, str]:
    """Lambda fitted on validation: the cheapest setting matching the best single model there.

    Target: the validation accuracy of the best single model (on validation). Among the
    swept lambdas reaching it, the one with the lowest validation cost; if none reaches it,
    the lambda with the highest validation accuracy.
    """
    prices = data.profile.prices
    curve = cost_quality_curve(
        conf_val,
        data.scores_val,
        model_costs=prices,
        prompt_costs=data.costs_val,
        profile=data.profile,
    )
    target = float(np.nanmean(data.scores_val, axis=0).max())
    ok = curve.qualities >= target - 1e-12
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmin(curve.costs[ok])])
        return float(
            curve.lambdas[i]
        ), "cheapest lambda matching the best single model on validation"
    i = int(np.argmax(curve.qualities))
    return float(
        curve.lambdas[i]
    ), "most accurate lambda on validation (none matched the best single model)"


def evaluate_router(
    name: str,
    conf_val: np.ndarray,
    conf_test: np.ndarray,
    data: EvalData,
    *,
    policies: Sequence[str] = POLICY_NAMES,
    threshold: float = 0.5,
    top_k: int = 3,
    lam: float | None = None,
    seed: int = 0,
    cost_range: tuple[float, float] | None = None,
) -> RouterEvaluation:
    """Apply each policy to the router's test confidences; fit what needs fitting on validation."""
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ConfigError(f"unknown policies {unknown}; known: {list(POLICY_NAMES)}")
    kw = {"prompt_costs": data.costs_test, "profile": data.profile}
    S = data.scores_test
    results: list[RoutingResult] = []
    settings: dict[str, Any] = {}
    for policy in policies:
        if policy == "argmax":
            choice = argmax_policy(conf_test)
        elif policy == "random":
            choice = random_policy(conf_test, threshold=threshold, top_k=top_k, seed=seed)
            settings["random"] = {"threshold": threshold, "top_k": top_k, "seed": seed}
        elif policy in ("prediction", "prediction-rf"):
            method = "threshold" if policy == "prediction" else "forest"
            fitted = fit_prediction_policy(
                conf_val, data.scores_val, fallback=data.best_model, method=method, seed=seed
            )
            choice = fitted(conf_test)
            settings[policy] = {
                "fallback": data.models[data.best_model],
                "method": fitted.method,
                "tau": None if fitted.method == "forest" else fitted.threshold,
            }
        elif policy == "sorted":
            order = np.argsort(-data.train_accuracy, kind="stable")
            tau = fit_sorted_threshold(conf_val, data.scores_val, order=order)
            choice = sorted_policy(conf_test, order=order, threshold=tau)
            settings["sorted"] = {"threshold": tau, "order": "training accuracy, best first"}
        else:  # cost
            if not data.has_costs:
                continue  # no prices: the cost policy is undefined; the table says n/a
            if lam is None:
                lam_used, why = choose_lambda(conf_val, data)
            else:
                lam_used, why = float(lam), "given"
            choice = cost_aware_policy(conf_test, model_costs=data.profile.prices, lam=lam_used)
            settings["cost"] = {"lambda": lam_used, "chosen": why}
        result = evaluate_choices(policy, choice, S, **kw)
        results.append(result)
    upper = evaluate_choices("upper bound", upper_bound_choices(conf_test, S, **kw), S, **kw)
    curve = score = None
    if data.has_costs:
        curve = cost_quality_curve(conf_test, S, model_costs=data.profile.prices, **kw)
        score = aiq(curve.costs, curve.qualities, cost_range=cost_range)
    return RouterEvaluation(name, results, upper, curve, score, settings)


def savings_summary(evaluation: RouterEvaluation, baselines: dict[str, Any]) -> dict[str, Any]:
    """Does the router match the best single model more cheaply? And the oracle gap it closes."""
    best = baselines["best_single"]
    oracle = baselines["oracle"]
    top = max(evaluation.results, key=lambda r: r.accuracy) if evaluation.results else None
    out: dict[str, Any] = {
        "router": evaluation.router,
        "best_single": best.name,
        "best_single_accuracy": best.accuracy,
        "best_single_cost": best.cost,
        "best_policy": None if top is None else top.name,
        "best_policy_accuracy": None if top is None else top.accuracy,
        "oracle_gap_closed": None
        if top is None
        else oracle_gap_closed(top.accuracy, best.accuracy, oracle.accuracy),
    }
    if top is not None and top.per_prompt is not None and best.per_prompt is not None:
        diff, low, high = paired_bootstrap_ci(top.per_prompt, best.per_prompt)
        out["diff_vs_best_single"] = diff
        out["diff_ci95"] = [low, high]
    if evaluation.curve is not None:
        # every configuration the router was run in: each lambda of the sweep, each policy
        c = evaluation.curve
        configs = [
            (f"cost lambda={lam:.4g}", cost, q)
            for lam, cost, q in zip(c.lambdas, c.costs, c.qualities)
        ]
        configs += [
            (r.name, r.cost, r.accuracy) for r in evaluation.results if math.isfinite(r.cost)
        ]
        matching = [x for x in configs if x[2] >= best.accuracy - 1e-12]
        top_acc = max(q for _, _, q in configs)
        out["max_accuracy"] = top_acc
        out["curve_max_accuracy"] = float(c.qualities.max())
        out["accuracy_gap_to_best_single"] = float(best.accuracy - top_acc)
        if matching:
            name, cost, q = min(matching, key=lambda x: (x[1], -x[2]))
            out["matching_config"] = name
            out["matching_accuracy"] = q
            out["matching_cost"] = cost
            out["matches_best_single_cheaper"] = bool(cost < best.cost)
            # a match at the same or a higher cost is no saving: None, never a "0% saving"
            out["saving_vs_best_single"] = (
                float(1.0 - cost / best.cost) if best.cost > 0 and cost < best.cost else None
            )
        else:
            out["matching_config"] = out["matching_cost"] = None
            out["matches_best_single_cheaper"] = False
    return out


def _fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def markdown_table(
    baselines: dict[str, Any], evaluations: Sequence[RouterEvaluation], *, latency_unit: str = "s"
) -> str:
    """The paper's table: Oracle, Random, each LLM, every router x policy (+ upper bound, AIQ)."""
    lines = [
        f"| Router | Policy | Acc (%) | Cost ($/1k prompts) | Latency ({latency_unit}) | AIQ |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def row(router: str, r: RoutingResult, aiq_value: float | None = None) -> None:
        lines.append(
            f"| {router} | {r.name if router != r.name else ''} | {_fmt(r.accuracy, 100)} | "
            f"{_fmt(r.cost, 1000, 4)} | {_fmt(r.latency, 1, 3)} | "
            f"{'' if aiq_value is None else _fmt(aiq_value, 100)} |"
        )

    row("Oracle", baselines["oracle"])
    row("Random", baselines["random"])
    for r in sorted(baselines["singles"], key=lambda r: -r.accuracy):
        row(r.name, r)
    for ev in evaluations:
        row(ev.router, ev.upper_bound)
        for i, r in enumerate(ev.results):
            row(ev.router, r, ev.aiq if i == 0 else None)
    return "\n".join(lines)
