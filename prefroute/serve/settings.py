"""Settings of the routing server and the Controller: routers, the two upstreams, limits."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from prefroute.errors import ConfigError, check_choice

if TYPE_CHECKING:  # a type only: importing the router stack here would slow `prefroute --help`
    from prefroute.router import Router
from prefroute.serve.shaping import RequestShaping

if TYPE_CHECKING:
    from prefroute.serve.budget import BudgetSettings

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
ROUTING_TEXTS = ("last-user", "conversation")

RouterSource = Union[str, Path, "Router"]  # noqa: UP007 - "Router" is a forward ref
RoutersSpec = Sequence[str | Path] | Mapping[str, RouterSource]


@dataclass
class UpstreamSettings:
    """Where one side (strong or weak) of the routers is served.

    model: the upstream model name; None uses each router's own strong/weak model name.
    base_url: an OpenAI-compatible endpoint, e.g. ``http://localhost:8000/v1``.
    api_key_env: the NAME of the environment variable that holds the API key (the key itself
        never goes into settings). None: ``OPENAI_API_KEY`` if set, else no key. A name given
        explicitly must be set.
    """

    model: str | None = None
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(
                f"The 'model' parameter of UpstreamSettings must be a non-empty string or None. "
                f"Got {self.model!r} instead."
            )
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                "The 'base_url' parameter of UpstreamSettings must be an http(s) URL. "
                f"Got {self.base_url!r} instead."
            )
        self.base_url = self.base_url.rstrip("/")

    def api_key(self) -> str | None:
        """The key read from the environment now (None when the default variable is unset)."""
        if self.api_key_env is None:
            return os.environ.get(DEFAULT_API_KEY_ENV) or None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"the API key environment variable {self.api_key_env!r} is not set "
                "(export it, or leave out --*-api-key-env for a server that needs no key)"
            )
        return value


@dataclass
class ServeSettings:
    """Everything ``create_app`` needs.

    routers: checkpoint folders as ``"PATH"`` or ``"NAME=PATH"`` (the name defaults to the
        router type), or a mapping name -> folder or loaded Router.
    strong, weak: the upstream of each side.
    routing_text: route on the ``"last-user"`` turn or the whole ``"conversation"``.
    upstream_timeout: seconds an upstream may take to answer (non-streaming: the whole
        answer; streaming: until the first byte and between chunks).
    batch_window_ms: how long the micro-batcher waits for more requests before scoring a batch.
        0 (the default) batches only what queued while the previous batch ran: under load it
        cut routing latency p50 ~15x at 16 clients versus no batching, and a 2 ms window only
        added latency (benchmarks/bench_serve.py).
    max_batch_size: most prompts per routing batch (1 = no batching).
    routing_threads: threads that run the routers (off the event loop).
    max_connections: most open connections per upstream.
    latency_window: how many recent requests the latency percentiles cover.
    host, port: where ``prefroute serve`` listens.
    budget: the online threshold controller (a strong share or a spend rate to hold), or None.
    log_dir, log_responses, shadow_rate, shadow_seed: the preference loop's request journal,
        whether it keeps answer texts, the fraction of requests also sent to the other side
        in the background, and that sampling's seed (``prefroute.serve.journal``).
    failover: when the chosen upstream fails before any byte reached the client, the other
        side answers (``x-prefroute-failover: true``).
    breaker_failures, breaker_cooldown_s: after this many failures in a row an upstream is
        skipped for the cool-down, then tried again with one request.
    api_key_file: a file of client API keys (one per line); with it, or with
        ``$PREFROUTE_API_KEYS``, ``/v1/*`` needs ``Authorization: Bearer <key>``.
    max_body_bytes: larger request bodies get 413 before they are read.
    body_timeout_s: a request body must arrive within this time (else 408).
    header_timeout_s: a connection must complete its request headers within this time of
        opening (or of its last response), else it is closed (slow-client defence).
    keep_alive_s: idle keep-alive connections from clients are closed after this.
    max_client_connections: the most open client connections; more get 503.
    upstream_keepalive_s: idle pooled upstream connections are dropped after this; keep it
        below the upstream's own keep-alive timeout (uvicorn: 5 s).
    shaping: per-side parameters to drop or rename (``--config serve.toml``, see shaping.py).
    check_models: warn at start-up for model names an upstream's /models does not list.
    otel: emit OpenTelemetry spans (needs the ``otel`` extra).
    """

    routers: RoutersSpec
    strong: UpstreamSettings = field(default_factory=UpstreamSettings)
    weak: UpstreamSettings = field(default_factory=UpstreamSettings)
    routing_text: str = "last-user"
    upstream_timeout: float = 60.0
    batch_window_ms: float = 0.0
    max_batch_size: int = 64
    routing_threads: int = 1
    max_connections: int = 512
    latency_window: int = 10_000
    host: str = "127.0.0.1"
    port: int = 6060
    budget: BudgetSettings | None = None
    log_dir: str | Path | None = None
    log_responses: bool = False
    shadow_rate: float = 0.0
    shadow_seed: int | None = None
    failover: bool = True
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    api_key_file: str | Path | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_client_connections: int = 2048
    upstream_keepalive_s: float = 2.0
    shaping: Mapping[str, RequestShaping] = field(default_factory=dict)
    check_models: bool = True
    otel: bool = False

    def __post_init__(self) -> None:
        owner = "ServeSettings"
        check_choice("routing_text", owner, self.routing_text, ROUTING_TEXTS)
        for name in (
            "upstream_timeout",
            "breaker_cooldown_s",
            "body_timeout_s",
            "header_timeout_s",
            "keep_alive_s",
            "upstream_keepalive_s",
        ):
            _check_positive(owner, name, getattr(self, name))
        for name in ("breaker_failures", "max_body_bytes", "max_client_connections"):
            _check_positive_int(owner, name, getattr(self, name))
        unknown = set(self.shaping) - {"strong", "weak"}
        if unknown:
            raise ConfigError(
                f"{owner}: shaping sides must be strong or weak, got {sorted(unknown)}"
            )
        if (
            not isinstance(self.batch_window_ms, (int, float))
            or not 0 <= self.batch_window_ms <= 1000
        ):
            raise ConfigError(
                f"The 'batch_window_ms' parameter of {owner} must be in [0, 1000]. "
                f"Got {self.batch_window_ms!r} instead."
            )
        for name in ("max_batch_size", "routing_threads", "max_connections", "latency_window"):
            _check_positive_int(owner, name, getattr(self, name))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(
                f"The 'port' parameter of {owner} must be in [0, 65535]. Got {self.port!r} instead."
            )
        if isinstance(self.routers, (str, Path)):
            self.routers = [self.routers]
        if not self.routers:
            raise ConfigError("ServeSettings: give at least one router checkpoint")


def _check_positive(owner: str, name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be a number > 0. Got {value!r} instead."
        )


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be an int >= 1. Got {value!r} instead."
        )
