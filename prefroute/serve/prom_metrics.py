"""Prometheus metrics of one server, in its own ``CollectorRegistry`` (no global state).

Labels come from bounded sets only: ``router`` is a served router's name (or ``none`` when the
request named no served router), ``side`` is strong / weak / none, ``status`` the HTTP status,
``outcome`` ok / error (a stream that broke after its 200 counts as ``error``).

Other components set the gauges through ``set_threshold``, ``set_strong_share`` and
``set_spend`` (the budget controller owns the served threshold and the spend).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

NO_ROUTER = "none"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_ROUTING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PromMetrics:
    """The counters, histograms and gauges ``/metrics`` serves."""

    def __init__(self, routers: Iterable[str]) -> None:
        self.routers = frozenset(routers)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "prefroute_requests",
            "Requests answered, by router, side served, HTTP status and outcome.",
            ["router", "side", "status", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "prefroute_routing_decisions",
            "Routing decisions, by router and the side the router chose.",
            ["router", "side"],
            registry=r,
        )
        self.failovers = Counter(
            "prefroute_failovers",
            "Requests the other side answered because the chosen upstream failed.",
            ["router", "from_side", "to_side"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "prefroute_upstream_failures",
            "Failed upstream calls (including those failover recovered), by side and kind.",
            ["side", "kind"],
            registry=r,
        )
        self.stream_failures = Counter(
            "prefroute_stream_failures",
            "Streams that broke off after the response had started.",
            ["router", "side"],
            registry=r,
        )
        self.routing_latency = Histogram(
            "prefroute_routing_latency_seconds",
            "Time to score a prompt and decide (batching wait included).",
            ["router"],
            buckets=_ROUTING_BUCKETS,
            registry=r,
        )
        self.request_latency = Histogram(
            "prefroute_request_duration_seconds",
            "Time from request to the end of the response.",
            ["router"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.strong_share = Gauge(
            "prefroute_strong_share",
            "Share of routing decisions that chose the strong side (since start unless a "
            "controller sets it over its window).",
            ["router"],
            registry=r,
        )
        self.threshold = Gauge(
            "prefroute_threshold", "The threshold served for router-<name>.", ["router"], registry=r
        )
        self.spend = Gauge(
            "prefroute_spend_usd", "Upstream spend in USD, as the budget controller counts it.",
            registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "prefroute_upstream_tokens",
            "Tokens the upstreams reported in their usage fields, by side and kind.",
            ["side", "kind"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "prefroute_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open.",
            ["side"],
            registry=r,
        )
        self._strong = dict.fromkeys(self.routers, 0)
        self._decided = dict.fromkeys(self.routers, 0)
        self._share_set_by_owner: set[str] = set()  # routers whose share a controller sets

    def router_label(self, router: str | None) -> str:
        """A bounded label: a served router's name, or ``none``."""
        return router if router in self.routers else NO_ROUTER

    # what the request path records ------------------------------------------------------
    def decided(self, router: str, side: str, routing_seconds: float) -> None:
        label = self.router_label(router)
        self.decisions.labels(label, side).inc()
        self.routing_latency.labels(label).observe(routing_seconds)
        if label in self._decided:
            self._decided[label] += 1
            self._strong[label] += side == "strong"
            if label not in self._share_set_by_owner:
                self.strong_share.labels(label).set(self._strong[label] / self._decided[label])

    def answered(
        self, router: str | None, side: str | None, status: int, seconds: float, ok: bool
    ) -> None:
        label = self.router_label(router)
        outcome = "ok" if ok else "error"
        self.requests.labels(label, side or "none", str(status), outcome).inc()
        self.request_latency.labels(label).observe(seconds)

    def failed_over(self, router: str, from_side: str, to_side: str) -> None:
        self.failovers.labels(self.router_label(router), from_side, to_side).inc()

    def upstream_failed(self, side: str, kind: str) -> None:
        self.upstream_failures.labels(side, kind).inc()

    def used_tokens(self, side: str, input_tokens: int, output_tokens: int) -> None:
        self.tokens.labels(side, "input").inc(input_tokens)
        self.tokens.labels(side, "output").inc(output_tokens)

    def stream_failed(self, router: str, side: str) -> None:
        self.stream_failures.labels(self.router_label(router), side).inc()

    # what other components set ------------------------------------------------------------
    def set_threshold(self, router: str, value: float) -> None:
        self.threshold.labels(self.router_label(router)).set(value)

    def set_strong_share(self, router: str, value: float) -> None:
        """Set the share (e.g. over a controller's window); the since-start share stops."""
        label = self.router_label(router)
        self._share_set_by_owner.add(label)
        self.strong_share.labels(label).set(value)

    def set_spend(self, usd: float) -> None:
        self.spend.set(usd)

    def set_breaker(self, side: str, is_open: bool) -> None:
        self.breaker_open.labels(side).set(1.0 if is_open else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
