"""The routing server in operations, over real HTTP on 127.0.0.1 (issue 13, items 3-5).

Failover and circuit breakers, health, cancellation of abandoned calls, Prometheus metrics,
request ids, tracing, the Responses and completions APIs, request shaping and the start-up
model check. Upstreams are real servers (tests/upstream_server.py); the router is the mf
router of test_serve.py, trained on the real AlpacaEval battles.
"""

from __future__ import annotations

import logging
import time

import httpx
import openai
import pytest
import test_serve
from serve_helpers import dead_url, metric_samples, oai, serving, value
from test_serve import STRONG, WEAK, local_side, make_settings, user
from upstream_server import ServerThread

from prefroute.errors import ConfigError
from prefroute.serve import create_app
from prefroute.serve.failover import CircuitBreaker
from prefroute.serve.shaping import read_serve_config, shaping_from_config

# the fixtures of test_serve.py (the trained router is shared, not trained twice)
alpaca_prompts = test_serve.alpaca_prompts
mf_checkpoint = test_serve.mf_checkpoint
upstreams = test_serve.upstreams


# C. failover, circuit breaker, health, cancellation ------------------------------------------
def test_failover_with_a_dead_strong_upstream(mf_checkpoint, upstreams, alpaca_prompts):
    _, router = mf_checkpoint
    strong, weak = upstreams
    prompts = alpaca_prompts[:40]
    sides = [local_side(router, p) for p in prompts]
    assert 0 < sides.count("strong") < len(prompts)
    settings = make_settings({"mf": router}, strong, weak)
    settings.strong.base_url = dead_url()
    with serving(settings) as url:
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200  # weak is up
        for i, (prompt, side) in enumerate(zip(prompts, sides, strict=True)):
            if i % 3 == 0:
                with oai(url).chat.completions.with_streaming_response.create(
                    model="router-mf", messages=user(prompt), stream=True
                ) as raw:
                    headers = raw.headers
                    text = "".join(
                        c.choices[0].delta.content or "" for c in raw.parse() if c.choices
                    )
            else:
                raw = oai(url).chat.completions.with_raw_response.create(
                    model="router-mf", messages=user(prompt)
                )
                headers, text = raw.headers, raw.parse().choices[0].message.content
            assert text == f"weak-up/{WEAK} echoes: {prompt[:60]}"  # answered, by weak
            assert headers["x-prefroute-model"] == WEAK
            assert headers.get("x-prefroute-failover") == ("true" if side == "strong" else None)
            if side == "strong":
                assert headers["x-prefroute-routed-side"] == "strong"
        samples = metric_samples(url)
        snapshot = httpx.get(f"{url}/metrics.json", timeout=10).json()
    n_strong = sides.count("strong")
    assert value(samples["prefroute_failovers"], "prefroute_failovers_total") == n_strong
    # after 5 failures in a row the breaker opened: later strong picks went straight to weak
    failures = samples["prefroute_upstream_failures"]
    assert value(failures, "prefroute_upstream_failures_total", side="strong") == 5
    assert snapshot["failover"]["circuits"]["strong"] == "open"
    assert value(samples["prefroute_upstream_circuit_open"], "prefroute_upstream_circuit_open",
                 side="strong") == 1  # fmt: skip
    requests = samples["prefroute_requests"]
    assert value(requests, "prefroute_requests_total", status="200", side="weak") == 40
    assert weak.count() == 40


def test_failover_on_5xx_and_timeout_and_no_failover(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    settings = make_settings({"mf": router}, strong, weak, upstream_timeout=2.0)
    with serving(settings) as url:
        for mode in ("fail", "hang"):
            strong.mode = mode
            raw = oai(url).chat.completions.with_raw_response.create(
                model="router-mf-0", messages=user("hi")
            )
            assert raw.headers["x-prefroute-failover"] == "true"
            assert raw.parse().model == WEAK
        strong.mode, weak.mode = "fail", "fail"  # both sides fail: 502, retry will not help
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "router-mf-0", "messages": user("hi")},
            timeout=10,
        )
        assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
        strong.mode = weak.mode = "rate_limit"  # 429 is not a failure to fail over from
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "router-mf-0", "messages": user("hi")},
            timeout=10,
        )
        assert response.status_code == 429 and "x-prefroute-failover" not in response.headers
    assert strong.count() == 4 and weak.count() == 3
    strong.mode = "fail"
    weak.mode = "ok"
    settings = make_settings(
        {"mf": router}, strong, weak, failover=False, breaker_failures=2, breaker_cooldown_s=3.0
    )
    with serving(settings) as url:
        statuses = []
        for _ in range(4):
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "router-mf-0", "messages": user("hi")},
                timeout=10,
            )
            statuses.append(response.status_code)
        assert statuses == [502, 502, 503, 503]  # the breaker opened after 2 failures
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert 1 <= int(response.headers["retry-after"]) <= 3
        assert strong.count() == 4 + 2
        strong.mode = "ok"
        time.sleep(3.1)  # the cool-down ends: one trial goes through and closes the breaker
        for _ in range(2):
            assert (
                oai(url).chat.completions.create(model="router-mf-0", messages=user("hi")).model
                == STRONG
            )


