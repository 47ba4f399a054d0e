"""Serving routers: an OpenAI-compatible routing server and a drop-in Python client.

``create_app(ServeSettings(...))`` builds the FastAPI server (``prefroute serve`` runs it);
``Controller`` / ``AsyncController`` route in-process and call upstreams with the openai client.
The server's FastAPI/uvicorn imports happen only when ``create_app`` is imported.
"""

from prefroute.serve.controller import AsyncController, Controller
from prefroute.serve.errors import (
    InvalidRequestError,
    ServeError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
)
from prefroute.serve.routing import RoutingDecision
from prefroute.serve.settings import ServeSettings, UpstreamSettings


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is an optional dependency (the "serve" extra)
        from prefroute.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'prefroute.serve' has no attribute {name!r}")


__all__ = [
    "AsyncController",
    "Controller",
    "InvalidRequestError",
    "RoutingDecision",
    "ServeError",
    "ServeSettings",
    "UpstreamError",
    "UpstreamRateLimitError",
    "UpstreamTimeoutError",
    "UpstreamSettings",
    "create_app",
]
