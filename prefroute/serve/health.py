"""Liveness, readiness and the start-up check of upstream model names.

Ready means at least one upstream answers ``GET /models`` (any status below 500) and its
circuit breaker is not open. Probes run concurrently with a short timeout, and a result is
reused for ``cache_s`` so a busy orchestrator cannot turn readiness probes into load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from prefroute._logging import logger
from prefroute.serve.errors import ServeError
from prefroute.serve.failover import CircuitBreaker
from prefroute.serve.upstream import Upstream


class Readiness:
    """Probes the upstreams for ``/health/ready``."""

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        breakers: Mapping[str, CircuitBreaker],
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
    ) -> None:
        self.upstreams = upstreams
        self.breakers = breakers
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def _probe(self, side: str) -> dict[str, Any]:
        breaker = self.breakers[side]
        try:
            models = await self.upstreams[side].models(timeout=self.timeout_s)
        except ServeError as e:
            return {"ok": False, "error": e.code, "circuit": breaker.state}
        return {"ok": breaker.state != "open", "models": len(models), "circuit": breaker.state}

    async def check(self) -> dict[str, Any]:
        """``{"status": "ready"|"unavailable", "upstreams": {side: {...}}}``."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1]
            sides = list(self.upstreams)
            results = await asyncio.gather(*(self._probe(s) for s in sides))
            upstreams = dict(zip(sides, results, strict=True))
            ready = any(r["ok"] for r in upstreams.values())
            report = {"status": "ready" if ready else "unavailable", "upstreams": upstreams}
            self._cached = (time.monotonic(), report)
            return report


async def check_upstream_models(
    upstreams: Mapping[str, Upstream], wanted: Mapping[str, set[str]], timeout_s: float = 5.0
) -> dict[str, list[str]]:
    """Warn for every model a side will request that its upstream's /models does not list.

    Returns the missing names per side (a side whose /models cannot be read is skipped with a
    warning: many providers list only some models, so this never stops the server)."""
    missing: dict[str, list[str]] = {}

    async def one(side: str) -> None:
        try:
            listed = set(await upstreams[side].models(timeout=timeout_s))
        except ServeError as e:
            logger.warning("could not list the %s upstream's models: %s", side, e.message)
            return
        absent = sorted(wanted[side] - listed)
        if absent:
            missing[side] = absent
            logger.warning(
                "the %s upstream does not list model(s) %s in GET /models "
                "(requests routed there may fail; check --%s-model)",
                side,
                ", ".join(absent),
                side,
            )

    await asyncio.gather(*(one(side) for side in wanted))
    return missing
