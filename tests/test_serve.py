"""The routing server and the Controller, end to end over real HTTP on 127.0.0.1.

Upstreams are real OpenAI-compatible servers (tests/upstream_server.py); the router is a small
mf router trained on the real AlpacaEval battles and calibrated to a 30% strong-call rate on
their real prompts; clients are the official openai clients.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from typer.testing import CliRunner
from upstream_server import FakeUpstream, ServerThread

from prefroute.errors import CheckpointError, ConfigError
from prefroute.router import Router, load_router, make_router
from prefroute.serve import (
    AsyncController,
    Controller,
    InvalidRequestError,
    ServeSettings,
    UpstreamSettings,
    create_app,
)
from prefroute.serve.routing import routing_text

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
KEY_ENV = "PREFROUTE_TEST_UPSTREAM_KEY"
SECRET = "sk-prefroute-test-SECRET-4f9a2c"
STRONG_RATE = 0.3
REPO_ROOT = Path(__file__).resolve().parents[1]


# fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def alpaca_prompts(alpaca_battles) -> list[str]:
    return sorted(set(alpaca_battles.prompts))


_TRAINED: dict[str, tuple[Path, Router]] = {}  # test_serve_abuse/_ops.py share these fixtures


@pytest.fixture(scope="session")
def mf_checkpoint(tmp_path_factory, alpaca_battles, alpaca_prompts) -> tuple[Path, Router]:
    """A small mf router on the real AlpacaEval battles, calibrated to 30% strong calls."""
    if "mf" not in _TRAINED:
        _TRAINED["mf"] = _train_mf(tmp_path_factory, alpaca_battles, alpaca_prompts)
    return _TRAINED["mf"]


def _train_mf(tmp_path_factory, alpaca_battles, alpaca_prompts) -> tuple[Path, Router]:
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, dim=32, epochs=3, progress=False
    )
    predictor.fit(alpaca_battles)
    router = Router(predictor)
    router.calibrate(alpaca_prompts, strong_rate=STRONG_RATE)
    directory = tmp_path_factory.mktemp("mf")
    router.save_pretrained(directory)
    return directory, load_router(directory)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, alpaca_battles) -> Path:
    predictor = make_router("random", strong_model=STRONG, weak_model=WEAK, seed=3)
    predictor.fit(alpaca_battles)
    directory = tmp_path_factory.mktemp("random")
    Router(predictor, threshold=0.5).save_pretrained(directory)
    return directory


@pytest.fixture()
def upstreams(monkeypatch) -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    strong, weak = FakeUpstream("strong-up").start(), FakeUpstream("weak-up").start()
    try:
        yield strong, weak
    finally:
        strong.stop()
        weak.stop()


def make_settings(routers, strong: FakeUpstream, weak: FakeUpstream, **kwargs) -> ServeSettings:
    return ServeSettings(
        routers=routers,
        strong=UpstreamSettings(base_url=strong.base_url, api_key_env=KEY_ENV),
        weak=UpstreamSettings(base_url=weak.base_url, api_key_env=KEY_ENV),
        **kwargs,
    )


@contextmanager
def serving(settings: ServeSettings) -> Iterator[str]:
    """Run the routing server; yields its base URL (http://127.0.0.1:<port>)."""
    with ServerThread(create_app(settings)) as server:
        yield server.url


@functools.lru_cache(maxsize=4)
def client(url: str) -> openai.OpenAI:
    """One openai client per server (building a client takes ~0.1 s)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def local_side(router: Router, text: str, threshold: float | None = None) -> str:
    t = router.threshold if threshold is None else threshold
    return "strong" if router.strong_win_prob([text])[0] >= t else "weak"


# server: basics ----------------------------------------------------------------------
def test_models_health_and_a_routed_completion(mf_checkpoint, upstreams, alpaca_prompts):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    with serving(make_settings([str(directory)], strong, weak)) as url:
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok", "routers": ["mf"]}
        ids = [m.id for m in client(url).models.list()]
        rates = [f"router-mf@{p}" for p in range(10, 100, 10)]
        assert ids == ["router-mf", f"router-mf-{router.threshold:.4f}", *rates]
        for prompt in alpaca_prompts[:12]:
            raw = client(url).chat.completions.with_raw_response.create(
                model="router-mf", messages=user(prompt), temperature=0.2
            )
            reply = raw.parse()
            expected = STRONG if local_side(router, prompt) == "strong" else WEAK
            assert reply.model == expected == raw.headers["x-prefroute-model"]
            assert reply.choices[0].message.content.endswith(prompt[:60])
            prob = float(raw.headers["x-prefroute-strong-win-prob"])
            assert prob == pytest.approx(router.strong_win_prob([prompt])[0], abs=1e-6)
        assert strong.last_body is not None and strong.last_body["temperature"] == 0.2
        assert strong.count() + weak.count() == 12
        assert set(strong.by_model) <= {STRONG} and set(weak.by_model) <= {WEAK}
        assert strong.authorizations | weak.authorizations == {f"Bearer {SECRET}"}


def test_streaming_relays_chunks_and_done(mf_checkpoint, upstreams, alpaca_prompts):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    prompt = alpaca_prompts[0]
    with serving(make_settings([str(directory)], strong, weak)) as url:
        for model, side in (("router-mf-0", "strong"), ("router-mf-1", "weak")):
            chunks = list(
                client(url).chat.completions.create(model=model, messages=user(prompt), stream=True)
            )
            routed = STRONG if side == "strong" else WEAK
            assert {c.model for c in chunks} == {routed}
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == f"{side}-up/{routed} echoes: {prompt[:60]}"
            assert chunks[-1].choices[0].finish_reason == "stop"
        # the wire format: only "data: {...}" events, ending with data: [DONE]
        body = {"model": "router-mf-0", "messages": user("hello"), "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-prefroute-model"] == STRONG
            events = [line for line in response.iter_lines() if line]
        assert all(line.startswith("data: ") for line in events)
        assert events[-1] == "data: [DONE]"
        assert all(json.loads(line[6:])["model"] == STRONG for line in events[:-1])


def test_thresholds_in_the_model_name(mf_checkpoint, upstreams, alpaca_prompts):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    prompts = alpaca_prompts[:20]
    probs = router.strong_win_prob(prompts)
    middle = float(np.median(probs))
    with serving(make_settings([str(directory)], strong, weak)) as url:
        for threshold in (0.0, middle, 1.0):
            for prompt, prob in zip(prompts, probs, strict=True):
                raw = client(url).chat.completions.with_raw_response.create(
                    model=f"router-mf-{threshold!r}", messages=user(prompt)
                )
                assert raw.headers["x-prefroute-model"] == (STRONG if prob >= threshold else WEAK)
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    assert metrics["router_models"]["router-mf-0.0"]["strong_rate"] == 1.0
    assert metrics["router_models"][f"router-mf-{middle!r}"]["strong_rate"] == pytest.approx(
        float(np.mean(probs >= middle))
    )


def test_routing_text_last_user_or_conversation(mf_checkpoint, upstreams):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Prove that there are infinitely many primes."},
        {"role": "assistant", "content": "Assume finitely many; multiply them and add one."},
        {"role": "user", "content": [{"type": "text", "text": "thanks, and hi"}]},
    ]
    for mode in ("last-user", "conversation"):
        text = routing_text(messages, mode)
        expected = router.strong_win_prob([text])[0]
        with serving(make_settings({"mf": router}, strong, weak, routing_text=mode)) as url:
            raw = client(url).chat.completions.with_raw_response.create(
                model="router-mf", messages=messages
            )
        assert float(raw.headers["x-prefroute-strong-win-prob"]) == pytest.approx(
            expected, abs=1e-6
        )
    assert routing_text(messages, "last-user") == "thanks, and hi"
    assert routing_text(messages, "conversation").startswith("You are terse.\n\nProve")


def test_calibrated_strong_rate_is_realised_and_metrics_agree(
    mf_checkpoint, upstreams, alpaca_prompts
):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    n = len(alpaca_prompts)
    expected_strong = int(np.sum(router.strong_win_prob(alpaca_prompts) >= router.threshold))

    async def send_all(url: str) -> list[str]:
        gate = asyncio.Semaphore(32)
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60
        ) as c:

            async def one(prompt: str) -> str:
                async with gate:
                    reply = await c.chat.completions.create(
                        model="router-mf", messages=user(prompt)
                    )
                    return reply.model

            return await asyncio.wait_for(asyncio.gather(*(one(p) for p in alpaca_prompts)), 300)

    with serving(make_settings([str(directory)], strong, weak)) as url:
        models = asyncio.run(send_all(url))
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    share = models.count(STRONG) / n
    assert models.count(STRONG) == expected_strong
    assert share == pytest.approx(router.calibration["realised_strong_rate"])
    assert abs(share - STRONG_RATE) <= 1.0 / n  # calibration hits the rate up to one prompt
    assert metrics["routers"]["mf"] == {
        "requests": n,
        "strong": expected_strong,
        "weak": n - expected_strong,
        "strong_rate": share,
    }
    assert metrics["requests_per_model"] == {STRONG: expected_strong, WEAK: n - expected_strong}
    assert strong.count() == expected_strong and weak.count() == n - expected_strong


def test_200_concurrent_requests_all_answered_and_counted(mf_checkpoint, upstreams, alpaca_prompts):
    _, router = mf_checkpoint
    strong, weak = upstreams
    prompts = alpaca_prompts[:200]
    sides = [local_side(router, p) for p in prompts]

    async def fire(url: str) -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60
        ) as c:

            async def one(i: int) -> tuple[str, str]:
                stream = i % 4 == 0
                if stream:
                    chunks = [
                        ch
                        async for ch in await c.chat.completions.create(
                            model="router-mf", messages=user(prompts[i]), stream=True
                        )
                    ]
                    return chunks[0].model, "".join(
                        ch.choices[0].delta.content or "" for ch in chunks
                    )
                reply = await c.chat.completions.create(
                    model="router-mf", messages=user(prompts[i])
                )
                return reply.model, reply.choices[0].message.content

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 120)

    # a 5 ms batching window so concurrent requests surely share routing batches
    with serving(make_settings({"mf": router}, strong, weak, batch_window_ms=5.0)) as url:
        results = asyncio.run(fire(url))
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    assert len(results) == 200
    for (model, text), side, prompt in zip(results, sides, prompts, strict=True):
        routed = STRONG if side == "strong" else WEAK
        assert model == routed
        assert text == f"{side}-up/{routed} echoes: {prompt[:60]}"  # each got its own answer
    n_strong = sides.count("strong")
    assert metrics["requests"]["total"] == metrics["requests"]["finished"] == 200
    assert metrics["requests"]["by_status"] == {"200": 200}
    assert metrics["requests"]["routed"] == sum(metrics["requests_per_model"].values()) == 200
    assert metrics["routers"]["mf"]["strong"] == n_strong == strong.count()
    assert metrics["routers"]["mf"]["weak"] == 200 - n_strong == weak.count()
    assert metrics["routing_latency"]["count"] == 200 and metrics["total_latency"]["count"] == 200
    assert metrics["routing_latency"]["p50_ms"] <= metrics["routing_latency"]["p99_ms"]
    assert metrics["errors"]["total"] == 0
    batching = metrics["batching"]["routers"]["mf"]
    assert batching["prompts"] == 200 and batching["batches"] < 200


def test_several_checkpoints_with_names(
    mf_checkpoint, random_checkpoint, upstreams, alpaca_prompts
):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    settings = make_settings([str(directory), f"coin={random_checkpoint}"], strong, weak)
    with serving(settings) as url:
        ids = [m.id for m in client(url).models.list()]
        assert ids == [
            "router-mf",
            f"router-mf-{router.threshold:.4f}",
            *[f"router-mf@{p}" for p in range(10, 100, 10)],
            "router-coin",
            "router-coin-0.5000",  # never calibrated: no rate names
        ]
        coin = load_router(random_checkpoint)
        for prompt in alpaca_prompts[:10]:
            raw = client(url).chat.completions.with_raw_response.create(
                model="router-coin", messages=user(prompt)
            )
            assert raw.headers["x-prefroute-model"] == (
                STRONG if local_side(coin, prompt) == "strong" else WEAK
            )
            assert raw.headers["x-prefroute-router"] == "coin"
    with pytest.raises(ConfigError, match="two routers are named 'random'"):
        create_app(make_settings([str(random_checkpoint)] * 2, strong, weak))
    with pytest.raises(CheckpointError):
        create_app(make_settings([str(directory / "missing")], strong, weak))


def test_invalid_requests_get_400_in_openai_shape(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    cases = {
        "missing_messages": {"model": "router-mf"},
        "invalid_model": {"messages": user("hi")},
        "no_user_turn": {
            "model": "router-mf",
            "messages": [{"role": "system", "content": "be nice"}],
        },
        "invalid_messages": {"model": "router-mf", "messages": []},
        "invalid_stream": {"model": "router-mf", "messages": user("hi"), "stream": "yes"},
    }
    bad_thresholds = [
        "router-mf-abc",
        "router-mf-1.5",
        "router-mf-nan",
        "router-mf-inf",
        "router-mf-",
    ]
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        endpoint = f"{url}/v1/chat/completions"
        for code, body in cases.items():
            response = httpx.post(endpoint, json=body, timeout=10)
            assert response.status_code == 400, code
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error" and error["code"] == code
        for model in bad_thresholds:
            response = httpx.post(
                endpoint, json={"model": model, "messages": user("hi")}, timeout=10
            )
            assert (
                response.status_code == 400
                and response.json()["error"]["code"] == "invalid_threshold"
            )
            assert response.json()["error"]["param"] == "model"
        for raw in (b"not json", b"[1, 2]"):
            response = httpx.post(endpoint, content=raw, timeout=10)
            assert (
                response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
            )
        # an unknown model is a 404 model_not_found, as OpenAI answers
        with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-4'") as info:
            client(url).chat.completions.create(model="gpt-4", messages=user("hi"))
        assert info.value.code == "model_not_found" and info.value.status_code == 404
        response = httpx.post(endpoint, json={"model": "router-nope", "messages": user("hi")})
        assert response.status_code == 404 and response.json()["error"]["param"] == "model"
        missing = httpx.get(f"{url}/v1/nothing", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "http_404"
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    n_bad = len(cases) + len(bad_thresholds) + 2
    assert metrics["requests"]["by_status"] == {"400": n_bad, "404": 2}
    assert metrics["errors"]["by_type"] == {"invalid_request_error": n_bad + 2}
    assert metrics["requests"]["routed"] == 0
    assert strong.count() == weak.count() == 0


def test_upstream_failures_map_to_502_and_429_without_leaking_the_key(
    mf_checkpoint, upstreams, caplog, capfd
):
    _, router = mf_checkpoint
    strong, weak = upstreams
    caplog.set_level(logging.DEBUG)
    strong.mode = "fail"
    weak.mode = "rate_limit"
    seen: list[str] = []
    with serving(make_settings({"mf": router}, strong, weak, failover=False)) as url:
        endpoint = f"{url}/v1/chat/completions"
        for stream in (False, True):
            failed = httpx.post(
                endpoint,
                json={"model": "router-mf-0", "messages": user("hi"), "stream": stream},
                timeout=10,
            )
            assert failed.status_code == 502
            assert failed.json()["error"]["type"] == "upstream_error"
            assert failed.json()["error"]["code"] == "upstream_500"
            assert failed.headers["x-prefroute-model"] == STRONG
            limited = httpx.post(
                endpoint,
                json={"model": "router-mf-1", "messages": user("hi"), "stream": stream},
                timeout=10,
            )
            assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
            assert limited.json()["error"]["type"] == "rate_limit_error"
            seen += [failed.text, str(failed.headers), limited.text, str(limited.headers)]
        with pytest.raises(openai.InternalServerError) as info:
            client(url).chat.completions.create(model="router-mf-0", messages=user("hi"))
        assert info.value.status_code == 502
        with pytest.raises(openai.RateLimitError):
            client(url).chat.completions.create(model="router-mf-1", messages=user("hi"))
        weak.mode = "ok"  # the other side keeps working while one side fails
        assert (
            client(url).chat.completions.create(model="router-mf-1", messages=user("hi")).model
            == WEAK
        )
        for path in ("/metrics", "/v1/models", "/health"):
            seen.append(httpx.get(f"{url}{path}", timeout=10).text)
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    # the upstreams did get the key, and quoted it back in their error messages
    assert strong.authorizations == {f"Bearer {SECRET}"}
    assert "Bearer ***" in seen[0]
    out, err = capfd.readouterr()
    assert caplog.records and any("upstream failure" in r.getMessage() for r in caplog.records)
    for text in [*seen, caplog.text, out, err]:
        assert SECRET not in text
    assert metrics["requests"]["by_status"] == {"200": 1, "429": 3, "502": 3}
    assert metrics["errors"]["by_type"] == {"upstream_error": 3, "rate_limit_error": 3}


def test_hanging_upstream_times_out_with_504_quickly(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    strong.mode = "hang"
    settings = make_settings({"mf": router}, strong, weak, upstream_timeout=1.0, failover=False)
    with serving(settings) as url:
        for stream in (False, True):
            started = time.perf_counter()
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "router-mf-0", "messages": user("hi"), "stream": stream},
                timeout=20,
            )
            elapsed = time.perf_counter() - started
            assert response.status_code == 504
            assert response.json()["error"] == {
                "message": response.json()["error"]["message"],
                "type": "timeout_error",
                "param": None,
                "code": "upstream_timeout",
            }
            assert "did not answer within 1 s" in response.json()["error"]["message"]
            assert 0.9 <= elapsed < 3.0
        with pytest.raises(openai.InternalServerError) as info:
            client(url).chat.completions.create(model="router-mf-0", messages=user("hi"))
        assert info.value.status_code == 504
    assert strong.count() == 3


def test_a_stream_that_breaks_or_stalls_ends_with_an_error_event(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    strong.mode = "break_stream"
    weak.mode = "stall_stream"
    # no failover: a slow start of the stalling stream must not hand it to the other side
    settings = make_settings({"mf": router}, strong, weak, upstream_timeout=1.0, failover=False)
    with serving(settings) as url:
        with pytest.raises(openai.APIError, match="failed mid-stream: the model crashed"):
            for _ in client(url).chat.completions.create(
                model="router-mf-0", messages=user("hi there"), stream=True
            ):
                pass
        started = time.perf_counter()
        received = []
        with pytest.raises(openai.APIError, match="did not answer within 1 s"):
            stream = client(url).chat.completions.create(
                model="router-mf-1", messages=user("hi there"), stream=True
            )
            for chunk in stream:
                received.append(chunk)
        assert len(received) == 3  # the role chunk and two words came before the stall
        assert time.perf_counter() - started < 3.0
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    assert metrics["requests"]["by_status"] == {"200": 2}  # the streams had started
    assert metrics["errors"] == {
        "total": 2,
        "by_type": {"upstream_error": 1, "timeout_error": 1},
        "stream_errors": 2,
    }


def test_unreachable_upstream_is_502(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = make_settings({"mf": router}, strong, weak, failover=False)
    settings.strong = UpstreamSettings(base_url=f"http://user:pw@127.0.0.1:{closed_port}/v1")
    with serving(settings) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "router-mf-0", "messages": user("hi")},
            timeout=20,
        )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_connection_error" and "user:pw" not in error["message"]
    # no address of the upstream reaches the client, not even its port
    assert "127.0.0.1" not in response.text and str(closed_port) not in response.text


# Controller --------------------------------------------------------------------------
def test_controller_sync(mf_checkpoint, upstreams, alpaca_prompts):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    sides = {
        "strong": UpstreamSettings(base_url=strong.base_url, api_key_env=KEY_ENV),
        "weak": UpstreamSettings(base_url=weak.base_url, api_key_env=KEY_ENV),
    }
    with Controller([str(directory)], **sides, max_retries=0, timeout=10) as controller:
        assert controller.models() == [
            "router-mf",
            f"router-mf-{router.threshold:.4f}",
            *[f"router-mf@{p}" for p in range(10, 100, 10)],
        ]
        prompts = alpaca_prompts[:10]
        for prompt in prompts:
            reply = controller.chat.completions.create(
                model="router-mf", messages=user(prompt), max_tokens=5
            )
            expected = STRONG if local_side(router, prompt) == "strong" else WEAK
            assert reply.model == f"{expected}-upstream-version"  # the upstream's reply, untouched
            assert controller.route("router-mf", user(prompt)).upstream_model == expected
        assert strong.count() + weak.count() == 10 and strong.last_body is not None
        chunks = list(
            controller.chat.completions.create(
                model="router-mf-0", messages=user("hi"), stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(
            "echoes: hi"
        )
        with pytest.raises(InvalidRequestError, match="unknown model"):
            controller.chat.completions.create(model="gpt-4", messages=user("hi"))
        with pytest.raises(InvalidRequestError, match="bad threshold"):
            controller.chat.completions.create(model="router-mf-7", messages=user("hi"))
        assert strong.count() + weak.count() == 11
        strong.mode = "fail"
        with pytest.raises(openai.InternalServerError):
            controller.chat.completions.create(model="router-mf-0", messages=user("hi"))
    assert strong.authorizations == {f"Bearer {SECRET}"}


def test_controller_async(mf_checkpoint, upstreams, alpaca_prompts):
    _, router = mf_checkpoint
    strong, weak = upstreams
    prompts = alpaca_prompts[:40]
    expected = [STRONG if local_side(router, p) == "strong" else WEAK for p in prompts]

    async def run() -> tuple[list[str], str]:
        async with AsyncController(
            {"mf": router},
            strong=UpstreamSettings(base_url=strong.base_url, api_key_env=KEY_ENV),
            weak=UpstreamSettings(base_url=weak.base_url, api_key_env=KEY_ENV),
            max_retries=0,
            timeout=10,
        ) as controller:
            replies = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        controller.chat.completions.create(model="router-mf", messages=user(p))
                        for p in prompts
                    )
                ),
                60,
            )
            stream = await controller.chat.completions.create(
                model="router-mf-1", messages=user("yo"), stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return [r.model for r in replies], text

    models, text = asyncio.run(run())
    assert models == [f"{m}-upstream-version" for m in expected]
    assert text == f"weak-up/{WEAK} echoes: yo"
    assert strong.count() == expected.count(STRONG) and weak.count() == expected.count(WEAK) + 1


# settings and CLI ----------------------------------------------------------------------
def test_settings_are_checked(mf_checkpoint, monkeypatch):
    directory, _ = mf_checkpoint
    monkeypatch.delenv("PREFROUTE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="routing_text"):
        ServeSettings(routers=[str(directory)], routing_text="first-user")
    with pytest.raises(ConfigError, match="upstream_timeout"):
        ServeSettings(routers=[str(directory)], upstream_timeout=0)
    with pytest.raises(ConfigError, match="base_url"):
        UpstreamSettings(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="PREFROUTE_NOT_SET"):
        create_app(
            ServeSettings(
                routers=[str(directory)], strong=UpstreamSettings(api_key_env="PREFROUTE_NOT_SET")
            )
        )


def test_cli_reports_known_failures(mf_checkpoint, tmp_path):
    from prefroute.cli.serve import app

    directory, _ = mf_checkpoint
    runner = CliRunner()
    result = runner.invoke(app, [str(tmp_path / "missing")])
    assert isinstance(result.exception, CheckpointError)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, [str(directory), "--port", str(port)])
    assert isinstance(result.exception, ConfigError) and "cannot listen" in str(result.exception)


def test_cli_serves_over_http(mf_checkpoint, upstreams):
    directory, router = mf_checkpoint
    strong, weak = upstreams
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "prefroute.cli.serve",
        f"main={directory}",
        "--port",
        str(port),
        "--strong-base-url",
        strong.base_url,
        "--strong-api-key-env",
        KEY_ENV,
        "--weak-base-url",
        weak.base_url,
        "--weak-api-key-env",
        KEY_ENV,
        "--weak-model",
        "my-weak",
        "--no-access-log",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the CLI server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        reply = client(f"http://127.0.0.1:{port}").chat.completions.create(
            model="router-main-1", messages=user("hello")
        )
        assert reply.model == "my-weak" and weak.by_model == {"my-weak": 1}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
