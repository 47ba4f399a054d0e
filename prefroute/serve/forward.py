"""From a routing decision to the client's response: shaping, failover, breakers, relaying.

``forward`` sends the request to the chosen side; when that fails before any byte reached the
client (see ``failover.should_fail_over``) and failover is on, the other side answers and the
response says so (``x-prefroute-failover: true``). A client that disconnects while the server
waits for the upstream cancels the upstream call (its connection is closed, so the upstream
can stop generating). Streams are relayed event by event with the routed model name; a stream
that breaks ends with an error event and is counted as a failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from prefroute._logging import logger
from prefroute.serve.errors import (
    ServeError,
    UpstreamError,
    UpstreamTimeoutError,
    client_message,
    error_body,
)
from prefroute.serve.failover import other_side, should_fail_over, unavailable
from prefroute.serve.journal import after_completion, journal_stream
from prefroute.serve.responses import rewrite_model
from prefroute.serve.routing import RoutingDecision
from prefroute.serve.upstream import Upstream

if TYPE_CHECKING:
    from prefroute.serve.app import ServerState

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer"


@dataclass(frozen=True)
class Surface:
    """One OpenAI endpoint the server routes: where it goes upstream, how its text is read."""

    name: str
    path: str  # upstream path, under the upstream's base_url
    routing_text: Callable[[dict[str, Any], str], str]
    event_stream: bool = False  # SSE with named events (Responses) rather than data-only


class ClientDisconnected(Exception):
    """The client closed its connection while the server waited for the upstream."""


async def _wait_for_disconnect(receive: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Callable[[], Any], call: Any) -> Any:
    """Await ``call``; cancel it and raise ClientDisconnected if the client leaves first."""
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - cancelled, or failed while cancelling: either way gone
        pass
    raise ClientDisconnected


def _no_retry(error: ServeError, tried: int) -> ServeError:
    """Mark 502/504s a client retry cannot fix: both sides failed, a timeout, a bad answer."""
    if error.status in (502, 504) and (
        tried > 1
        or isinstance(error, UpstreamTimeoutError)
        or error.code == "upstream_bad_response"
    ):
        error.headers["x-should-retry"] = "false"
    return error


async def forward(
    state: ServerState,
    request: Any,
    surface: Surface,
    body: dict[str, Any],
    decision: RoutingDecision,
    headers: dict[str, str],
    *,
    stream: bool,
    started: float,
    request_id: str,
    text: str = "",
) -> Response:
    """Send ``body`` to the decided side (or, on failure, the other one); the response."""
    router = state.table.routers[decision.router_name]
    sides = [decision.side]
    if state.settings.failover:
        sides.append(other_side(decision.side))
    upstream_headers = {"x-request-id": request_id}
    last_error: ServeError | None = None
    tried = 0
    for side in sides:
        breaker = state.breakers[side]
        if not breaker.allow():
            last_error = last_error or unavailable(side, breaker)
            continue
        tried += 1
        upstream = state.upstreams[side]
        served = decision
        if side != decision.side:
            served = dataclasses.replace(
                decision, side=side, upstream_model=state.table.upstream_model(router, side)
            )
        payload = state.shaping[side].apply({**body, "model": served.upstream_model})
        try:
            if stream:
                call = upstream.open_stream(payload, path=surface.path, headers=upstream_headers)
            else:
                call = upstream.complete(payload, path=surface.path, headers=upstream_headers)
            result = await until_disconnect(request.receive, call)
        except ClientDisconnected:
            breaker.released()
            logger.info("request %s: the client left; upstream call cancelled", request_id)
            raise
        except ServeError as e:
            if should_fail_over(e):
                breaker.failed()
                state.prom.upstream_failed(side, e.code or e.error_type)
            else:
                breaker.succeeded()  # it answered: a 429 or a 4xx says it is up
            state.prom.set_breaker(side, breaker.state == "open")
            if should_fail_over(e):
                last_error = e
                continue
            raise
        except BaseException:  # a bug or a cancellation: never leave a half-open trial pending
            breaker.released()
            raise
        breaker.succeeded()
        state.prom.set_breaker(side, False)
        out_headers = {**headers, **served.headers()}
        if served is not decision:
            out_headers["x-prefroute-failover"] = "true"
            out_headers["x-prefroute-routed-side"] = decision.side
            state.prom.failed_over(decision.router_name, decision.side, side)
            state.failovers += 1
            logger.warning(
                "request %s: %s upstream failed; the %s side answered",
                request_id,
                decision.side,
                side,
            )
        journal = state.request_log is not None and surface.name == "chat"  # --log-dir
        if stream:
            chunks = _relay(state, surface, upstream, result, served, started)
            if journal:
                chunks, out_headers["x-prefroute-request-id"] = journal_stream(
                    state, served, body, text, chunks, started
                )
            return StreamingResponse(chunks, media_type="text/event-stream", headers=out_headers)
        rewrite_model(result, served.upstream_model)
        await state.record_usage(side, result.get("usage"))
        if journal:
            after_completion(state, served, body, text, result, started)
        if surface.event_stream:
            state.response_sides.remember(result.get("id"), side)
        state.record_answer(served, 200, time.perf_counter() - started, ok=True)
        return JSONResponse(result, headers=out_headers)
    assert last_error is not None
    raise _no_retry(last_error, tried)


def _sse(data: Any, event: str | None = None) -> str:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n"


def _stream_error(surface: Surface, error: ServeError, secrets: list[str], sequence: int) -> str:
    if surface.event_stream:  # the Responses API's own error event
        return _sse(
            {
                "type": "error",
                "code": error.code,
                "message": client_message(error.message, secrets),
                "param": error.param,
                "sequence_number": sequence,
            },
            "error",
        )
    return _sse(error_body(error, secrets))


async def _relay(
    state: ServerState,
    surface: Surface,
    upstream: Upstream,
    response: httpx.Response,
    decision: RoutingDecision,
    started: float,
) -> AsyncIterator[str]:
    """Relay the upstream's SSE events with the routed model name; an error event if it breaks."""
    model = decision.upstream_model
    event_name: str | None = None
    sequence = 0
    ok = True
    usage = None
    try:
        async for line in upstream.stream_lines(response, model):
            if line.startswith("event:"):
                event_name = line[6:].strip()
                continue
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                event = json.loads(payload)
            except ValueError:
                raise UpstreamError(
                    f"the {decision.side} upstream ({model!r}) sent a stream event "
                    "that is not JSON",
                    code="upstream_bad_response",
                ) from None
            _raise_stream_error(event, decision, surface)
            if isinstance(event, dict) and isinstance(event.get("sequence_number"), int):
                sequence = event["sequence_number"] + 1
            if isinstance(event, dict):
                inner = event.get("response") if surface.event_stream else None
                if isinstance(inner, dict):
                    state.response_sides.remember(inner.get("id"), decision.side)
                usage = (inner or event).get("usage") or usage
            yield _sse(rewrite_model(event, model), event_name if surface.event_stream else None)
            event_name = None
        if not surface.event_stream:
            yield "data: [DONE]\n\n"
    except ServeError as e:
        ok = False
        logger.warning("stream failed (%s): %s", e.code, client_message(e.message, state.secrets))
        state.metrics.stream_failed(e.error_type)
        state.prom.stream_failed(decision.router_name, decision.side)
        yield _stream_error(surface, e, state.secrets, sequence)
    finally:
        await response.aclose()
        await state.record_usage(decision.side, usage)
        state.record_answer(decision, 200, time.perf_counter() - started, ok=ok)


def _raise_stream_error(event: Any, decision: RoutingDecision, surface: Surface) -> None:
    if not isinstance(event, dict):
        return
    message = None
    if isinstance(event.get("error"), dict):
        message = event["error"].get("message")
    elif surface.event_stream and event.get("type") in ("error", "response.failed"):
        inner = event.get("response", {}).get("error") if event.get("response") else None
        message = event.get("message") or (inner or {}).get("message")
    else:
        return
    raise UpstreamError(
        f"the {decision.side} upstream ({decision.upstream_model!r}) failed mid-stream: "
        f"{message or '(no message)'}",
        code="upstream_stream_error",
    )
