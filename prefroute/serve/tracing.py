"""Optional OpenTelemetry spans (``--otel``): one span per routed request.

The span ``prefroute.request`` covers reading the request, routing and the upstream call until
the response starts; its attributes are the router, the side chosen and served, the strong-win
probability, the threshold, failover and the HTTP status. Exporters are configured the usual
OpenTelemetry way (a TracerProvider set by the application or ``opentelemetry-instrument``).
Without ``--otel`` nothing is imported and spans cost nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefroute.errors import ConfigError


class Tracing:
    """Spans through an OpenTelemetry tracer, or no-ops when tracing is off."""

    def __init__(self, enabled: bool, tracer_provider: Any = None) -> None:
        self._tracer = None
        if not enabled:
            return
        try:
            from opentelemetry import trace
        except ImportError:
            raise ConfigError("--otel needs OpenTelemetry: pip install 'prefroute[otel]'") from None
        self._tracer = trace.get_tracer("prefroute", tracer_provider=tracer_provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        if self._tracer is None:
            return nullcontext(None)
        return self._tracer.start_as_current_span(name, attributes=attributes)


def set_attributes(span: Any, **attributes: Any) -> None:
    """Set the attributes that are not None on ``span`` (None: tracing is off)."""
    if span is None:
        return
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
