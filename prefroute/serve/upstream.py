"""Calls to an OpenAI-compatible upstream (one per side), with every failure mapped to a ServeError.

Non-streaming calls are bounded by ``timeout`` in total; streaming calls by ``timeout`` until
the response starts and between reads. Upstream 5xx and connection failures become 502,
timeouts 504, 429 passes through with its Retry-After, and client errors the upstream
reports (400, 413, 422) pass through with the upstream's message. Messages never hold
the API key: they are redacted here and again where error bodies are rendered.
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
    redact,
    shorten,
)

_PASSTHROUGH = {400, 413, 422}  # the client's request is at fault; 401/403/404 are ours


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
    ) -> None:
        self.side = side
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

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
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=min(self._max_connections, 128),
                ),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _where(self, model: str) -> str:
        return f"the {self.side} upstream ({model!r} at {redact(self.base_url)})"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion; the parsed JSON of a 200 response."""
        model = body["model"]
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.post("/chat/completions", json=body)
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

    async def open_stream(self, body: dict[str, Any]) -> httpx.Response:
        """Start a streaming completion; returns the open 200 response (the caller closes it)."""
        model = body["model"]
        request = self.client.build_request("POST", "/chat/completions", json=body)
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.send(request, stream=True)
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

    async def stream_events(self, response: httpx.Response, model: str) -> AsyncIterator[str]:
        """The ``data:`` payloads of an SSE response ("[DONE]" included); ServeError on failure."""
        try:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield line[5:].strip()
        except httpx.TimeoutException:
            raise self._timeout(model) from None
        except httpx.HTTPError as e:
            raise self._connection_error(model, e) from None

    # failures -------------------------------------------------------------------------
    def _log(self, error: ServeError) -> ServeError:
        logger.warning(
            "upstream failure (%d %s): %s",
            error.status,
            error.code,
            redact(error.message, self.secrets),
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
        detail = redact(shorten(str(error) or type(error).__name__), self.secrets)
        return self._log(
            UpstreamError(
                f"could not reach {self._where(model)}: {type(error).__name__}: {detail}",
                code="upstream_connection_error",
            )
        )

    def _status_error(
        self, model: str, status: int, content: bytes, headers: httpx.Headers
    ) -> ServeError:
        upstream_error = _error_object(content)
        detail = redact(
            shorten(str(upstream_error.get("message") or content.decode("utf-8", "replace"))),
            self.secrets,
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
