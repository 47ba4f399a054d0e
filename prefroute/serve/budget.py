"""The online budget controller: the served threshold moves so a strong-call share (or a spend
rate) holds while the traffic drifts.

Method: a windowed quantile tracker with feedback on the realised share.

- Feed-forward: routing ``p >= t`` sends a share q of requests to the strong model exactly
  when t is the (1 - q)-quantile of the scores p of the traffic. The controller estimates
  that quantile from the scores of the latest ``window // 4`` routed requests, so after a
  shift in traffic the threshold follows within a quarter window. The quarter keeps the
  estimate close to the current traffic while 250 samples (for the default window of
  1,000) still pin the 0.7-quantile to about +-3 points of share.
- Feedback: the realised strong share s over the whole window of N requests (the quantity
  the user asks to hold) corrects the share aimed at, q = R + gain * (R - s): a window
  that fell short after a shift is paid back, one that overshot is held back. With gain 1
  the share over the window returns to R within about one window.
- Start: until the quarter window has filled, the threshold blends the checkpoint's
  calibrated threshold with the window quantile, weighted by how full the window is;
  the feedback is weighted the same way (n / N).

On real mf scores, AlpacaEval-calibrated traffic that turns into GSM8K + MMLU moves a static
threshold from 30% to 4% strong calls; this controller holds 30% +- 1 point after settling
(benchmarks/bench_budget.py). A stochastic-approximation quantile (Robbins-Monro) or a PI
loop on the share alone would need a step size tuned to the traffic rate; the window
quantile needs none.

Budget pacing (``budget_per_hour``) turns the budget into a share and hands it to the same
tracker: with a request rate lambda over the window, mean priced costs c_s and c_w of a
strong and a weak response (from the upstreams' ``usage`` fields and the per-1k-token
prices) and the spend so far against ``budget * elapsed``, the share is
R = (B_eff / lambda - c_w) / (c_s - c_w), clipped to [0, 1], where B_eff repays any
overspend (or releases underspend) over the time the window spans. With both a target share
and a budget, the lower share wins.

Requests that name an explicit threshold (``router-mf-0.7``) bypass the controller; they do
not enter the window, but their spend counts against the budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefroute.calibrate import Prices
from prefroute.errors import ConfigError, check_int, check_range
from prefroute.serve.routing import MODEL_PREFIX, ResolvedModel, RouterTable, RoutingDecision
from prefroute.serve.state import (
    ControllerState,
    SpendTotals,
    WindowStats,
    check_state_url,
    make_state,
)

SECONDS_PER_HOUR = 3600.0
NOTHING_STRONG = float(np.nextafter(1.0, 2.0))  # a share of 0: no probability reaches it
MIN_HORIZON_S = 60.0  # overspend is repaid over at least a minute, so a burst does not slam


@dataclass
class BudgetSettings:
    """What the controller holds.

    target_strong_rate: the strong-call share to hold over the last ``window`` requests.
    budget_per_hour: dollars per hour to pace spend at (needs ``prices``).
    window: how many recent routed requests the share is held over.
    prices: per-1k-token prices of each side (``Prices``), used with the upstream usage.
    state_url: ``redis://HOST:PORT/DB`` to share the state between replicas; None: in-process.
    state_prefix: the Redis key prefix (replicas that hold one target share it).
    gain: the feedback on the realised share (0: the window quantile alone).
    refresh_every: requests between re-reads of the recent scores, per replica (None: every
        request in-process, every 8 with Redis).
    """

    target_strong_rate: float | None = None
    budget_per_hour: float | None = None
    window: int = 1000
    prices: Prices | None = None
    state_url: str | None = None
    state_prefix: str = "prefroute"
    gain: float = 1.0
    refresh_every: int | None = None

    def __post_init__(self) -> None:
        owner = "BudgetSettings"
        if self.target_strong_rate is None and self.budget_per_hour is None:
            raise ConfigError(f"{owner}: give a target_strong_rate, a budget_per_hour, or both")
        if self.target_strong_rate is not None:
            check_range("target_strong_rate", owner, self.target_strong_rate, low=0.0, high=1.0)
        if self.budget_per_hour is not None:
            check_range("budget_per_hour", owner, self.budget_per_hour, low=0.0)
            if self.prices is None:
                raise ConfigError(
                    "--budget-per-hour needs the prices of both sides "
                    "(--strong-input-price/--strong-output-price, USD per 1k tokens)"
                )
        check_int("window", owner, self.window, low=4)
        check_range("gain", owner, self.gain, low=0.0, high=10.0)
        if self.refresh_every is None:  # a Redis round trip per request is not needed
            self.refresh_every = 1 if self.state_url is None else 8
        check_int("refresh_every", owner, self.refresh_every, low=1)
        if self.state_url is not None:
            check_state_url(self.state_url)

    @property
    def quantile_window(self) -> int:
        return max(1, self.window // 4)


def usage_cost(prices: Prices, side: str, usage: Any) -> float | None:
    """Dollars of one response from its OpenAI ``usage`` object; None if it has no token counts."""
    if not isinstance(usage, Mapping):
        return None
    tokens_in = usage.get("prompt_tokens", usage.get("input_tokens"))
    tokens_out = usage.get("completion_tokens", usage.get("output_tokens"))
    counts = []
    for value in (tokens_in, tokens_out):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return None
        counts.append(float(value))
    if side == "strong":
        per_call, per_in, per_out = (
            prices.strong_per_call, prices.strong_per_1k_input, prices.strong_per_1k_output
        )  # fmt: skip
    else:
        per_call, per_in, per_out = (
            prices.weak_per_call, prices.weak_per_1k_input, prices.weak_per_1k_output
        )  # fmt: skip
    return per_call + (counts[0] * per_in + counts[1] * per_out) / 1000.0


def budget_share(
    budget_per_hour: float,
    totals: SpendTotals,
    request_times: np.ndarray,
    now: float,
) -> float | None:
    """The strong share that paces spend at ``budget_per_hour``; None until costs are known.

    request_times: when the recent routed requests arrived (their rate is the traffic rate).
    """
    if totals.priced["strong"] == 0 or len(request_times) < 2:
        return None
    span = float(request_times[-1] - request_times[0])
    if span <= 0:
        return None
    rate_per_hour = (len(request_times) - 1) / span * SECONDS_PER_HOUR
    cost_strong = totals.spend["strong"] / totals.priced["strong"]
    cost_weak = totals.spend["weak"] / totals.priced["weak"] if totals.priced["weak"] else 0.0
    elapsed_h = max(0.0, now - totals.started) / SECONDS_PER_HOUR
    overspend = totals.total_spend - budget_per_hour * elapsed_h
    horizon_h = max(span, MIN_HORIZON_S) / SECONDS_PER_HOUR
    budget_now = budget_per_hour - overspend / horizon_h
    per_request = budget_now / rate_per_hour
    if cost_strong <= cost_weak:
        return 1.0 if per_request >= cost_weak else 0.0
    return float(np.clip((per_request - cost_weak) / (cost_strong - cost_weak), 0.0, 1.0))


def _sorted_quantile(ascending: np.ndarray, level: float) -> float:
    """``np.quantile(x, level)`` (linear) of an already sorted array, without sorting again."""
    position = level * (len(ascending) - 1)
    low = int(position)
    high = min(low + 1, len(ascending) - 1)
    return float(ascending[low] + (ascending[high] - ascending[low]) * (position - low))


@dataclass
class _RouterTrack:
    """What one replica caches about one router's window."""

    calibrated: float
    recent: np.ndarray = field(default_factory=lambda: np.empty(0))
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    stats: WindowStats = field(default_factory=lambda: WindowStats(0, 0))
    since_refresh: int = 1 << 30  # refresh on first use
    threshold: float = math.nan


class BudgetController:
    """Chooses the threshold of every controlled request and records what was routed."""

    def __init__(
        self,
        settings: BudgetSettings,
        calibrated_thresholds: Mapping[str, float],
        state: ControllerState | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state or make_state(settings.state_url, prefix=settings.state_prefix)
        self.clock = clock
        self._tracks = {name: _RouterTrack(float(t)) for name, t in calibrated_thresholds.items()}
        self._totals: SpendTotals | None = None
        self._target = settings.target_strong_rate

    # the request path -------------------------------------------------------------------
    async def threshold(self, router: str) -> float:
        """The threshold to route the next request of ``router`` with."""
        track = self._tracks[router]
        if track.since_refresh >= self.settings.refresh_every:
            await self._refresh(router, track)
        track.since_refresh += 1
        track.threshold = self._threshold_from(track)
        return track.threshold

    async def record(self, router: str, strong_win_prob: float, strong: bool) -> WindowStats:
        """Add a routed request to the shared window."""
        track = self._tracks[router]
        track.stats = await self.state.push(
            router, strong_win_prob, strong, self.clock(), self.settings.window
        )
        return track.stats

    async def record_usage(self, side: str, usage: Any) -> float | None:
        """Price a response from its usage and add it to the spend; its dollars (None: unpriced)."""
        if self.settings.prices is None:
            return None
        usd = usage_cost(self.settings.prices, side, usage)
        await self.state.add_spend(side, usd)
        return usd

    # the method -------------------------------------------------------------------------
    async def _refresh(self, router: str, track: _RouterTrack) -> None:
        need = self.settings.quantile_window
        if self.settings.budget_per_hour is not None:
            need = self.settings.window  # the request rate is measured over the whole window
        recent, track.stats = await self.state.recent_with_stats(router, need)
        track.recent = np.sort(recent.scores[-self.settings.quantile_window :])
        track.times = recent.times
        track.since_refresh = 0
        if self.settings.prices is not None:  # spend is shown whenever it is priced
            self._totals = await self.state.spend_totals()
        if self.settings.budget_per_hour is not None:
            self._target = self._combined_target(track)

    def _combined_target(self, track: _RouterTrack) -> float | None:
        assert self.settings.budget_per_hour is not None and self._totals is not None
        paced = budget_share(self.settings.budget_per_hour, self._totals, track.times, self.clock())
        targets = [r for r in (self.settings.target_strong_rate, paced) if r is not None]
        return min(targets) if targets else None

    def _threshold_from(self, track: _RouterTrack) -> float:
        target = self._target
        if target is None:  # a budget alone, before any strong response was priced
            return track.calibrated
        fill = min(1.0, track.stats.size / self.settings.window)
        share = track.stats.strong_share
        aim = target
        if share is not None and self.settings.budget_per_hour is None:
            aim = target + self.settings.gain * fill * (target - share)
        aim = float(np.clip(aim, 0.0, 1.0))
        if aim == 0.0:
            return NOTHING_STRONG
        if aim == 1.0:
            return 0.0
        scores = track.recent
        if len(scores) == 0:
            return track.calibrated
        quantile = _sorted_quantile(scores, 1.0 - aim)
        weight = min(1.0, len(scores) / self.settings.quantile_window)
        return float(np.clip(weight * quantile + (1 - weight) * track.calibrated, 0.0, 1.0))

    # what operators see -----------------------------------------------------------------
    def current_threshold(self, router: str) -> float | None:
        value = self._tracks[router].threshold
        return None if math.isnan(value) else value

    def strong_share(self, router: str) -> float | None:
        """The realised strong share over the window (as of this replica's last update)."""
        return self._tracks[router].stats.strong_share

    def target_share(self) -> float | None:
        return self._target

    def spend_usd(self) -> float | None:
        return None if self._totals is None else self._totals.total_spend

    def headers(self, router: str) -> dict[str, str]:
        headers = {}
        share = self.strong_share(router)
        if share is not None:
            headers["x-prefroute-strong-share"] = f"{share:.6f}"
        if self._target is not None:
            headers["x-prefroute-target-strong-share"] = f"{self._target:.6f}"
        spend = self.spend_usd()
        if spend is not None:
            headers["x-prefroute-spend-usd"] = f"{spend:.6f}"
        return headers

    async def snapshot(self) -> dict[str, Any]:
        """The JSON metrics: per router threshold and window share; the spend."""
        routers = {}
        for name, track in self._tracks.items():
            stats = await self.state.window_stats(name)
            routers[name] = {
                "threshold": self.current_threshold(name),
                "calibrated_threshold": track.calibrated,
                "window_requests": stats.size,
                "window_strong": stats.strong,
                "strong_share": stats.strong_share,
            }
        totals = await self.state.spend_totals()
        return {
            "method": "window quantile + share feedback",
            "target_strong_rate": self.settings.target_strong_rate,
            "budget_per_hour": self.settings.budget_per_hour,
            "target_share_now": self._target,
            "window": self.settings.window,
            "state": "redis" if self.settings.state_url else "in-process",
            "routers": routers,
            "spend_usd": {**totals.spend, "total": totals.total_spend},
            "priced_responses": totals.priced,
            "unpriced_responses": totals.unpriced,
        }

    async def connect(self) -> None:
        await self.state.connect()

    async def aclose(self) -> None:
        await self.state.aclose()


def is_controlled(resolved: ResolvedModel) -> bool:
    """True for ``router-<name>``; a request naming its own threshold bypasses the controller."""
    return resolved.model_id == f"{MODEL_PREFIX}{resolved.router_name}"


async def decide(
    controller: BudgetController | None,
    table: RouterTable,
    resolved: ResolvedModel,
    strong_win_prob: float,
) -> tuple[RoutingDecision, dict[str, str]]:
    """The routing decision of one request, through the controller when it applies; its headers."""
    if controller is None:
        return table.decide(resolved, strong_win_prob), {}
    if not is_controlled(resolved):
        return table.decide(resolved, strong_win_prob), {"x-prefroute-controlled": "false"}
    threshold = await controller.threshold(resolved.router_name)
    decision = table.decide(dataclasses.replace(resolved, threshold=threshold), strong_win_prob)
    await controller.record(resolved.router_name, strong_win_prob, decision.is_strong)
    return decision, {"x-prefroute-controlled": "true", **controller.headers(resolved.router_name)}


def budget_settings(
    *,
    target_strong_rate: float | None,
    window: int,
    budget_per_hour: float | None,
    prices: tuple[float, float, float, float],
    state_url: str | None,
) -> BudgetSettings | None:
    """The controller settings of ``prefroute serve``'s options; None when no target is set.

    prices: USD per 1k (strong input, strong output, weak input, weak output) tokens.
    """
    if target_strong_rate is None and budget_per_hour is None:
        if state_url is not None:
            raise ConfigError("--state-url needs --target-strong-rate or --budget-per-hour")
        return None
    strong_in, strong_out, weak_in, weak_out = prices
    priced = budget_per_hour is not None or any(prices)
    return BudgetSettings(
        target_strong_rate=target_strong_rate,
        budget_per_hour=budget_per_hour,
        window=window,
        prices=Prices(
            strong_per_1k_input=strong_in,
            strong_per_1k_output=strong_out,
            weak_per_1k_input=weak_in,
            weak_per_1k_output=weak_out,
        )
        if priced
        else None,
        state_url=state_url,
    )
