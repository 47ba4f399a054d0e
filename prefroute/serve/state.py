"""Where the budget controller keeps its state: in this process, or in Redis for replicas.

The state of each controlled router is a window of its last N routed requests (strong-win
probability, side, time), with the number of strong calls in it; beside it, the spend and
priced-response counts per side and the time the state was created. ``LocalState`` keeps
them in memory; ``RedisState`` keeps them in one Redis database, so every replica that
points at it pushes into and reads from the same window. Each update is one Lua script,
which Redis runs atomically: a window and its strong count can never disagree.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from prefroute.errors import ConfigError
from prefroute.serve.errors import redact

SIDES = ("strong", "weak")


@dataclass(frozen=True)
class WindowStats:
    """The window of one router after an update: how many requests, how many went strong."""

    size: int
    strong: int

    @property
    def strong_share(self) -> float | None:
        return self.strong / self.size if self.size else None


@dataclass(frozen=True)
class RecentScores:
    """The latest scores of a window, oldest first, with the time of each request."""

    scores: np.ndarray
    times: np.ndarray


@dataclass(frozen=True)
class SpendTotals:
    """Dollars spent and responses priced per side since the state was created."""

    started: float
    spend: dict[str, float]
    priced: dict[str, int]
    unpriced: int

    @property
    def total_spend(self) -> float:
        return sum(self.spend.values())


class ControllerState:
    """The interface both stores implement (async, so Redis never blocks the event loop)."""

    async def connect(self) -> None:
        """Check the store is reachable (called once at server start)."""

    async def push(
        self, router: str, score: float, strong: bool, now: float, window: int
    ) -> WindowStats:
        """Append one routed request to ``router``'s window, keeping its last ``window``."""
        raise NotImplementedError

    async def window_stats(self, router: str) -> WindowStats:
        raise NotImplementedError

    async def recent(self, router: str, count: int) -> RecentScores:
        """The last ``count`` entries of ``router``'s window."""
        raise NotImplementedError

    async def recent_with_stats(self, router: str, count: int) -> tuple[RecentScores, WindowStats]:
        """``recent`` and ``window_stats`` together (one round trip where the store is remote)."""
        return await self.recent(router, count), await self.window_stats(router)

    async def add_spend(self, side: str, usd: float | None) -> None:
        """Record one response of ``side``: its price, or None when it carried no usage."""
        raise NotImplementedError

    async def spend_totals(self) -> SpendTotals:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections."""


class LocalState(ControllerState):
    """In-process state: one replica's own window and spend."""

    def __init__(self, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, deque[tuple[float, bool, float]]] = {}
        self._strong: dict[str, int] = {}
        self._spend = dict.fromkeys(SIDES, 0.0)
        self._priced = dict.fromkeys(SIDES, 0)
        self._unpriced = 0
        self._started = float(clock())

    async def push(
        self, router: str, score: float, strong: bool, now: float, window: int
    ) -> WindowStats:
        with self._lock:
            entries = self._windows.setdefault(router, deque())
            entries.append((float(score), bool(strong), float(now)))
            count = self._strong.get(router, 0) + int(strong)
            while len(entries) > window:
                count -= int(entries.popleft()[1])
            self._strong[router] = count
            return WindowStats(len(entries), count)

    async def window_stats(self, router: str) -> WindowStats:
        with self._lock:
            return WindowStats(len(self._windows.get(router, ())), self._strong.get(router, 0))

    async def recent(self, router: str, count: int) -> RecentScores:
        with self._lock:
            newest_first = islice(reversed(self._windows.get(router, ())), max(count, 0))
            entries = list(newest_first)[::-1]
        return RecentScores(
            np.array([e[0] for e in entries], dtype=np.float64),
            np.array([e[2] for e in entries], dtype=np.float64),
        )

    async def add_spend(self, side: str, usd: float | None) -> None:
        with self._lock:
            if usd is None:
                self._unpriced += 1
            else:
                self._spend[side] += usd
                self._priced[side] += 1

    async def spend_totals(self) -> SpendTotals:
        with self._lock:
            return SpendTotals(self._started, dict(self._spend), dict(self._priced), self._unpriced)


