"""Serving routers: an OpenAI-compatible routing server and a drop-in Python client.

``create_app(ServeSettings(...))`` builds the FastAPI server (``prefroute serve`` runs it);
``Controller`` / ``AsyncController`` route in-process and call upstreams with the openai client.
The server's FastAPI/uvicorn imports happen only when ``create_app`` is imported.
"""

from prefroute._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (import stays cheap)
_EXPORTS = {
    "AsyncController": "prefroute.serve.controller",
    "Controller": "prefroute.serve.controller",
    "InvalidRequestError": "prefroute.serve.errors",
    "ServeError": "prefroute.serve.errors",
    "UpstreamError": "prefroute.serve.errors",
    "UpstreamRateLimitError": "prefroute.serve.errors",
    "UpstreamTimeoutError": "prefroute.serve.errors",
    "RoutingDecision": "prefroute.serve.routing",
    "ServeSettings": "prefroute.serve.settings",
    "UpstreamSettings": "prefroute.serve.settings",
    "create_app": "prefroute.serve.app",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
