"""prefroute as a LiteLLM routing strategy: a ``litellm.Router`` sends each request strong or weak.

A model group holds two deployments, one tagged ``model_info: {prefroute_side: strong}`` and one
``weak``. ``PrefrouteStrategy`` scores the request's last user turn with a prefroute checkpoint
and picks the deployment of the side it chooses. It plugs into LiteLLM three ways:

- **custom routing strategy** (``CustomRoutingStrategyBase``; ``attach`` registers it with
  ``Router.register_plugin``, or ``set_custom_routing_strategy`` on older LiteLLM): sync and
  async calls;
- **deployment hook** (``CustomLogger.async_post_call_success_deployment_hook``): async calls
  get the decision in the response's metadata, ``response._hidden_params["prefroute"]``;
- **routing plugin** (``run(context)``, for ``Router(plugins=[...])`` and the proxy's
  ``router_settings.plugins``): narrows the candidate models to the chosen side.

The decision always lands in the request's ``metadata["prefroute"]``, which LiteLLM passes to
its logging callbacks. Only the weights and threshold come from the checkpoint; deployments,
URLs and keys come from the LiteLLM configuration.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download on import

from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.types.router import CustomRoutingStrategyBase  # noqa: E402

from prefroute.calibrate import threshold_at_rate  # noqa: E402
from prefroute.errors import ConfigError, check_range  # noqa: E402
from prefroute.router import Router, load_router  # noqa: E402
from prefroute.serve.routing import routing_text  # noqa: E402

SIDE_KEY = "prefroute_side"  # the model_info field that tags a deployment strong or weak
SIDES = ("strong", "weak")


class PrefrouteStrategy(CustomRoutingStrategyBase, CustomLogger):
    """Pick the strong or the weak deployment of a model group with a prefroute router.

    Parameters
    ----------
    router: a loaded prefroute Router or a checkpoint folder.
    model_list: the LiteLLM deployments (the ``model_list`` given to ``litellm.Router``);
        needed for the custom-strategy path, not for the routing-plugin path.
    strong_rate: a strong-call percentage, turned into a threshold through the checkpoint's
        calibration (e.g. 30); default: the checkpoint's calibrated threshold.
    threshold: an explicit threshold in [0, 1] instead (give at most one of the two).
    routing_text: "last-user" (default) or "conversation", as in ``prefroute serve``.
    """

    def __init__(
        self,
        router: Router | str | Path,
        model_list: Sequence[Mapping[str, Any]] | None = None,
        *,
        strong_rate: float | None = None,
        threshold: float | None = None,
        routing_text: str = "last-user",
    ) -> None:
        CustomLogger.__init__(self)
        self.router = router if isinstance(router, Router) else load_router(router)
        if strong_rate is not None and threshold is not None:
            raise ConfigError("PrefrouteStrategy: give strong_rate or threshold, not both")
        if strong_rate is not None:
            threshold = threshold_at_rate(self.router.calibration, strong_rate)
        elif threshold is not None:
            check_range("threshold", "PrefrouteStrategy", threshold, low=0.0, high=1.0)
        self.threshold = self.router.threshold if threshold is None else float(threshold)
        self.routing_text = routing_text
        self.groups = _side_deployments(model_list or [])

    # the decision ------------------------------------------------------------------------
    def decide(self, messages: Any) -> dict[str, Any]:
        """The side for one conversation: {side, strong_win_prob, threshold, model}."""
        text = routing_text(messages, self.routing_text)
        prob = float(self.router.strong_win_prob([text])[0])
        side = "strong" if prob >= self.threshold else "weak"
        return {
            "side": side,
            "strong_win_prob": prob,
            "threshold": self.threshold,
            "router": self.router.router_type,
            "model": self.router.strong_model if side == "strong" else self.router.weak_model,
        }

    # custom routing strategy -----------------------------------------------------------
    def get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        group = self.groups.get(model)
        if group is None:
            raise ConfigError(
                f"model group {model!r} has no deployments tagged model_info.{SIDE_KEY} "
                f"strong and weak; tagged groups: {sorted(self.groups)}"
            )
        decision = self.decide(messages)
        if request_kwargs is not None:
            metadata = request_kwargs.get("metadata")
            if not isinstance(metadata, dict):
                metadata = {}
                request_kwargs["metadata"] = metadata
            metadata["prefroute"] = decision
        return dict(group[decision["side"]])

    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        return self.get_available_deployment(
            model, messages, input, specific_deployment, request_kwargs
        )

    # response metadata (async calls) ----------------------------------------------------
    async def async_post_call_success_deployment_hook(
        self, request_data: dict, response: Any, call_type: Any
    ) -> Any:
        metadata = request_data.get("metadata") or {}
        signals = metadata.get("routing_plugin_signals") or {}  # the routing-plugin path
        decision = metadata.get("prefroute") or (
            signals.get("prefroute") if isinstance(signals, dict) else None
        )
        hidden = getattr(response, "_hidden_params", None)
        if not isinstance(decision, dict) or not isinstance(hidden, dict):
            return None
        hidden["prefroute"] = dict(decision)
        return response

    # routing plugin (Router(plugins=[...]), proxy router_settings.plugins) -------------
    async def run(self, context: Any) -> Any:
        """Narrow the candidates to the chosen side's model; publish the decision as a signal.

        A candidate belongs to a side when its name ends with that side's model name in the
        checkpoint (e.g. ``openai/gpt-4-1106-preview``), or is tagged in ``model_list``.
        """
        decision = self.decide(context.structured_messages)
        wanted = self._side_models(decision["side"])
        model = decision["model"]
        chosen = [
            m
            for m in context.candidate_models
            if m in wanted or m == model or m.endswith("/" + model)
        ]
        if not chosen:  # never fall back silently to LiteLLM's own pick
            raise ConfigError(
                f"prefroute chose the {decision['side']} model {model!r}, but no candidate "
                f"deployment matches it: {list(context.candidate_models)}"
            )
        context.candidate_models = chosen
        context.signals["prefroute"] = decision
        return context

    def _side_models(self, side: str) -> set[str]:
        return {
            str(group[side]["litellm_params"].get("model"))
            for group in self.groups.values()
            if isinstance(group[side].get("litellm_params"), Mapping)
        }


def _side_deployments(
    model_list: Sequence[Mapping[str, Any]],
) -> dict[str, dict[str, Mapping[str, Any]]]:
    """model group -> {"strong": deployment, "weak": deployment}, from the side tags."""
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    for i, deployment in enumerate(model_list):
        info = deployment.get("model_info") or {}
        side = info.get(SIDE_KEY) if isinstance(info, Mapping) else None
        if side is None:
            continue
        name = deployment.get("model_name")
        if side not in SIDES or not isinstance(name, str):
            raise ConfigError(
                f"model_list[{i}]: model_info.{SIDE_KEY} must be 'strong' or 'weak' and "
                f"model_name a string; got {side!r}, {name!r}"
            )
        group = groups.setdefault(name, {})
        if side in group:
            raise ConfigError(f"model group {name!r} has two {side} deployments")
        group[side] = deployment
    incomplete = sorted(name for name, group in groups.items() if set(group) != set(SIDES))
    if incomplete:
        raise ConfigError(
            f"model groups {incomplete} need one strong and one weak deployment "
            f"(model_info.{SIDE_KEY})"
        )
    return groups


def attach(
    litellm_router: Any,
    router: Router | str | Path,
    model_list: Sequence[Mapping[str, Any]],
    **options: Any,
) -> PrefrouteStrategy:
    """Make ``litellm_router`` route its tagged model groups with a prefroute checkpoint.

    Registers the strategy as the router's custom routing strategy and as a LiteLLM callback
    (for the response metadata of async calls). ``options``: see ``PrefrouteStrategy``.
    """
    strategy = PrefrouteStrategy(router, model_list, **options)
    if not strategy.groups:
        raise ConfigError(
            f"no model group has deployments tagged model_info.{SIDE_KEY}: strong / weak"
        )
    register = getattr(litellm_router, "register_plugin", None)
    if register is None:  # LiteLLM before register_plugin
        register = litellm_router.set_custom_routing_strategy
    register(strategy)
    if strategy not in litellm.callbacks:
        litellm.callbacks.append(strategy)
    return strategy


def detach(strategy: PrefrouteStrategy) -> None:
    """Remove the strategy's LiteLLM callback (the router keeps its strategy)."""
    while strategy in litellm.callbacks:
        litellm.callbacks.remove(strategy)