# Redis ------------------------------------------------------------------------------------
# KEYS[1] window list, KEYS[2] strong count, KEYS[3] how many entries were ever pushed;
# ARGV: entry, is_strong (0/1), window size. Entries are "score|flag|time"; the flag is the
# character after the first "|".
_PUSH = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[3])
local strong = tonumber(ARGV[2])
if strong == 1 then redis.call('INCR', KEYS[2]) end
local limit = tonumber(ARGV[3])
local size = redis.call('LLEN', KEYS[1])
while size > limit do
  local old = redis.call('LPOP', KEYS[1])
  local bar = string.find(old, '|', 1, true)
  if string.sub(old, bar + 1, bar + 1) == '1' then redis.call('DECR', KEYS[2]) end
  size = size - 1
end
return {size, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

# KEYS[1] window list, KEYS[2] strong count, KEYS[3] pushed count; ARGV: the pushed count at
# the caller's last read, how many entries it keeps. Returns the pushed count, only the entries
# pushed since (at most ARGV[2]; all of them when the count went back, e.g. after a flush),
# and the window's size and strong count.
_READ_NEW = """
local pushed = tonumber(redis.call('GET', KEYS[3]) or '0')
local want = tonumber(ARGV[2])
local new = pushed - tonumber(ARGV[1])
if new < 0 or new > want then new = want end
local entries = {}
if new > 0 then entries = redis.call('LRANGE', KEYS[1], -new, -1) end
local size = redis.call('LLEN', KEYS[1])
return {pushed, entries, size, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

# KEYS[1] spend hash, KEYS[2] started; ARGV: side, usd ('' when unpriced), now.
_SPEND = """
redis.call('SETNX', KEYS[2], ARGV[3])
if ARGV[2] == '' then
  redis.call('HINCRBY', KEYS[1], 'unpriced', 1)
else
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. '_usd', ARGV[2])
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. '_priced', 1)
end
return 1
"""


def check_state_url(url: str) -> str:
    """``url`` if it is ``redis://HOST:PORT/DB`` (or rediss://, unix://); ConfigError otherwise."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"--state-url must look like redis://HOST:PORT/DB; got {redact(str(url))!r}"
        )
    if parts.scheme != "unix":
        db = parts.path.strip("/")
        if not parts.hostname or (db and not db.isdigit()):
            raise ConfigError(
                f"--state-url must look like redis://HOST:PORT/DB; got {redact(url)!r}"
            )
    return url


