"""Counters and latency percentiles of the routing server (served as JSON at ``/metrics``).

Counts are exact since start; latency percentiles cover the most recent ``window`` requests.
Everything runs on the event loop thread, but a lock keeps snapshots consistent if a
caller records from another thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

import numpy as np

from prefroute.serve.routing import RoutingDecision

_PERCENTILES = (50, 90, 99)


def latency_summary(seconds: deque[float] | list[float]) -> dict[str, float | int | None]:
    """count, mean and p50/p90/p99 in milliseconds (None when there is no sample)."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if len(values) == 0:
        return {"count": 0, "mean_ms": None, **{f"p{q}_ms": None for q in _PERCENTILES}}
    points = np.percentile(values, _PERCENTILES)
    return {
        "count": int(len(values)),
        "mean_ms": round(float(values.mean()), 4),
        **{f"p{q}_ms": round(float(v), 4) for q, v in zip(_PERCENTILES, points, strict=True)},
    }


class Metrics:
    """What the server has done: requests, routing decisions, errors, latencies."""

    def __init__(self, window: int = 10_000) -> None:
        self.started = time.time()
        self._lock = threading.Lock()
        self.requests_total = 0
        self.responses_by_status: Counter[int] = Counter()
        self.errors_by_type: Counter[str] = Counter()
        self.stream_errors = 0
        self.requests_per_model: Counter[str] = Counter()
        self._router_counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._model_id_counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._routing_latency: deque[float] = deque(maxlen=window)
        self._total_latency: deque[float] = deque(maxlen=window)

    def request_started(self) -> None:
        with self._lock:
            self.requests_total += 1

    def routed(self, decision: RoutingDecision, routing_seconds: float) -> None:
        with self._lock:
            self.requests_per_model[decision.upstream_model] += 1
            self._router_counts[decision.router_name][decision.side] += 1
            self._model_id_counts[decision.model_id][decision.side] += 1
            self._routing_latency.append(routing_seconds)

    def finished(self, status: int, total_seconds: float, error_type: str | None = None) -> None:
        """A response went out with ``status`` (for streams: when the stream ended)."""
        with self._lock:
            self.responses_by_status[status] += 1
            if error_type is not None:
                self.errors_by_type[error_type] += 1
            self._total_latency.append(total_seconds)

    def stream_failed(self, error_type: str) -> None:
        """A stream that had started (status 200) broke off: the client got an error event."""
        with self._lock:
            self.stream_errors += 1
            self.errors_by_type[error_type] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routers = {name: _rate(counts) for name, counts in self._router_counts.items()}
            model_ids = {
                model_id: _rate(counts) for model_id, counts in self._model_id_counts.items()
            }
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": {
                    "total": self.requests_total,
                    "finished": sum(self.responses_by_status.values()),
                    "in_flight": self.requests_total - sum(self.responses_by_status.values()),
                    "routed": sum(self.requests_per_model.values()),
                    "by_status": {str(k): v for k, v in sorted(self.responses_by_status.items())},
                },
                "requests_per_model": dict(self.requests_per_model),
                "routers": routers,
                "router_models": model_ids,
                "errors": {
                    "total": sum(self.errors_by_type.values()),
                    "by_type": dict(self.errors_by_type),
                    "stream_errors": self.stream_errors,
                },
                "routing_latency": latency_summary(self._routing_latency),
                "total_latency": latency_summary(self._total_latency),
            }


def _rate(counts: Counter[str]) -> dict[str, Any]:
    strong, weak = counts["strong"], counts["weak"]
    total = strong + weak
    return {
        "requests": total,
        "strong": strong,
        "weak": weak,
        "strong_rate": strong / total if total else None,
    }
