"""The OpenAI-compatible routing server: ``create_app(settings)`` builds a FastAPI app.

Endpoints: ``POST /v1/chat/completions`` (JSON or SSE with ``stream: true``), ``GET /v1/models``,
``GET /health``, ``GET /metrics``. All state lives on the app (``app.state.prefroute``), so
several apps can run in one process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefroute._logging import logger
from prefroute.serve import budget
from prefroute.serve.batcher import MicroBatcher
from prefroute.serve.errors import (
    InvalidRequestError,
    ServeError,
    UpstreamError,
    error_body,
    redact,
    shorten,
)
from prefroute.serve.journal import after_completion, build_request_log, journal_stream
from prefroute.serve.metrics import Metrics
from prefroute.serve.routing import RouterTable, RoutingDecision, resolve_routers, routing_text
from prefroute.serve.settings import ServeSettings
from prefroute.serve.upstream import Upstream


class ServerState:
    """The routers, upstreams, batchers and metrics of one app."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.table = RouterTable(resolve_routers(settings.routers), settings.strong, settings.weak)
        self.upstreams = {
            "strong": Upstream(
                "strong",
                settings.strong.base_url,
                settings.strong.api_key(),
                timeout=settings.upstream_timeout,
                max_connections=settings.max_connections,
            ),
            "weak": Upstream(
                "weak",
                settings.weak.base_url,
                settings.weak.api_key(),
                timeout=settings.upstream_timeout,
                max_connections=settings.max_connections,
            ),
        }
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
        self.created = int(time.time())
        self.budget = (
            budget.BudgetController(
                settings.budget, {n: r.threshold for n, r in self.table.routers.items()}
            )
            if settings.budget is not None
            else None
        )

    async def warm_up(self) -> None:
        """Score one prompt per router so lazy model loads happen before the first request."""
        if self.budget is not None:
            await self.budget.connect()
        loop = asyncio.get_running_loop()
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


def create_app(settings: ServeSettings) -> FastAPI:
    """The routing server for ``settings``; routers load now, so a bad checkpoint fails here."""
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.warm_up()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="prefroute router", version="0.1.0", lifespan=lifespan)
    app.state.prefroute = state

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
    async def health() -> dict[str, Any]:
        return {"status": "ok", "routers": list(state.table.routers)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": state.table.model_cards(state.created)}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        snapshot = {**state.metrics.snapshot(), "batching": state.batching_stats()}
        if state.budget is not None:
            snapshot["budget"] = await state.budget.snapshot()
        return snapshot

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
        return await _chat_completion(state, request)

    return app


async def _read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequestError(
            "the request body is not valid JSON", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    return body


async def _chat_completion(state: ServerState, request: Request) -> Response:
    started = time.perf_counter()
    state.metrics.request_started()
    decision: RoutingDecision | None = None
    try:
        body = await _read_body(request)
        resolved = state.table.resolve(body.get("model"))
        text = routing_text(body.get("messages"), state.settings.routing_text)
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
        state.metrics.routed(decision, routing_seconds)
        logger.debug(
            "routed %s -> %s (p=%.4f, t=%.4f)",
            decision.model_id,
            decision.upstream_model,
            decision.strong_win_prob,
            decision.threshold,
        )
        upstream = state.upstreams[decision.side]
        upstream_body = {**body, "model": decision.upstream_model}
        headers = {
            **decision.headers(),
            **budget_headers,
            "x-prefroute-routing-ms": f"{routing_seconds * 1000:.3f}",
        }
        if stream:
            response = await upstream.open_stream(upstream_body)
            chunks = _relay(state, upstream, response, decision, started)
            if state.request_log is not None:
                chunks, headers["x-prefroute-request-id"] = journal_stream(
                    state, decision, body, text, chunks, started)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        data = await upstream.complete(upstream_body)
        data["model"] = decision.upstream_model
        if state.budget is not None:
            await state.budget.record_usage(decision.side, data.get("usage"))
        if state.request_log is not None:
            after_completion(state, decision, body, text, data, started)
        state.metrics.finished(200, time.perf_counter() - started)
        return JSONResponse(data, headers=headers)
    except ServeError as e:
        state.metrics.finished(e.status, time.perf_counter() - started, e.error_type)
        return state.error_response(e, decision)
    except Exception as e:  # a bug: answer in the OpenAI shape and keep serving
        logger.error("unexpected error in chat completions: %s", redact(repr(e), state.secrets))
        error = ServeError("internal server error", code="internal_error")
        state.metrics.finished(error.status, time.perf_counter() - started, error.error_type)
        return state.error_response(error, decision)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _relay(
    state: ServerState,
    upstream: Upstream,
    response: httpx.Response,
    decision: RoutingDecision,
    started: float,
) -> AsyncIterator[str]:
    """Relay the upstream's SSE chunks with the routed model name; an error event if it breaks."""
    model = decision.upstream_model
    usage = None
    try:
        async for payload in upstream.stream_events(response, model):
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise UpstreamError(
                    f"the {decision.side} upstream ({model!r}) sent a stream event "
                    "that is not JSON",
                    code="upstream_bad_response",
                ) from None
            if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                message = shorten(str(chunk["error"].get("message") or "(no message)"))
                raise UpstreamError(
                    f"the {decision.side} upstream ({model!r}) failed mid-stream: {message}",
                    code="upstream_stream_error",
                )
            if isinstance(chunk, dict) and chunk.get("usage"):
                usage = chunk["usage"]
            if isinstance(chunk, dict) and "model" in chunk:
                chunk["model"] = model
            yield _sse(chunk)
        yield "data: [DONE]\n\n"
    except ServeError as e:
        state.metrics.stream_failed(e.error_type)
        yield _sse(error_body(e, state.secrets))
    finally:
        await response.aclose()
        if state.budget is not None:
            await state.budget.record_usage(decision.side, usage)
        state.metrics.finished(200, time.perf_counter() - started)
