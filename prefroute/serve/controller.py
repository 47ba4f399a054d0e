"""A drop-in client shaped like ``openai.OpenAI``: routes locally, calls the chosen upstream.

    controller = Controller(["ckpt/mf"], strong=UpstreamSettings(base_url=..., api_key_env=...),
                            weak=UpstreamSettings(base_url=..., api_key_env=...))
    reply = controller.chat.completions.create(model="router-mf-0.1163", messages=[...])

``AsyncController`` is the asyncio twin (``await controller.chat.completions.create(...)``);
it scores prompts in a worker thread so the event loop keeps running. Calls go through the
official ``openai`` client of each side, so responses, streams and exceptions are openai's.
A ``model`` that names no served router raises ``InvalidRequestError`` (a ValueError).
"""

from __future__ import annotations

from typing import Any

import anyio
import openai

from prefroute.errors import check_choice
from prefroute.serve.routing import RouterTable, RoutingDecision, resolve_routers, routing_text
from prefroute.serve.settings import ROUTING_TEXTS, RoutersSpec, UpstreamSettings

_NO_KEY = "EMPTY"  # the openai client needs a key; servers without auth ignore this one


class _Chat:
    def __init__(self, completions: Any) -> None:
        self.completions = completions


class _Completions:
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def create(self, *, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Route, then ``chat.completions.create`` on the chosen side (same kwargs, stream too)."""
        decision = self._controller.route(model, messages)
        client = self._controller.clients[decision.side]
        return client.chat.completions.create(
            model=decision.upstream_model, messages=messages, **kwargs
        )


class _AsyncCompletions:
    def __init__(self, controller: AsyncController) -> None:
        self._controller = controller

    async def create(self, *, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Route (in a thread), then ``await chat.completions.create`` on the chosen side."""
        decision = await self._controller.aroute(model, messages)
        client = self._controller.clients[decision.side]
        return await client.chat.completions.create(
            model=decision.upstream_model, messages=messages, **kwargs
        )


class _RoutingCore:
    """What ``Controller`` and ``AsyncController`` share; each names its openai client class
    and its completions shape."""

    _client_class: Any
    _completions_class: Any

    def __init__(
        self,
        routers: RoutersSpec,
        *,
        strong: UpstreamSettings | None = None,
        weak: UpstreamSettings | None = None,
        routing_text: str = "last-user",
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        check_choice("routing_text", type(self).__name__, routing_text, ROUTING_TEXTS)
        self.strong = strong or UpstreamSettings()
        self.weak = weak or UpstreamSettings()
        self.routing_text = routing_text
        self.table = RouterTable(resolve_routers(routers), self.strong, self.weak)
        self.clients = {
            name: self._client_class(**self._client_args(side, timeout, max_retries))
            for name, side in (("strong", self.strong), ("weak", self.weak))
        }
        self.chat = _Chat(self._completions_class(self))

    def route(self, model: str, messages: list[dict[str, Any]]) -> RoutingDecision:
        """Where a request would go (scores the prompt; calls nothing)."""
        resolved = self.table.resolve(model)
        text = routing_text(messages, self.routing_text)
        return self.table.decide(resolved, float(resolved.router.strong_win_prob([text])[0]))

    def models(self) -> list[str]:
        """The model names this controller accepts."""
        return [card["id"] for card in self.table.model_cards(0)]

    def _client_args(
        self, side: UpstreamSettings, timeout: float, max_retries: int
    ) -> dict[str, Any]:
        return {
            "base_url": side.base_url,
            "api_key": side.api_key() or _NO_KEY,
            "timeout": timeout,
            "max_retries": max_retries,
        }


class Controller(_RoutingCore):
    """Synchronous router client with the shape of ``openai.OpenAI``.

    Parameters
    ----------
    routers: checkpoint folders (``"PATH"`` or ``"NAME=PATH"``) or a mapping name -> folder/Router.
    strong, weak: each side's upstream (model override, base_url, api_key_env).
    routing_text: route on the ``"last-user"`` turn or the whole ``"conversation"``.
    timeout: seconds per upstream call; max_retries: the openai client's retries.
    """

    _client_class = openai.OpenAI
    _completions_class = _Completions

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncController(_RoutingCore):
    """The asyncio twin of ``Controller`` (same parameters), shaped like ``openai.AsyncOpenAI``."""

    _client_class = openai.AsyncOpenAI
    _completions_class = _AsyncCompletions

    async def aroute(self, model: str, messages: list[dict[str, Any]]) -> RoutingDecision:
        """``route`` in a worker thread, so the event loop is not blocked by the embedding."""
        return await anyio.to_thread.run_sync(self.route, model, messages)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def __aenter__(self) -> AsyncController:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
