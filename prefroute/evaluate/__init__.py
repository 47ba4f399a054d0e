"""Routing quality on stored benchmark outcomes (RouteLLM's PGR / APGR / CPT metrics).

``evaluate_router`` scores a router (or an array of probabilities) on MT-Bench, MMLU, GSM8K
or any outcome table; ``protocols`` trains routers the documented ways before scoring;
``plots`` draws the curves.
"""

from prefroute.evaluate.baselines import knn_probs, prompt_length_probs, strong_win_labels
from prefroute.evaluate.benchmarks import (
    ROUTELLM_BENCHMARKS,
    EvalResult,
    EvalSet,
    evaluate_router,
    prepare_eval_set,
    results_markdown,
)
from prefroute.evaluate.curves import RankedOutcomes, RoutingCurve, routing_curve
from prefroute.evaluate.metrics import (
    CPT_LEVELS,
    RouterMetrics,
    apgr,
    bootstrap_apgr,
    cpt,
    oracle_metrics,
    oracle_probs,
    pgr,
    random_metrics,
    random_router_apgr,
    router_metrics,
)
from prefroute.evaluate.plots import plot_routing_curves

__all__ = [
    "CPT_LEVELS",
    "ROUTELLM_BENCHMARKS",
    "EvalResult",
    "EvalSet",
    "RankedOutcomes",
    "RouterMetrics",
    "RoutingCurve",
    "apgr",
    "bootstrap_apgr",
    "cpt",
    "evaluate_router",
    "knn_probs",
    "oracle_metrics",
    "oracle_probs",
    "pgr",
    "plot_routing_curves",
    "prepare_eval_set",
    "prompt_length_probs",
    "random_metrics",
    "random_router_apgr",
    "results_markdown",
    "router_metrics",
    "routing_curve",
    "strong_win_labels",
]
