"""RouteLLM's router names and the prefroute router types they stand for.

RouteLLM serves ``router-<name>-<threshold>`` with the names below; prefroute calls the
similarity-weighted ranking router ``sw_bt``. ``routellm_model_alias`` rewrites a request's
``model`` before the normal parsing, so ``router-sw_ranking-0.116`` reaches the served
``sw_bt`` router. A served router whose name is itself a RouteLLM name always wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROUTELLM_ROUTER_TYPES: dict[str, str] = {
    "mf": "mf",
    "sw_ranking": "sw_bt",
    "bert": "bert",
    "causal_llm": "causal_llm",
    "random": "random",
}
_PREFIX = "router-"


def prefroute_router_type(routellm_name: str) -> str | None:
    """The prefroute router type of a RouteLLM router name (None for an unknown name)."""
    return ROUTELLM_ROUTER_TYPES.get(routellm_name)


def _served_name(alias: str, routers: Mapping[str, Any]) -> str | None:
    """The served router an alias means: one named like the prefroute type, else the only
    router of that type (None when there is none or more than one)."""
    if alias in routers or alias not in ROUTELLM_ROUTER_TYPES:
        return None
    router_type = ROUTELLM_ROUTER_TYPES[alias]
    if router_type in routers:
        return router_type
    of_type = [n for n, r in routers.items() if getattr(r, "router_type", None) == router_type]
    return of_type[0] if len(of_type) == 1 else None


def routellm_model_alias(model: Any, routers: Mapping[str, Any]) -> Any:
    """``router-<routellm name>[-<threshold>]`` rewritten to the served router's name.

    Anything else (other names, non-strings) comes back unchanged for the normal parser.
    """
    if not isinstance(model, str) or not model.startswith(_PREFIX):
        return model
    rest = model[len(_PREFIX):]
    alias, sep, threshold = rest.partition("-")
    served = _served_name(alias, routers)
    if served is None:
        return model
    return f"{_PREFIX}{served}{sep}{threshold}"
