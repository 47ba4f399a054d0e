"""RouteLLM's ``Controller``, backed by prefroute: change one import line.

    # from routellm.controller import Controller
    from prefroute.compat.routellm import Controller

    client = Controller(routers=["mf"], strong_model="gpt-4-1106-preview",
                        weak_model="anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1",
                        config={"mf": {"checkpoint_path": "runs/mf"}})
    reply = client.chat.completions.create(model="router-mf-0.116", messages=[...])

Same surface as RouteLLM 0.2: ``chat.completions.create`` / ``acreate``, ``completion`` /
``acompletion`` (``router=`` and ``threshold=`` instead of ``model``), ``route``,
``batch_calculate_win_rate``, ``model_counts`` and ``RoutingError``. Upstream calls go
through LiteLLM with ``api_base`` / ``api_key``, as RouteLLM's do, so its model strings
(``anyscale/...``, ``openai/...``) and provider environment variables work unchanged.

What differs, on purpose:

* ``config`` names prefroute checkpoints: ``{"mf": {"checkpoint_path": "runs/mf"}}`` (a
  dict or a YAML file, shaped like RouteLLM's ``config.example.yaml``); ``sw_ranking`` is
  served by a prefroute ``sw_bt`` checkpoint. A ``routellm/...`` hub name, or a local RouteLLM
  checkpoint folder, is converted on load (``prefroute.compat.routellm_import``); offline a
  hub name fails with a message that says how to use a local checkpoint. With no config,
  ``random`` needs no checkpoint and the others must be given.
* The decision is prefroute's (``prefroute.serve.routing``, the server's path): the text
  routed on is the last user turn (RouteLLM: ``messages[-1]`` whatever its role), and a model
  or call with no threshold uses the checkpoint's calibrated threshold instead of raising.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.compat.names import prefroute_router_type
from prefroute.errors import ConfigError
from prefroute.router import Router, load_router
from prefroute.serve.errors import InvalidRequestError
from prefroute.serve.routing import MODEL_PREFIX, ResolvedModel, RouterTable, routing_text
from prefroute.serve.settings import UpstreamSettings

# RouteLLM describes its checkpoints with these keys; a prefroute checkpoint records them
# itself, so they matter only when a RouteLLM checkpoint is converted.
_CHECKPOINT_KEYS = ("checkpoint_path", "path")
_CONVERTER_KEYS = {"strong_model", "weak_model"}


class RoutingError(InvalidRequestError):
    """A bad router name, threshold or model string (RouteLLM's exception, a ValueError)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="routing_error")


def _read_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    path = Path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config {path}: cannot read it as YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of router name -> settings")
    return data


def _checkpoint_of(name: str, settings: Any) -> str | Path | Router | None:
    if isinstance(settings, (str, Path, Router)):
        return settings
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"config[{name!r}] must be a mapping like {{'checkpoint_path': 'runs/{name}'}} "
            f"or a checkpoint path, got {type(settings).__name__}"
        )
    found = [settings[k] for k in _CHECKPOINT_KEYS if k in settings]
    ignored = sorted(set(settings) - set(_CHECKPOINT_KEYS) - _CONVERTER_KEYS)
    if ignored:
        logger.info("config[%r]: %s describe RouteLLM's own checkpoints; a prefroute "
                    "checkpoint records its settings, so they are not used", name, ignored)
    return found[0] if found else None


def _looks_like_prefroute(folder: Path) -> bool:
    import json

    try:
        return "prefroute_version" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_compat_router(
    name: str, settings: Any, strong_model: str, weak_model: str
) -> Router:
    """The prefroute Router behind RouteLLM router ``name`` (see the module doc)."""
    router_type = prefroute_router_type(name)
    if router_type is None:
        raise RoutingError(
            f"Invalid router {name}. RouteLLM's routers are mf, sw_ranking, bert, causal_llm "
            "and random"
        )
    source = _checkpoint_of(name, settings)
    if isinstance(source, Router):
        return source
    if source is None:
        if router_type == "random":
            from prefroute.routers.random_router import RandomRouter

            predictor = RandomRouter(strong_model=strong_model, weak_model=weak_model)
            predictor.fitted_ = True
            return Router(predictor, 0.5)
        hint = ("train one with 'prefroute train --router sw_bt ...'" if router_type == "sw_bt"
                else f"train one with 'prefroute train --router {router_type} ...' or convert "
                "RouteLLM's with 'prefroute import-routellm'")
        raise ConfigError(
            f"router {name!r} needs a prefroute checkpoint: config={{'{name}': "
            f"{{'checkpoint_path': 'PATH'}}}}; {hint}"
        )
    from prefroute.compat.routellm_import import convert_routellm, is_hub_name

    local = Path(str(source)).expanduser()
    if local.is_dir() and _looks_like_prefroute(local):
        router = load_router(local)
    elif router_type in ("sw_bt", "random"):
        raise ConfigError(
            f"config[{name!r}]: {source} is not a prefroute checkpoint, and RouteLLM's {name!r} "
            f"router has no checkpoint to convert; train one with 'prefroute train --router "
            f"{router_type}'"
        )
    elif local.is_dir() or is_hub_name(source):
        options = {k: settings[k] for k in _CONVERTER_KEYS & set(settings or {})} \
            if isinstance(settings, Mapping) else {}
        router = convert_routellm(source, kind=router_type, **options)
    else:
        raise ConfigError(f"config[{name!r}]: checkpoint {source} does not exist")
    if router.router_type != router_type:
        raise ConfigError(
            f"config[{name!r}]: {source} holds a {router.router_type!r} router; RouteLLM's "
            f"{name!r} is prefroute's {router_type!r}"
        )
    return router


