"""Guards against abusive or slow clients, below the routes.

- ``RequestGuard`` (a plain ASGI middleware, cheap on the hot path): gives every request an
  ``X-Request-ID`` (the client's when it is sane, else a new one) and echoes it; checks the
  client's API key on ``/v1/*``; answers 413 from ``Content-Length`` before reading a byte,
  caps bodies without one (chunked) while they stream in, and answers 408 when a body does not
  arrive within the body read timeout.
- ``guarded_protocol(header_timeout)``: uvicorn's HTTP protocol with a header read timeout and
  a header size cap. uvicorn closes idle keep-alive connections but not one that trickles its
  headers in (slowloris), so such connections would hold sockets and the connection cap
  forever; and with httptools it does not bound the size of incomplete headers.
- ``uvicorn_options``: the uvicorn settings these limits need (connection cap, keep-alive).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from prefroute.serve.auth import ClientAuth
from prefroute.serve.errors import (
    RequestTimeoutError,
    RequestTooLargeError,
    ServeError,
    error_body,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # before the headers are complete (h11's own limit is for h11 only)


def request_id_of(scope: Scope) -> str:
    """The request id the guard gave this request ("-" outside the guard)."""
    return scope.get("state", {}).get("request_id", "-")


class RequestGuard:
    """ASGI middleware: request ids, client auth, body size cap and body read timeout.

    on_reject(status, error_type) is called for every request the guard answers itself,
    so metrics can count them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: ClientAuth | None,
        max_body_bytes: int,
        body_timeout_s: float,
        on_reject: Callable[[int, str], None] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        content_length = None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if request_id is None or not _SAFE_REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if self.auth is not None and scope["path"].startswith("/v1/"):
                self.auth.check(authorization)
            if content_length is not None:
                try:
                    declared = int(content_length)
                except ValueError:
                    declared = -1
                if declared > self.max_body_bytes:
                    raise self._too_large()
        except ServeError as e:
            await self._reject(e, send_with_id)
            return
        await self.app(scope, self._limited(receive), send_with_id)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"the request body is larger than the server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that caps the body size and bounds the time until the body is in."""
        received = 0
        body_done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later calls only wait for a disconnect: no deadline on those
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    code="request_timeout",
                    headers={"connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    error = self._too_large()
                    error.headers["connection"] = "close"
                    raise error
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return limited_receive

    async def _reject(self, error: ServeError, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject(error.status, error.error_type)
        body = orjson.dumps(error_body(error))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if error.status == 413:
            headers.append((b"connection", b"close"))
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def guarded_protocol(
    header_timeout_s: float, max_header_bytes: int = MAX_HEADER_BYTES
) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP protocol, closing connections whose request headers are not
    complete ``header_timeout_s`` after the connection opened or the last response ended, or
    that send more than ``max_header_bytes`` before their headers are complete."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0

        def _arm(self) -> None:
            self._disarm()
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _in_request(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is not None and not cycle.response_complete

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            waiting = not self._in_request()
            super().data_received(data)
            if self._in_request():
                self._disarm()
            elif waiting:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes and not self.transport.is_closing():
                    self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def uvicorn_options(
    *,
    header_timeout_s: float,
    keep_alive_s: float,
    max_client_connections: int,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` that enforce the limits."""
    return {
        "http": guarded_protocol(header_timeout_s),
        "timeout_keep_alive": keep_alive_s,
        "limit_concurrency": max_client_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
