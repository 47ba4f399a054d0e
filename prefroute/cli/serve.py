"""`prefroute serve`: an OpenAI-compatible server that routes each request to strong or weak."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from prefroute.errors import ConfigError
from prefroute.serve.settings import DEFAULT_BASE_URL, ServeSettings, UpstreamSettings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {e.strerror} (pick another --port)"
            ) from None


@app.command()
def serve(
    checkpoints: list[str] = typer.Argument(
        ..., help="router checkpoint folders, as PATH or NAME=PATH (served as model router-NAME)"
    ),
    strong_model: str = typer.Option(
        None, "--strong-model", help="upstream strong model (default: the router's)"
    ),
    strong_base_url: str = typer.Option(
        DEFAULT_BASE_URL, "--strong-base-url", help="OpenAI-compatible URL"
    ),
    strong_api_key_env: str = typer.Option(
        None,
        "--strong-api-key-env",
        help="NAME of the env variable with the strong key (default OPENAI_API_KEY)",
    ),
    weak_model: str = typer.Option(
        None, "--weak-model", help="upstream weak model (default: the router's)"
    ),
    weak_base_url: str = typer.Option(
        DEFAULT_BASE_URL, "--weak-base-url", help="OpenAI-compatible URL"
    ),
    weak_api_key_env: str = typer.Option(
        None,
        "--weak-api-key-env",
        help="NAME of the env variable with the weak key (default OPENAI_API_KEY)",
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(6060, "--port"),
    routing_text: str = typer.Option(
        "last-user", "--routing-text", help="last-user or conversation"
    ),
    upstream_timeout: float = typer.Option(
        60.0, "--upstream-timeout", help="seconds before an upstream call fails (504)"
    ),
    batch_window_ms: float = typer.Option(
        0.0,
        "--batch-window-ms",
        help="extra wait to fill a routing batch (0: batch what is queued)",
    ),
    max_batch_size: int = typer.Option(
        64, "--max-batch-size", help="prompts per routing batch; 1: no batching"
    ),
    routing_threads: int = typer.Option(
        1, "--routing-threads", help="threads that run the routers"
    ),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
    target_strong_rate: float = typer.Option(
        None, "--target-strong-rate", help="hold this strong-call share online (0-1)"
    ),
    window: int = typer.Option(
        1000, "--window", help="routed requests the strong share is held over"
    ),
    budget_per_hour: float = typer.Option(
        None, "--budget-per-hour", help="pace upstream spend at this many USD per hour"
    ),
    strong_input_price: float = typer.Option(
        0.0, "--strong-input-price", help="USD per 1k input tokens of the strong model"
    ),
    strong_output_price: float = typer.Option(
        0.0, "--strong-output-price", help="USD per 1k output tokens of the strong model"
    ),
    weak_input_price: float = typer.Option(
        0.0, "--weak-input-price", help="USD per 1k input tokens of the weak model"
    ),
    weak_output_price: float = typer.Option(
        0.0, "--weak-output-price", help="USD per 1k output tokens of the weak model"
    ),
    state_url: str = typer.Option(
        None,
        "--state-url",
        help="redis://HOST:PORT/DB: replicas share the controller state (default in-process)",
    ),
    log_dir: str = typer.Option(
        None, "--log-dir", help="journal routed requests here (JSONL, rotated) for the loop"
    ),
    log_responses: bool = typer.Option(
        False, "--log-responses", help="keep answer texts in the journal"
    ),
    shadow_rate: float = typer.Option(
        0.0, "--shadow-rate", help="fraction of requests also sent to the other side"
    ),
    api_key_file: Path = typer.Option(
        None,
        "--api-key-file",
        help="client API keys, one per line (also $PREFROUTE_API_KEYS); /v1/* then needs "
        "'Authorization: Bearer <key>'",
    ),
    max_body_bytes: int = typer.Option(
        4 * 1024 * 1024, "--max-body-bytes", help="larger request bodies get 413 at once"
    ),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", help="seconds for a request body to arrive (else 408)"
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", help="seconds for request headers to arrive (else closed)"
    ),
    keep_alive: float = typer.Option(
        5.0, "--keep-alive", help="seconds an idle client connection stays open"
    ),
    max_client_connections: int = typer.Option(
        2048, "--max-client-connections", help="open client connections; more get 503"
    ),
    failover: bool = typer.Option(
        True,
        "--failover/--no-failover",
        help="when the chosen upstream fails before answering, the other side answers",
    ),
    breaker_failures: int = typer.Option(
        5, "--breaker-failures", help="failures in a row that pause an upstream"
    ),
    breaker_cooldown: float = typer.Option(
        30.0, "--breaker-cooldown", help="seconds a failing upstream is paused"
    ),
    config: Path = typer.Option(
        None, "--config", help="serve.toml: per-side request shaping ([shaping.strong] ...)"
    ),
    check_models: bool = typer.Option(
        True,
        "--check-models/--no-check-models",
        help="warn at start-up when an upstream's /v1/models lacks a model name",
    ),
    otel: bool = typer.Option(
        False, "--otel", help="OpenTelemetry spans (needs pip install 'prefroute[otel]')"
    ),
) -> None:
    """Serve routers behind POST /v1/chat/completions: model router-NAME, router-NAME@30 (30%
    strong calls) or router-NAME-THRESHOLD."""
    from prefroute.serve.budget import budget_settings
    from prefroute.serve.limits import uvicorn_options
    from prefroute.serve.shaping import read_serve_config, shaping_from_config
    from prefroute.serve.state import check_reachable

    try:
        import uvicorn

        from prefroute.serve.app import create_app
    except ImportError as e:
        raise ConfigError(
            f"serving needs FastAPI and uvicorn: pip install 'prefroute[serve]' ({e})"
        ) from None
    # imported here, not at the top: they load the router stack (keeps `--help` fast)

    budget = budget_settings(
        target_strong_rate=target_strong_rate,
        window=window,
        budget_per_hour=budget_per_hour,
        prices=(strong_input_price, strong_output_price, weak_input_price, weak_output_price),
        state_url=state_url,
    )
    settings = ServeSettings(
        routers=checkpoints,
        strong=UpstreamSettings(
            model=strong_model, base_url=strong_base_url, api_key_env=strong_api_key_env
        ),
        weak=UpstreamSettings(
            model=weak_model, base_url=weak_base_url, api_key_env=weak_api_key_env
        ),
        routing_text=routing_text,
        upstream_timeout=upstream_timeout,
        batch_window_ms=batch_window_ms,
        max_batch_size=max_batch_size,
        routing_threads=routing_threads,
        host=host,
        port=port,
        budget=budget,
        log_dir=log_dir,
        log_responses=log_responses,
        shadow_rate=shadow_rate,
        failover=failover,
        breaker_failures=breaker_failures,
        breaker_cooldown_s=breaker_cooldown,
        api_key_file=api_key_file,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
        keep_alive_s=keep_alive,
        max_client_connections=max_client_connections,
        shaping=shaping_from_config(read_serve_config(config), str(config)) if config else {},
        check_models=check_models,
        otel=otel,
    )
    if budget is not None and budget.state_url is not None:
        check_reachable(budget.state_url)
    fastapi_app = create_app(settings)
    _check_port_free(host, port)
    state = fastapi_app.state.prefroute
    names = ", ".join(f"router-{name}" for name in state.table.routers)
    auth = "API keys required" if state.auth else "no client authentication"
    typer.echo(f"serving {names} on http://{host}:{port}/v1 ({auth})", err=True)
    uvicorn.run(
        fastapi_app,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info",
        **uvicorn_options(
            header_timeout_s=header_timeout,
            keep_alive_s=keep_alive,
            max_client_connections=max_client_connections,
        ),
    )


if __name__ == "__main__":
    app()