class Controller:
    """RouteLLM's Controller: local routing by prefroute, upstream calls through LiteLLM.

    Parameters
    ----------
    routers: RouteLLM router names to load (``mf``, ``sw_ranking``, ``bert``, ``causal_llm``,
        ``random``).
    strong_model, weak_model: LiteLLM model strings the two sides are called with.
    config: router name -> ``{"checkpoint_path": ...}`` (a dict, or a YAML file's path).
    api_base, api_key: passed to every LiteLLM call (None: LiteLLM's provider defaults).
    progress_bar: tqdm while loading routers and in ``batch_calculate_win_rate``.
    """

    def __init__(
        self,
        routers: Sequence[str],
        strong_model: str,
        weak_model: str,
        config: Mapping[str, Any] | str | Path | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        progress_bar: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        if isinstance(routers, str) or not routers:
            raise ConfigError("routers must be a non-empty list of router names, e.g. ['mf']")
        settings = _read_config(config)
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.model_pair = SimpleNamespace(strong=strong_model, weak=weak_model)
        self.api_base = api_base
        self.api_key = api_key
        self.progress_bar = progress_bar
        self.model_counts: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        loaded = {}
        for name in tqdm(list(routers), desc="loading routers", disable=not progress_bar):
            loaded[name] = load_compat_router(name, settings.get(name), strong_model, weak_model)
        self.routers = loaded
        # the upstream names are the caller's model strings, whatever the checkpoints say
        self.table = RouterTable(
            loaded, UpstreamSettings(model=strong_model), UpstreamSettings(model=weak_model)
        )
        self.chat = SimpleNamespace(
            completions=SimpleNamespace(create=self.completion, acreate=self.acompletion)
        )

    # decisions ------------------------------------------------------------------------
    def _check(self, router: str | None, threshold: float | None) -> tuple[str, float]:
        if router is None:
            raise RoutingError("Router unspecified: pass router= or model='router-<name>-<t>'")
        if router not in self.routers:
            raise RoutingError(
                f"Invalid router {router}. Available routers are {list(self.routers)}."
            )
        if threshold is None:
            return router, self.routers[router].threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0 <= threshold <= 1
        ):
            raise RoutingError(
                f"Invalid threshold {threshold}. Threshold must be a float between 0.0 and 1.0."
            )
        return router, float(threshold)

    def _parse_model(self, model: Any) -> tuple[str, float]:
        try:
            resolved = self.table.resolve(model)
        except InvalidRequestError as e:
            raise RoutingError(e.message) from None
        return resolved.router_name, resolved.threshold

    def _decide(self, router: str, threshold: float, prompt: str) -> str:
        resolved = ResolvedModel(f"{MODEL_PREFIX}{router}-{threshold}", router,
                                 self.routers[router], threshold)
        prob = float(resolved.router.strong_win_prob([prompt])[0])
        return self.table.decide(resolved, prob).upstream_model

    def route(self, prompt: str, router: str, threshold: float | None = None) -> str:
        """The model string ``prompt`` goes to (scores it; calls nothing, counts nothing)."""
        router, threshold = self._check(router, threshold)
        if not isinstance(prompt, str):
            raise RoutingError(f"prompt must be a string, got {type(prompt).__name__}")
        return self._decide(router, threshold, prompt)

    def batch_calculate_win_rate(self, prompts: Any, router: str) -> Any:
        """P(strong wins) for each prompt, in batches; a pandas Series keeps its index."""
        router, _ = self._check(router, 0.0)
        texts = list(prompts)
        predictor = self.routers[router]
        if self.progress_bar:
            from tqdm.auto import tqdm

            parts = [predictor.strong_win_prob(texts[i:i + 1024])
                     for i in tqdm(range(0, len(texts), 1024), desc=f"scoring ({router})")]
            probs = np.concatenate(parts) if parts else np.zeros(0)
        else:
            probs = predictor.strong_win_prob(texts)
        try:
            import pandas as pd
        except ImportError:  # pandas is optional; RouteLLM always returned a Series
            return probs
        index = prompts.index if isinstance(prompts, pd.Series) else None
        return pd.Series(probs, index=index, name=router)

    # completions ----------------------------------------------------------------------
    def _routed_kwargs(
        self, router: str | None, threshold: float | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if "model" in kwargs:
            router, threshold = self._parse_model(kwargs["model"])
        router, threshold = self._check(router, threshold)
        try:
            prompt = routing_text(kwargs.get("messages"), "last-user")
        except InvalidRequestError as e:
            raise RoutingError(e.message) from None
        routed = self._decide(router, threshold, prompt)
        self.model_counts[router][routed] += 1
        return {**kwargs, "model": routed}

    def _litellm(self) -> Any:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download
        try:
            import litellm
        except ImportError:
            raise ConfigError(
                "the RouteLLM-compatible Controller calls models through LiteLLM: "
                "pip install 'prefroute[litellm]'"
            ) from None
        return litellm

    def completion(
        self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any
    ) -> Any:
        """Route, then ``litellm.completion`` on the chosen model (kwargs as OpenAI's)."""
        call = self._routed_kwargs(router, threshold, kwargs)
        return self._litellm().completion(api_base=self.api_base, api_key=self.api_key, **call)

    async def acompletion(
        self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any
    ) -> Any:
        """The async twin of ``completion`` (``litellm.acompletion``)."""
        import anyio

        call = await anyio.to_thread.run_sync(
            lambda: self._routed_kwargs(router, threshold, kwargs)
        )
        return await self._litellm().acompletion(
            api_base=self.api_base, api_key=self.api_key, **call
        )


__all__ = ["Controller", "RoutingError", "load_compat_router"]
