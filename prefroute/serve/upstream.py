"""Calls to an OpenAI-compatible upstream (one per side), with every failure mapped to a ServeError.

Non-streaming calls are bounded by ``timeout`` in total; streaming calls by ``timeout`` until
the response starts and between reads. Upstream 5xx and connection failures become 502,
timeouts 504, 429 passes through with its Retry-After, and client errors the upstream
reports (400, 413, 422) pass through with the upstream's message. Messages never hold
the API key or the upstream's address: keys are redacted before any message is cut short,
and the URL only goes to the server's log.

Keep-alive: pooled connections expire after ``keepalive_s`` (default 2 s), well before the
5 s after which uvicorn (and most servers) close an idle connection. With both at 5 s, a
connection the pool took as still open was sometimes closed by the upstream in the same
instant, and the request died with ``ReadError`` (the flaky 200-request test, issue 12).
As a second line, a connection-level failure before any response byte (``ReadError``,
``WriteError``, ``RemoteProtocolError``: the server dropped a reused connection) is retried
once on another connection; connect errors are retried once by the transport.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from prefroute._logging import logger
from prefroute.serve.errors import (
    InvalidRequestError,
    ServeError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
    client_message,
    redact,
)

_PASSTHROUGH = {400, 413, 422}  # the client's request is at fault; 401/403/404 are ours
# the upstream dropped the connection before answering: safe to send once more
_RETRY_ONCE = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
DEFAULT_KEEPALIVE_S = 2.0


class Upstream:
    """One upstream endpoint (``base_url`` + key), shared by all routers for one side."""

    def __init__(
        self,
        side: str,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        max_connections: int = 512,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
    ) -> None:
        self.side = side
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.keepalive_s = keepalive_s
        self._api_key = api_key
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self.retried = 0  # connection-level failures recovered by one more try

    @property
    def secrets(self) -> list[str]:
        return [self._api_key] if self._api_key else []

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created lazily so it binds to the serving event loop
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                transport=httpx.AsyncHTTPTransport(
                    retries=1,  # connect errors only
                    limits=httpx.Limits(
                        max_connections=self._max_connections,
                        max_keepalive_connections=min(self._max_connections, 128),
                        keepalive_expiry=self.keepalive_s,
                    ),
                ),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _where(self, model: str) -> str:
        return f"the {self.side} upstream ({model!r})"

    async def _send(self, request_factory, *, stream: bool) -> httpx.Response:
        """Send, retrying once when the connection dropped before any response byte."""
        try:
            return await self.client.send(request_factory(), stream=stream)
        except _RETRY_ONCE as e:
            logger.info(
                "%s upstream dropped a connection before answering (%s); retrying once",
                self.side,
                type(e).__name__,
            )
            self.retried += 1
            return await self.client.send(request_factory(), stream=stream)

    def _request(self, path: str, body: dict[str, Any], headers: dict[str, str] | None):
        return lambda: self.client.build_request("POST", path, json=body, headers=headers)

    async def complete(
        self,
        body: dict[str, Any],
        *,
        path: str = "/chat/completions",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A non-streaming call to ``path``; the parsed JSON of a 200 response."""
        model = body["model"]
        try:
            with anyio.fail_after(self.timeout):
                response = await self._send(self._request(path, body, headers), stream=False)
                content = response.content
        except (TimeoutError, httpx.TimeoutException):
            raise self._timeout(model) from None
        except httpx.HTTPError as e:
            raise self._connection_error(model, e) from None
        if response.status_code != 200:
            raise self._status_error(model, response.status_code, content, response.headers)
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._log(
                UpstreamError(
                    f"{self._where(model)} answered 200 with a body that is not a JSON object",
                    code="upstream_bad_response",
                )
            )
        return data

    async def open_stream(
        self,
        body: dict[str, Any],
        *,
        path: str = "/chat/completions",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Start a streaming call; returns the open 200 response (the caller closes it)."""
        model = body["model"]
        try:
            with anyio.fail_after(self.timeout):
                response = await self._send(self._request(path, body, headers), stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise self._timeout(model) from None
        except httpx.HTTPError as e:
            raise self._connection_error(model, e) from None
        if response.status_code != 200:
            try:
                with anyio.fail_after(self.timeout):
                    content = await response.aread()
            except (TimeoutError, httpx.HTTPError):
                content = b""
            finally:
                await response.aclose()
            raise self._status_error(model, response.status_code, content, response.headers)
        return response

    async def stream_lines(self, response: httpx.Response, model: str) -> AsyncIterator[str]:
        """The lines of an SSE response; ServeError on failure."""
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.TimeoutException:
            raise self._timeout(model) from None
        except httpx.HTTPError as e:
            raise self._connection_error(model, e) from None

    async def stream_events(self, response: httpx.Response, model: str) -> AsyncIterator[str]:
        """The ``data:`` payloads of an SSE response ("[DONE]" included); ServeError on failure."""
        async for line in self.stream_lines(response, model):
            if line.startswith("data:"):
                yield line[5:].strip()

    async def models(self, timeout: float = 5.0) -> list[str]:
        """The model ids the upstream's ``GET /models`` lists; UpstreamError when it cannot."""
        try:
            with anyio.fail_after(timeout):
                response = await self.client.get("/models", timeout=timeout)
        except (TimeoutError, httpx.HTTPError) as e:
            raise UpstreamError(
                f"the {self.side} upstream did not answer GET /models ({type(e).__name__})",
                code="upstream_connection_error",
            ) from None
        if response.status_code >= 500:
            raise UpstreamError(
                f"the {self.side} upstream answered GET /models with {response.status_code}",
                code=f"upstream_{response.status_code}",
            )
        try:
            data = response.json().get("data", [])
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (ValueError, AttributeError, TypeError):
            return []

    # failures -------------------------------------------------------------------------
    def _log(self, error: ServeError, detail: str = "") -> ServeError:
        logger.warning(
            "upstream failure (%d %s) at %s: %s%s",
            error.status,
            error.code,
            redact(self.base_url),
            redact(error.message, self.secrets),
            f" ({redact(detail, self.secrets)})" if detail else "",
        )
        return error

    def _timeout(self, model: str) -> ServeError:
        return self._log(
            UpstreamTimeoutError(
                f"{self._where(model)} did not answer within {self.timeout:g} s",
                code="upstream_timeout",
            )
        )

    def _connection_error(self, model: str, error: httpx.HTTPError) -> ServeError:
        # the exception's text names the host and port: it goes to the log, not the client
        return self._log(
            UpstreamError(
                f"could not reach {self._where(model)}: {type(error).__name__}",
                code="upstream_connection_error",
            ),
            str(error),
        )

    def _status_error(
        self, model: str, status: int, content: bytes, headers: httpx.Headers
    ) -> ServeError:
        upstream_error = _error_object(content)
        detail = client_message(
            str(upstream_error.get("message") or content.decode("utf-8", "replace")),
            self.secrets,
            limit=500,
        )
        message = f"{self._where(model)} returned HTTP {status}: {detail or '(no message)'}"
        if status == 429:
            retry = {k: headers[k] for k in ("retry-after", "retry-after-ms") if k in headers}
            return self._log(
                UpstreamRateLimitError(
                    message,
                    code=_str_or_none(upstream_error.get("code")) or "rate_limit_exceeded",
                    headers=retry,
                )
            )
        if status in _PASSTHROUGH:
            return self._log(
                InvalidRequestError(
                    message,
                    code=_str_or_none(upstream_error.get("code")) or f"upstream_{status}",
                    param=_str_or_none(upstream_error.get("param")),
                    status=status,
                )
            )
        return self._log(UpstreamError(message, code=f"upstream_{status}"))


def _error_object(content: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body, or {}."""
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data
    return {}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
