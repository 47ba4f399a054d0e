"""The OpenAI-compatible routing server: ``create_app(settings)`` builds a FastAPI app.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``POST /v1/responses``
(JSON, or SSE with ``stream: true``), ``GET /v1/models`` and ``/v1/models/{id}``,
``GET /health/live`` (alias ``/health``), ``GET /health/ready``, ``GET /metrics`` (Prometheus)
and ``GET /metrics.json``. All state lives on the app (``app.state.prefroute``), so several
apps can run in one process. Failover and relaying are in forward.py, client limits and auth
in limits.py / auth.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefroute._logging import logger
from prefroute.serve import budget
from prefroute.serve.auth import ClientAuth
from prefroute.serve.batcher import MicroBatcher
from prefroute.serve.errors import (
    InvalidRequestError,
    ServeError,
    error_body,
    redact,
    redact_server_logs,
)
from prefroute.serve.failover import SIDES, CircuitBreaker
from prefroute.serve.forward import CLIENT_CLOSED, ClientDisconnected, Surface, forward
from prefroute.serve.health import Readiness, check_upstream_models
from prefroute.serve.journal import build_request_log
from prefroute.serve.limits import RequestGuard, request_id_of
from prefroute.serve.metrics import Metrics
from prefroute.serve.prom_metrics import CONTENT_TYPE, PromMetrics
from prefroute.serve.responses import (
    ResponseSides,
    completions_text,
    responses_text,
    usage_tokens,
)
from prefroute.serve.routing import RouterTable, RoutingDecision, resolve_routers, routing_text
from prefroute.serve.settings import ServeSettings
from prefroute.serve.shaping import RequestShaping
from prefroute.serve.tracing import Tracing, set_attributes
from prefroute.serve.upstream import Upstream

CHAT = Surface(
    "chat", "/chat/completions", lambda body, mode: routing_text(body.get("messages"), mode)
)
COMPLETIONS = Surface("completions", "/completions", completions_text)
RESPONSES = Surface("responses", "/responses", responses_text, event_stream=True)


class ServerState:
    """The routers, upstreams, batchers and metrics of one app."""

    def __init__(self, settings: ServeSettings, tracer_provider: Any = None) -> None:
        self.settings = settings
        self.tracing = Tracing(settings.otel, tracer_provider)
        self.auth = ClientAuth.from_sources(settings.api_key_file)
        self.table = RouterTable(resolve_routers(settings.routers), settings.strong, settings.weak)
        self.upstreams = {
            side: Upstream(
                side,
                upstream.base_url,
                upstream.api_key(),
                timeout=settings.upstream_timeout,
                max_connections=settings.max_connections,
                keepalive_s=settings.upstream_keepalive_s,
            )
            for side, upstream in (("strong", settings.strong), ("weak", settings.weak))
        }
        self.breakers = {
            side: CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
            for side in SIDES
        }
        self.shaping = {side: settings.shaping.get(side, RequestShaping()) for side in SIDES}
        self.readiness = Readiness(self.upstreams, self.breakers)
        self.secrets = [s for u in self.upstreams.values() for s in u.secrets]
        self.executor = ThreadPoolExecutor(
            settings.routing_threads, thread_name_prefix="prefroute-routing"
        )
        self.batchers = {
            name: MicroBatcher(
                router.strong_win_prob,
                executor=self.executor,
                window_s=settings.batch_window_ms / 1000.0,
                max_batch=settings.max_batch_size,
            )
            for name, router in self.table.routers.items()
        }
        self.metrics = Metrics(settings.latency_window)
        self.request_log = build_request_log(settings, self.secrets)  # --log-dir: the loop
        self.prom = PromMetrics(self.table.routers)
        for name, router in self.table.routers.items():
            self.prom.set_threshold(name, router.threshold)
        self.failovers = 0
        self.response_sides = ResponseSides()
        self.created = int(time.time())
        self.budget = (
            budget.BudgetController(
                settings.budget, {n: r.threshold for n, r in self.table.routers.items()}
            )
            if settings.budget is not None
            else None
        )

    def record_answer(
        self, decision: RoutingDecision | None, status: int, seconds: float, *, ok: bool,
        error_type: str | None = None, router: str | None = None,
    ) -> None:  # fmt: skip
        """Count a finished request in the JSON and the Prometheus metrics."""
        self.metrics.finished(status, seconds, error_type)
        self.prom.answered(
            decision.router_name if decision else router,
            decision.side if decision else None,
            status,
            seconds,
            ok,
        )

    async def record_usage(self, side: str, usage: Any) -> None:
        """Count the tokens an upstream reported for one answer (malformed usage is ignored)
        and let the budget controller price them."""
        tokens = usage_tokens(usage)
        if tokens is not None:
            self.prom.used_tokens(side, *tokens)
        if self.budget is not None:
            await self.budget.record_usage(side, usage)

    async def check_models(self) -> None:
        wanted: dict[str, set[str]] = {side: set() for side in SIDES}
        for router in self.table.routers.values():
            for side in SIDES:
                wanted[side].add(self.table.upstream_model(router, side))
        await check_upstream_models(self.upstreams, wanted)

    async def warm_up(self) -> None:
        """Score one prompt per router so lazy model loads happen before the first request;
        check the upstream model names meanwhile."""
        if self.budget is not None:
            await self.budget.connect()
        loop = asyncio.get_running_loop()
        if self.settings.check_models:
            await self.check_models()
        for name, router in self.table.routers.items():
            started = time.perf_counter()
            await loop.run_in_executor(self.executor, router.strong_win_prob, ["warm-up prompt"])
            logger.info("router %s warmed up in %.2f s", name, time.perf_counter() - started)

    async def aclose(self) -> None:
        if self.request_log is not None:
            await self.request_log.aclose()
        for batcher in self.batchers.values():
            await batcher.aclose()
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self.budget is not None:
            await self.budget.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def error_response(
        self, error: ServeError, decision: RoutingDecision | None = None
    ) -> JSONResponse:
        headers = {**(decision.headers() if decision else {}), **error.headers}
        if error.status == 401:
            headers["www-authenticate"] = "Bearer"
        return JSONResponse(
            error_body(error, self.secrets), status_code=error.status, headers=headers
        )

    def batching_stats(self) -> dict[str, Any]:
        stats = {}
        for name, b in self.batchers.items():
            stats[name] = {
                "batches": b.batches,
                "prompts": b.batched_prompts,
                "mean_batch_size": b.batched_prompts / b.batches if b.batches else None,
            }
        return {
            "window_ms": self.settings.batch_window_ms,
            "max_batch_size": self.settings.max_batch_size,
            "routers": stats,
        }


def create_app(settings: ServeSettings, *, tracer_provider: Any = None) -> FastAPI:
    """The routing server for ``settings``; routers load now, so a bad checkpoint fails here.

    tracer_provider: an OpenTelemetry TracerProvider for ``settings.otel`` (default: the
    global one)."""
    state = ServerState(settings, tracer_provider)
    redact_server_logs()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.warm_up()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="prefroute router", version="0.1.0", lifespan=lifespan)
    app.state.prefroute = state

    def rejected(status: int, error_type: str) -> None:
        state.metrics.request_started()
        state.record_answer(None, status, 0.0, ok=False, error_type=error_type)

    app.add_middleware(
        RequestGuard,
        auth=state.auth,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        on_reject=rejected,
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ServeError(
            str(exc.detail),
            status=exc.status_code,
            error_type="invalid_request_error",
            code=f"http_{exc.status_code}",
        )
        return state.error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected server error: %s", redact(repr(exc), state.secrets))
        return state.error_response(ServeError("internal server error", code="internal_error"))

    @app.get("/health")
    @app.get("/health/live")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "routers": list(state.table.routers)}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        report = await state.readiness.check()
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": state.table.model_cards(state.created)}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        for card in state.table.model_cards(state.created):
            if card["id"] == model_id:
                return JSONResponse(card)
        try:
            resolved = state.table.resolve(model_id)
        except ServeError as e:
            return state.error_response(e)
        card = next(
            c for c in state.table.model_cards(state.created)
            if c["id"] == f"router-{resolved.router_name}"
        )  # fmt: skip
        return JSONResponse({**card, "id": model_id, "threshold": resolved.threshold})

    @app.get("/metrics")
    async def metrics() -> Response:
        for side, breaker in state.breakers.items():
            state.prom.set_breaker(side, breaker.state == "open")
        if state.budget is not None:  # the controller owns the served threshold and the spend
            for name in state.table.routers:
                threshold = state.budget.current_threshold(name)
                if threshold is not None:
                    state.prom.set_threshold(name, threshold)
                share = state.budget.strong_share(name)
                if share is not None:
                    state.prom.set_strong_share(name, share)
            spend = state.budget.spend_usd()
            if spend is not None:
                state.prom.set_spend(spend)
        return Response(state.prom.render(), media_type=CONTENT_TYPE)

    @app.get("/metrics.json")
    async def metrics_json() -> dict[str, Any]:
        budget_snapshot = {} if state.budget is None else {"budget": await state.budget.snapshot()}
        return {
            **state.metrics.snapshot(),
            **budget_snapshot,
            "batching": state.batching_stats(),
            "failover": {
                "enabled": state.settings.failover,
                "failovers": state.failovers,
                "circuits": {side: b.state for side, b in state.breakers.items()},
                "retried_connections": {s: u.retried for s, u in state.upstreams.items()},
            },
        }

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        try:
            if state.request_log is None:
                raise ServeError("feedback needs a server started with --log-dir", status=404,
                                 error_type="invalid_request_error", code="feedback_disabled")
            return JSONResponse(state.request_log.record_feedback(await _read_body(request)))
        except ServeError as e:
            return state.error_response(e)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _proxy(state, request, CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _proxy(state, request, COMPLETIONS)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await _proxy(state, request, RESPONSES)

    return app


async def _read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        # orjson, unlike json, refuses what no upstream can take: lone surrogates ("\ud800")
        # and NaN
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequestError(
            f"the request body is not valid JSON ({str(e)[:120]})", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    return body


def _pin_to_previous(
    state: ServerState, body: dict[str, Any], resolved: Any, decision: RoutingDecision
) -> RoutingDecision | None:
    """A Responses request continuing a response goes to the side that made it."""
    side = state.response_sides.side_of(body.get("previous_response_id"))
    if side is None:
        return None
    model = state.table.upstream_model(resolved.router, side)
    return dataclasses.replace(decision, side=side, upstream_model=model)


async def _proxy(state: ServerState, request: Request, surface: Surface) -> Response:
    with state.tracing.span("prefroute.request", endpoint=surface.name) as span:
        response = await _route(state, request, surface, span)
        set_attributes(span, status=response.status_code)
        return response


async def _route(state: ServerState, request: Request, surface: Surface, span: Any) -> Response:
    started = time.perf_counter()
    state.metrics.request_started()
    request_id = request_id_of(request.scope)
    decision: RoutingDecision | None = None
    router_name: str | None = None
    try:
        body = await _read_body(request)
        resolved = state.table.resolve(body.get("model"))
        router_name = resolved.router_name
        text = surface.routing_text(body, state.settings.routing_text)
        stream = body.get("stream", False)
        if stream not in (True, False, None):
            raise InvalidRequestError(
                "'stream' must be true or false", param="stream", code="invalid_stream"
            )
        routing_started = time.perf_counter()
        try:
            strong_win_prob = await state.batchers[resolved.router_name].score(text)
        except Exception as e:
            logger.error(
                "router %s failed: %s", resolved.router_name, redact(repr(e), state.secrets)
            )
            raise ServeError(
                f"router {resolved.router_name!r} failed to score the prompt", code="routing_failed"
            ) from None
        routing_seconds = time.perf_counter() - routing_started
        decision, budget_headers = await budget.decide(
            state.budget, state.table, resolved, strong_win_prob
        )
        pinned = surface.event_stream and _pin_to_previous(state, body, resolved, decision)
        if pinned:
            decision = pinned
        state.metrics.routed(decision, routing_seconds)
        state.prom.decided(decision.router_name, decision.side, routing_seconds)
        set_attributes(
            span,
            router=decision.router_name,
            side=decision.side,
            strong_win_prob=decision.strong_win_prob,
            threshold=decision.threshold,
        )
        logger.debug(
            "request %s routed %s -> %s (p=%.4f, t=%.4f)",
            request_id,
            decision.model_id,
            decision.upstream_model,
            decision.strong_win_prob,
            decision.threshold,
        )
        headers = {
            **decision.headers(),
            **budget_headers,
            "x-prefroute-routing-ms": f"{routing_seconds * 1000:.3f}",
        }
        if pinned:
            headers["x-prefroute-pinned-by"] = "previous_response_id"
        response = await forward(
            state, request, surface, body, decision, headers,
            stream=bool(stream), started=started, request_id=request_id, text=text,
        )  # fmt: skip
        set_attributes(span, failover="x-prefroute-failover" in response.headers)
        return response
    except ClientDisconnected:
        state.record_answer(
            decision, CLIENT_CLOSED, time.perf_counter() - started, ok=False,
            error_type="client_closed",
        )  # fmt: skip
        return Response(status_code=CLIENT_CLOSED)
    except ServeError as e:
        if e.status >= 500:
            logger.warning("request %s failed: %d %s", request_id, e.status, e.code)
        state.record_answer(
            decision, e.status, time.perf_counter() - started, ok=False,
            error_type=e.error_type, router=router_name,
        )  # fmt: skip
        return state.error_response(e, decision)
    except Exception as e:  # a bug: answer in the OpenAI shape and keep serving
        logger.error("request %s: unexpected error: %s", request_id, redact(repr(e), state.secrets))
        error = ServeError("internal server error", code="internal_error")
        state.record_answer(
            decision, error.status, time.perf_counter() - started, ok=False,
            error_type=error.error_type, router=router_name,
        )  # fmt: skip
        return state.error_response(error, decision)
