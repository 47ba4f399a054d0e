"""Failover between the two sides and a circuit breaker per upstream.

A request goes to the side its router chose. When that upstream fails before any byte reached
the client (connection error, 5xx, timeout), the other side answers instead (``failover``).
After ``failure_threshold`` failures in a row an upstream's breaker opens: for ``cooldown_s``
it is skipped (its requests go straight to the other side, or get 503 when failover is off);
then one trial request is let through (half-open), and its outcome closes or reopens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefroute.serve.errors import (
    ServeError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)

SIDES = ("strong", "weak")


def other_side(side: str) -> str:
    return "weak" if side == "strong" else "strong"


def should_fail_over(error: ServeError) -> bool:
    """A failure the other side may not share: unreachable, 5xx, timeout, bad answer.

    Rate limits (429) and the client's own faults (4xx) pass through unchanged."""
    return isinstance(error, UpstreamError) and not isinstance(
        error, (UpstreamRateLimitError, UpstreamUnavailableError)
    )


class CircuitBreaker:
    """closed -> (``failure_threshold`` failures in a row) -> open -> (cool-down) -> half-open."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self.opened_at >= self.cooldown_s else "open"

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a trial through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self._clock() - self.opened_at))

    def allow(self) -> bool:
        """May a request be sent now? In half-open state only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def failed(self) -> None:
        self.failures += 1
        if self._trial_in_flight or (
            self.opened_at is None and self.failures >= self.failure_threshold
        ):
            self.opened_at = self._clock()
            self.times_opened += 1
        self._trial_in_flight = False

    def released(self) -> None:
        """A trial ended without telling whether the upstream works (e.g. client left)."""
        self._trial_in_flight = False


def unavailable(side: str, breaker: CircuitBreaker) -> UpstreamUnavailableError:
    wait = max(1, round(breaker.retry_after_s()))
    return UpstreamUnavailableError(
        f"the {side} upstream failed repeatedly and is paused for {wait} s (circuit breaker open)",
        code="upstream_unavailable",
        headers={"retry-after": str(wait)},
    )
