"""Helpers shared by the serving tests: the server with the CLI's uvicorn limits, clients,
Prometheus parsing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families
from upstream_server import ServerThread

from prefroute.serve import ServeSettings, create_app
from prefroute.serve.limits import uvicorn_options


@contextmanager
def serving(settings: ServeSettings, **server_options) -> Iterator[str]:
    """The routing server with the uvicorn limits the CLI uses; yields its base URL."""
    options = uvicorn_options(
        header_timeout_s=settings.header_timeout_s,
        keep_alive_s=settings.keep_alive_s,
        max_client_connections=settings.max_client_connections,
    )
    with ServerThread(create_app(settings), **{**options, **server_options}) as server:
        yield server.url


def oai(url: str, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def metric_samples(url: str) -> dict[str, list]:
    """name -> samples of the Prometheus text at /metrics, parsed by prometheus_client."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return {f.name: f.samples for f in families}


def value(samples: list, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