class RedisState(ControllerState):
    """State in Redis under ``prefix``: shared by every replica given the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "prefroute", clock: Any = time.time) -> None:
        self.url = check_state_url(url)
        self.prefix = prefix
        self._clock = clock
        self._client: Any = None
        self._push: Any = None
        self._spend_script: Any = None
        self._read_new: Any = None
        # per router: the pushed count at the last read and the newest entries seen since
        self._seen: dict[str, tuple[int, deque[tuple[float, float]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client binds to its event loop
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(self.url, decode_responses=True)
            self._push = self._client.register_script(_PUSH)
            self._spend_script = self._client.register_script(_SPEND)
            self._read_new = self._client.register_script(_READ_NEW)
            self._loop = loop
        return self._client

    async def connect(self) -> None:
        import redis

        try:
            await self.client.ping()
            await self.client.setnx(self._key("started"), repr(float(self._clock())))
        except redis.RedisError as e:
            raise ConfigError(
                f"cannot use the controller state at {redact(self.url)}: {type(e).__name__}: "
                f"{redact(str(e))}"
            ) from None

    async def push(
        self, router: str, score: float, strong: bool, now: float, window: int
    ) -> WindowStats:
        client = self.client
        entry = f"{float(score)!r}|{int(strong)}|{float(now)!r}"
        size, count = await self._push(
            keys=[
                self._key("window", router),
                self._key("window_strong", router),
                self._key("pushed", router),
            ],
            args=[entry, int(strong), int(window)],
            client=client,
        )
        return WindowStats(int(size), int(count))

    async def window_stats(self, router: str) -> WindowStats:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self._key("window", router))
            pipe.get(self._key("window_strong", router))
            size, count = await pipe.execute()
        return WindowStats(int(size), int(count or 0))

    async def recent(self, router: str, count: int) -> RecentScores:
        return (await self.recent_with_stats(router, count))[0]

    async def recent_with_stats(self, router: str, count: int) -> tuple[RecentScores, WindowStats]:
        """Reads only the entries pushed since this replica's last read (one round trip)."""
        client = self.client
        last, kept = self._seen.get(router, (0, deque()))
        if kept.maxlen != count:  # a different count: read afresh
            last, kept = -1, deque(maxlen=max(count, 0))
        keys = [self._key(k, router) for k in ("window", "window_strong", "pushed")]
        pushed, entries, size, strong = await self._read_new(
            keys=keys, args=[last, max(count, 0)], client=client
        )
        if int(pushed) < last or last < 0:
            kept.clear()
        new = self._parse(keys[0], entries)
        kept.extend(zip(new.scores.tolist(), new.times.tolist(), strict=True))
        self._seen[router] = (int(pushed), kept)
        scores = np.fromiter((e[0] for e in kept), dtype=np.float64, count=len(kept))
        times = np.fromiter((e[1] for e in kept), dtype=np.float64, count=len(kept))
        return RecentScores(scores, times), WindowStats(int(size), int(strong))

    def _parse(self, key: str, entries: list[str]) -> RecentScores:
        scores = np.empty(len(entries))
        times = np.empty(len(entries))
        for i, entry in enumerate(entries):
            try:
                score, _, when = entry.split("|")
                scores[i], times[i] = float(score), float(when)
            except ValueError:
                raise ConfigError(
                    f"the controller state at {redact(self.url)} holds a malformed entry "
                    f"{entry[:80]!r} in {key!r}; it was not written by prefroute"
                ) from None
        if not np.isfinite(scores).all():
            raise ConfigError(f"the controller state key {key!r} holds a non-finite score")
        return RecentScores(scores, times)

    async def add_spend(self, side: str, usd: float | None) -> None:
        client = self.client
        await self._spend_script(
            keys=[self._key("spend"), self._key("started")],
            args=[side, "" if usd is None else repr(float(usd)), repr(float(self._clock()))],
            client=client,
        )

    async def spend_totals(self) -> SpendTotals:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._key("spend"))
            pipe.get(self._key("started"))
            values, started = await pipe.execute()
        spend = {side: _finite(values.get(f"{side}_usd", 0.0)) for side in SIDES}
        priced = {side: int(values.get(f"{side}_priced", 0)) for side in SIDES}
        start = _finite(started) if started is not None else float(self._clock())
        return SpendTotals(start, spend, priced, int(values.get("unpriced", 0)))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"the controller state holds a non-finite number {value!r}")
    return number


def make_state(state_url: str | None, *, prefix: str = "prefroute") -> ControllerState:
    """Redis state for a URL, in-process state for None."""
    return LocalState() if state_url is None else RedisState(state_url, prefix=prefix)


def check_reachable(state_url: str) -> None:
    """ConfigError unless a Redis server answers at ``state_url`` (checked before serving)."""
    import redis

    client = redis.Redis.from_url(check_state_url(state_url), socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        raise ConfigError(
            f"cannot use the controller state at {redact(state_url)}: {type(e).__name__}: "
            f"{redact(str(e))}"
        ) from None
    finally:
        client.close()
