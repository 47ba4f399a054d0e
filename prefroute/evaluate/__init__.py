"""Routing quality on stored benchmark outcomes (RouteLLM's PGR / APGR / CPT metrics).

``evaluate_router`` scores a router (or an array of probabilities) on MT-Bench, MMLU, GSM8K
or any outcome table; ``protocols`` trains routers the documented ways before scoring;
``plots`` draws the curves.
"""

from prefroute._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (import stays cheap)
_EXPORTS = {
    "knn_probs": "prefroute.evaluate.baselines",
    "prompt_length_probs": "prefroute.evaluate.baselines",
    "strong_win_labels": "prefroute.evaluate.baselines",
    "ROUTELLM_BENCHMARKS": "prefroute.evaluate.benchmarks",
    "EvalResult": "prefroute.evaluate.benchmarks",
    "EvalSet": "prefroute.evaluate.benchmarks",
    "evaluate_router": "prefroute.evaluate.benchmarks",
    "prepare_eval_set": "prefroute.evaluate.benchmarks",
    "results_markdown": "prefroute.evaluate.benchmarks",
    "RankedOutcomes": "prefroute.evaluate.curves",
    "RoutingCurve": "prefroute.evaluate.curves",
    "routing_curve": "prefroute.evaluate.curves",
    "CPT_LEVELS": "prefroute.evaluate.metrics",
    "RouterMetrics": "prefroute.evaluate.metrics",
    "apgr": "prefroute.evaluate.metrics",
    "bootstrap_apgr": "prefroute.evaluate.metrics",
    "cpt": "prefroute.evaluate.metrics",
    "oracle_metrics": "prefroute.evaluate.metrics",
    "oracle_probs": "prefroute.evaluate.metrics",
    "pgr": "prefroute.evaluate.metrics",
    "random_metrics": "prefroute.evaluate.metrics",
    "random_router_apgr": "prefroute.evaluate.metrics",
    "router_metrics": "prefroute.evaluate.metrics",
    "plot_routing_curves": "prefroute.evaluate.plots",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