def test_circuit_breaker_states():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open" and breaker.allow() and not breaker.allow()
    breaker.failed()  # the trial failed: open for another cool-down
    assert breaker.state == "open" and breaker.retry_after_s() == 10
    now[0] = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_health_live_and_ready(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    settings = make_settings({"mf": router}, strong, weak)
    settings.strong.base_url = dead_url()
    settings.weak.base_url = dead_url()
    with serving(settings) as url:
        for path in ("/health", "/health/live"):
            assert httpx.get(f"{url}{path}", timeout=10).json()["status"] == "ok"
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert ready.json()["upstreams"]["strong"]["ok"] is False
        assert "127.0.0.1" not in ready.text


def test_a_client_that_leaves_cancels_the_upstream_call(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    strong.mode = "hang"
    strong.hang_s = 20
    settings = make_settings({"mf": router}, strong, weak, failover=False)
    with serving(settings) as url:
        for stream in (False, True):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "router-mf-0", "messages": user("hi"), "stream": stream},
                    timeout=1.0,
                )
        deadline = time.monotonic() + 10
        while strong.disconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert strong.disconnects == 2  # the upstream saw both calls go, well before 20 s
        # a stream the client drops half-way is closed at the upstream too
        weak.mode, weak.hang_s = "stall_stream", 20
        body = {"model": "router-mf-1", "messages": user("hi there"), "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the stream started; then the client goes
        deadline = time.monotonic() + 10
        while weak.disconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert weak.disconnects == 1
        snapshot = httpx.get(f"{url}/metrics.json", timeout=10).json()
    assert snapshot["requests"]["by_status"]["499"] == 2


# D. observability --------------------------------------------------------------------------
def test_prometheus_metrics_parse_and_use_bounded_labels(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    weak.mode = "break_stream"
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        for model in ("router-mf", "router-mf-0", "router-mf-0.123456", "router-mf"):
            oai(url).chat.completions.create(model=model, messages=user("prove it"))
        for model in ("gpt-4", "router-nope", "router-mf-7"):
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": model, "messages": user("x")},
                timeout=10,
            )
        with pytest.raises(openai.APIError, match="failed mid-stream"):
            for _ in oai(url).chat.completions.create(
                model="router-mf-1", messages=user("hi there"), stream=True
            ):
                pass
        samples = metric_samples(url)
    routers = {s.labels["router"] for v in samples.values() for s in v if "router" in s.labels}
    assert routers == {"mf", "none"}  # never the raw model string
    requests = samples["prefroute_requests"]
    assert value(requests, "prefroute_requests_total") == 8
    assert value(requests, "prefroute_requests_total", router="none", status="404") == 2
    assert value(requests, "prefroute_requests_total", router="none", status="400") == 1
    # the broken stream had status 200 but counts as a failure
    assert value(requests, "prefroute_requests_total", status="200", outcome="error") == 1
    assert value(samples["prefroute_stream_failures"], "prefroute_stream_failures_total") == 1
    routing = samples["prefroute_routing_latency_seconds"]
    assert value(routing, "prefroute_routing_latency_seconds_count", router="mf") == 5
    assert value(samples["prefroute_threshold"], "prefroute_threshold") == pytest.approx(
        router.threshold
    )
    decided = value(samples["prefroute_routing_decisions"], "prefroute_routing_decisions_total")
    strong_share = value(samples["prefroute_routing_decisions"],
                         "prefroute_routing_decisions_total", side="strong") / decided  # fmt: skip
    assert value(samples["prefroute_strong_share"], "prefroute_strong_share") == strong_share
    assert "prefroute_spend_usd" in samples
    # token usage as the upstreams reported it (the fake upstream: 10 prompt tokens per answer)
    tokens = samples["prefroute_upstream_tokens"]
    assert value(tokens, "prefroute_upstream_tokens_total", kind="input") == 10 * 4


def test_request_ids_are_accepted_or_made_echoed_and_passed_upstream(
    mf_checkpoint, upstreams, caplog
):
    _, router = mf_checkpoint
    strong, weak = upstreams
    caplog.set_level(logging.DEBUG, logger="prefroute")
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        endpoint = f"{url}/v1/chat/completions"
        body = {"model": "router-mf-0", "messages": user("hi")}
        mine = httpx.post(endpoint, json=body, headers={"x-request-id": "trace-42.a"})
        made = httpx.post(endpoint, json=body)
        odd = httpx.post(endpoint, json=body, headers={"x-request-id": "bad id\twith spaces"})
        invalid = httpx.post(endpoint, json={"model": "gpt-4"}, headers={"x-request-id": "e-1"})
    assert mine.headers["x-request-id"] == "trace-42.a"
    assert len(made.headers["x-request-id"]) == 32
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    assert invalid.status_code == 404 and invalid.headers["x-request-id"] == "e-1"
    assert strong.request_ids == [
        "trace-42.a",
        made.headers["x-request-id"],
        odd.headers["x-request-id"],
    ]
    assert "request trace-42.a routed" in caplog.text


def test_otel_spans(mf_checkpoint, upstreams, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _, router = mf_checkpoint
    strong, weak = upstreams
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings({"mf": router}, strong, weak, otel=True)
    with ServerThread(create_app(settings, tracer_provider=provider)) as server:
        oai(server.url).chat.completions.create(model="router-mf-1", messages=user("hi"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "prefroute.request"
    assert span.attributes["router"] == "mf" and span.attributes["side"] == "weak"
    assert span.attributes["status"] == 200 and span.attributes["failover"] is False
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry", None)
    with pytest.raises(ConfigError, match=r"pip install 'prefroute\[otel\]'"):
        create_app(settings)


# E. more of the OpenAI surface -------------------------------------------------------------
def test_responses_api_through_the_openai_client(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        client = oai(url)
        raw = client.responses.with_raw_response.create(model="router-mf-0", input="hello there")
        response = raw.parse()
        assert raw.headers["x-prefroute-side"] == "strong"
        assert response.model == STRONG
        assert response.output_text == f"strong-up/{STRONG} echoes: hello there"
        response = client.responses.create(
            model="router-mf-1",
            instructions="be brief",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "a list"}]}],
        )
        assert response.model == WEAK and response.output_text.endswith("echoes: a list")
        events = list(client.responses.create(model="router-mf-1", input="stream me", stream=True))
        kinds = [e.type for e in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == f"weak-up/{WEAK} echoes: stream me"
        assert events[0].response.model == events[-1].response.model == WEAK
        # a follow-up goes to the side that made the response it continues, not where the
        # router would send it (only that upstream knows the previous response)
        follow = client.responses.with_raw_response.create(
            model="router-mf-1", input="and then?", previous_response_id=f"resp_{strong.name}"
        )
        assert follow.parse().model == STRONG
        assert follow.headers["x-prefroute-pinned-by"] == "previous_response_id"
        with pytest.raises(openai.BadRequestError, match="no user message"):
            client.responses.create(
                model="router-mf", input=[{"role": "system", "content": "only rules"}]
            )
    assert strong.paths["/v1/responses"] == 2 and weak.paths["/v1/responses"] == 2


def test_completions_and_model_lookup(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        client = oai(url)
        reply = client.completions.create(model="router-mf-0", prompt="Once upon")
        assert reply.model == STRONG and reply.choices[0].text.endswith("echoes: Once upon")
        chunks = list(client.completions.create(model="router-mf-1", prompt="a b", stream=True))
        assert {c.model for c in chunks} == {WEAK}
        assert "".join(c.choices[0].text for c in chunks if c.choices).endswith("echoes: a b")
        assert client.models.retrieve("router-mf").threshold == router.threshold
        assert client.models.retrieve("router-mf-0.25").threshold == 0.25
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("gpt-4")
        assert info.value.code == "model_not_found"
    assert strong.paths["/v1/completions"] == 1 and weak.paths["/v1/completions"] == 1


def test_request_shaping_per_side(mf_checkpoint, upstreams, tmp_path):
    _, router = mf_checkpoint
    strong, weak = upstreams
    config = tmp_path / "serve.toml"
    config.write_text(
        "[shaping.strong]\n"
        'rename = { max_tokens = "max_completion_tokens" }\n'
        "[shaping.weak]\n"
        'drop = ["logit_bias"]\n'
    )
    shaping = shaping_from_config(read_serve_config(config), str(config))
    with serving(make_settings({"mf": router}, strong, weak, shaping=shaping)) as url:
        for model in ("router-mf-0", "router-mf-1"):
            oai(url).chat.completions.create(
                model=model, messages=user("hi"), max_tokens=7, logit_bias={"42": 1}
            )
    assert strong.last_body["max_completion_tokens"] == 7 and "max_tokens" not in strong.last_body
    assert strong.last_body["logit_bias"] == {"42": 1}
    assert weak.last_body["max_tokens"] == 7 and "logit_bias" not in weak.last_body
    for text, message in (
        ('[shaping.weak]\ndrop = ["model"]\n', r"\['model'\] cannot be dropped"),
        ("[shaping.medium]\ndrop = []\n", "unknown side"),
        ('[shaping.weak]\nremove = ["x"]\n', "unknown field"),
        ("[shaping.weak\n", "not valid TOML"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            shaping_from_config(read_serve_config(config), str(config))
        assert "serve.toml" in str(info.value)


def test_upstream_model_names_are_checked_at_start_up(mf_checkpoint, upstreams, caplog):
    _, router = mf_checkpoint
    strong, weak = upstreams
    strong.name = STRONG  # lists the strong model; the weak upstream lists only "weak-up"
    caplog.set_level(logging.WARNING, logger="prefroute")
    with serving(make_settings({"mf": router}, strong, weak)):
        pass
    missing = [r.getMessage() for r in caplog.records if "does not list" in r.getMessage()]
    assert len(missing) == 1 and "weak upstream" in missing[0] and WEAK in missing[0]
