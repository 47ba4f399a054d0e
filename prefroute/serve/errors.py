"""Errors of the routing server and the one place that turns them into OpenAI-shaped bodies.

Every failure a client can see is a ``ServeError`` with an HTTP status, an OpenAI error
``type``, a ``code`` and the request ``param`` at fault; ``error_body`` renders
``{"error": {"message", "type", "param", "code"}}`` after removing every known secret
(API keys, credentials in URLs) from the message, so no key reaches a client or a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from prefroute.errors import PrefrouteError

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_MAX_UPSTREAM_MESSAGE = 500


class ServeError(PrefrouteError):
    """A failure with the HTTP status and the OpenAI error type/code a client gets."""

    status: int = 500
    error_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.headers = dict(headers or {})


class InvalidRequestError(ServeError, ValueError):
    """The request is malformed or names a router/threshold that does not exist (400)."""

    status = 400
    error_type = "invalid_request_error"


class UpstreamError(ServeError):
    """The upstream model answered with an error or could not be reached (502)."""

    status = 502
    error_type = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """The upstream model did not answer within the configured timeout (504)."""

    status = 504
    error_type = "timeout_error"


class UpstreamRateLimitError(UpstreamError):
    """The upstream model refused with 429; passed through with its Retry-After (429)."""

    status = 429
    error_type = "rate_limit_error"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret replaced by ``***`` and URL credentials (user:pass@) removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def shorten(text: str, limit: int = _MAX_UPSTREAM_MESSAGE) -> str:
    """Cut an upstream message to ``limit`` characters (upstream bodies can be whole HTML pages)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(error: ServeError, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """The OpenAI error JSON for ``error``, with secrets removed from the message."""
    return {
        "error": {
            "message": redact(error.message, secrets),
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }
