"""Errors of the routing server and the one place that turns them into OpenAI-shaped bodies.

Every failure a client can see is a ``ServeError`` with an HTTP status, an OpenAI error
``type``, a ``code`` and the request ``param`` at fault; ``error_body`` renders
``{"error": {"message", "type", "param", "code"}}`` after removing every known secret
(API keys, credentials in URLs, bearer tokens) and every URL from the message, so no key
and no upstream address reaches a client. Secrets are always removed BEFORE a message is
cut short, so a key straddling the cut cannot leak half of itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from prefroute.errors import PrefrouteError

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
# secrets an upstream may quote back that the server does not know: bearer tokens, sk- keys,
# key=... query parameters
_TOKEN_PATTERNS = (
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\g<1>***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
    (re.compile(r"(?i)\b((?:api[_-]?)?key|token|secret)=[^&\s\"']+"), r"\g<1>=***"),
)
_URL = re.compile(r"(?i)\b(?:https?|wss?)://[^\s\"'<>)]+")
_MAX_UPSTREAM_MESSAGE = 500
_MAX_CLIENT_MESSAGE = 2000


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


class AuthenticationError(ServeError):
    """The client sent no API key, or one the server does not accept (401)."""

    status = 401
    error_type = "invalid_request_error"


class ModelNotFoundError(InvalidRequestError):
    """The request names a model this server does not serve (404, as OpenAI answers)."""

    status = 404


class RequestTooLargeError(InvalidRequestError):
    """The request body is larger than ``--max-body-bytes`` (413)."""

    status = 413


class RequestTimeoutError(InvalidRequestError):
    """The client did not send its whole body within the body read timeout (408)."""

    status = 408


class UpstreamUnavailableError(UpstreamError):
    """No upstream may be tried now: every candidate's circuit breaker is open (503)."""

    status = 503


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret replaced by ``***``: the known ones, URL credentials
    (user:pass@), bearer tokens, ``sk-`` keys and ``key=`` query parameters."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement in _TOKEN_PATTERNS:
        text = pattern.sub(replacement, text)
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def hide_urls(text: str) -> str:
    """``text`` with every http(s) URL replaced by ``<url>`` (upstream addresses stay private)."""
    return _URL.sub("<url>", text)


def client_message(text: str, secrets: Iterable[str | None] = (), limit: int | None = None) -> str:
    """What a client may see of ``text``: secrets and URLs removed first, then cut short."""
    text = hide_urls(redact(text, secrets))
    return text if limit is None else shorten(text, limit)


def shorten(text: str, limit: int = _MAX_UPSTREAM_MESSAGE) -> str:
    """Cut an upstream message to ``limit`` characters (upstream bodies can be whole HTML pages)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(error: ServeError, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """The OpenAI error JSON for ``error``, with secrets and URLs removed from the message."""
    return {
        "error": {
            "message": client_message(error.message, secrets, limit=_MAX_CLIENT_MESSAGE),
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


class RedactingFilter(logging.Filter):
    """Redacts bearer tokens, ``sk-`` keys, ``key=`` parameters and URL credentials from log
    records (uvicorn's access log writes request paths, query strings included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact_server_logs(names: Iterable[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Install ``RedactingFilter`` on the server's loggers (once per logger)."""
    for name in names:
        log = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in log.filters):
            log.addFilter(RedactingFilter())
