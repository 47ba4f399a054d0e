"""The budget controller: holding a strong-call share under drift, pacing spend, sharing state.

The router is a small mf router trained on the real AlpacaEval battles and calibrated to a 30%
strong-call share on their prompts; drifted traffic is real GSM8K and MMLU prompts, on which
that static threshold calls the strong model far less often. Upstreams are real HTTP servers
on 127.0.0.1 (tests/upstream_server.py); shared state is a real redis-server on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from upstream_server import FakeUpstream, ServerThread

from prefroute.calibrate import Prices
from prefroute.data.outcomes import load_routellm_gsm8k, load_routellm_mmlu
from prefroute.errors import ConfigError
from prefroute.router import Router, load_router, make_router
from prefroute.serve import ServeSettings, UpstreamSettings, create_app
from prefroute.serve.budget import (
    BudgetController,
    BudgetSettings,
    budget_settings,
    budget_share,
    usage_cost,
)
from prefroute.serve.state import LocalState, RedisState, SpendTotals

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
RATE = 0.3
REPO_ROOT = Path(__file__).resolve().parents[1]


# fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mf_dir(tmp_path_factory, alpaca_battles) -> Path:
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, dim=32, epochs=3, progress=False
    )
    router = Router(predictor.fit(alpaca_battles))
    router.calibrate(sorted(set(alpaca_battles.prompts)), strong_rate=RATE)
    directory = tmp_path_factory.mktemp("mf-budget")
    router.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def mf_router(mf_dir) -> Router:
    return load_router(mf_dir)


@pytest.fixture(scope="module")
def drift_prompts(alpaca_battles, data_dir) -> tuple[list[str], list[str]]:
    """(AlpacaEval prompts, GSM8K + MMLU prompts), each shuffled with a fixed seed."""
    rng = np.random.default_rng(0)
    alpaca = sorted(set(alpaca_battles.prompts))
    gsm8k, mmlu = load_routellm_gsm8k(data_dir).prompts, load_routellm_mmlu(data_dir).prompts
    shifted = [gsm8k[i] for i in rng.choice(len(gsm8k), 300, replace=False)]
    shifted += [mmlu[i] for i in rng.choice(len(mmlu), 300, replace=False)]
    return [alpaca[i] for i in rng.permutation(len(alpaca))], [
        shifted[i] for i in rng.permutation(len(shifted))
    ]


@pytest.fixture(scope="module")
def drift_scores(mf_router, drift_prompts) -> tuple[np.ndarray, np.ndarray]:
    before, after = drift_prompts
    return mf_router.strong_win_prob(before), mf_router.strong_win_prob(after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_url(tmp_path) -> Iterator[str]:
    """A real redis-server on a free port, no persistence, stopped after the test."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    for _ in range(5):  # another process may take the port between probe and bind
        port = _free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(tmp_path)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        if process.poll() is None:
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                client.close()
                process.terminate()
                process.wait(timeout=10)
            return
    pytest.fail("could not start redis-server")


def _run(controller: BudgetController, scores: np.ndarray, router: str = "mf") -> np.ndarray:
    """Route ``scores`` one by one through the controller; which went strong."""

    async def go() -> np.ndarray:
        strong = np.zeros(len(scores), dtype=bool)
        for i, p in enumerate(scores):
            strong[i] = p >= await controller.threshold(router)
            await controller.record(router, float(p), bool(strong[i]))
        return strong

    return asyncio.run(go())


# the controller on real router scores -----------------------------------------------------
def test_controller_holds_the_share_where_the_static_threshold_drifts(mf_router, drift_scores):
    before, after = drift_scores
    scores = np.concatenate([before, after])
    static = scores >= mf_router.threshold
    assert abs(static[: len(before)].mean() - RATE) < 0.02  # calibrated on these prompts
    assert static[len(before) :].mean() < RATE - 0.1  # ...and drifts away on GSM8K + MMLU

    window = 200
    settings = BudgetSettings(target_strong_rate=RATE, window=window)
    controller = BudgetController(settings, {"mf": mf_router.threshold})
    strong = _run(controller, scores)
    settled = strong[len(before) + window :]
    assert abs(settled.mean() - RATE) < 0.05, settled.mean()
    assert abs(strong[window : len(before)].mean() - RATE) < 0.05
    # the realised share over the window is what the controller reports
    assert controller.strong_share("mf") == pytest.approx(strong[-window:].mean())


def test_controller_starts_from_the_calibration(mf_router, drift_scores):
    controller = BudgetController(
        BudgetSettings(target_strong_rate=RATE, window=100), {"mf": mf_router.threshold}
    )
    first = asyncio.run(controller.threshold("mf"))
    assert first == mf_router.threshold
    _run(controller, drift_scores[1][:10])
    # 10 of a 25-score quantile window: the threshold has moved, partly
    moved = controller.current_threshold("mf")
    assert moved != mf_router.threshold


def test_a_lower_target_sends_fewer_requests_strong(mf_router, drift_scores):
    scores = np.concatenate(drift_scores)
    shares = []
    for target in (0.1, 0.5):
        controller = BudgetController(
            BudgetSettings(target_strong_rate=target, window=200), {"mf": mf_router.threshold}
        )
        shares.append(_run(controller, scores)[200:].mean())
    assert abs(shares[0] - 0.1) < 0.04 and abs(shares[1] - 0.5) < 0.05


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="target_strong_rate"):
        BudgetSettings(target_strong_rate=1.5)
    with pytest.raises(ConfigError, match="needs the prices"):
        BudgetSettings(budget_per_hour=1.0)
    with pytest.raises(ConfigError, match="state-url"):
        BudgetSettings(target_strong_rate=0.3, state_url="http://localhost:6379")
    with pytest.raises(ConfigError, match="give a target"):
        BudgetSettings()


# budget pacing ------------------------------------------------------------------------------
def test_usage_cost_prices_each_side_per_1k_tokens():
    prices = Prices(strong_per_1k_input=0.01, strong_per_1k_output=0.03, weak_per_1k_input=0.001)
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    assert usage_cost(prices, "strong", usage) == pytest.approx(0.01 + 0.015)
    assert usage_cost(prices, "weak", usage) == pytest.approx(0.001)
    # the Responses API names them input/output tokens
    assert usage_cost(prices, "strong", {"input_tokens": 2000, "output_tokens": 0}) == 0.02
    assert usage_cost(prices, "strong", None) is None
    assert usage_cost(prices, "strong", {"prompt_tokens": -1, "completion_tokens": 2}) is None


def test_budget_share_paces_spend_and_repays_overspend():
    times = np.arange(0.0, 100.0, 1.0)  # one request a second: 3600 an hour
    cost_strong, cost_weak, elapsed = 0.01, 0.001, 100.0
    budget = 3600 * (0.25 * cost_strong + 0.75 * cost_weak)  # buys 25% strong at this rate

    def totals(scale: float, n_strong: int = 25, n_weak: int = 75) -> SpendTotals:
        """Spend at the true per-request costs, times ``scale``, over ``elapsed`` seconds."""
        base = {"strong": n_strong * cost_strong, "weak": n_weak * cost_weak}
        on_budget = budget * elapsed / 3600 / sum(base.values())
        return SpendTotals(
            0.0,
            {k: v * on_budget * scale for k, v in base.items()},
            {"strong": n_strong, "weak": n_weak},
            0,
        )

    assert budget_share(budget, totals(1.0), times, now=elapsed) == pytest.approx(0.25)
    over = budget_share(budget, totals(1.5), times, now=elapsed)
    under = budget_share(budget, totals(0.5), times, now=elapsed)
    assert 0.0 <= over < 0.25 < under <= 1.0  # overspend is repaid, underspend released
    assert budget_share(1e9, totals(1.0), times, now=elapsed) == 1.0
    assert budget_share(0.0, totals(1.0), times, now=elapsed) == 0.0
    assert budget_share(budget, totals(1.0, n_strong=0), times, now=elapsed) is None


# Redis state --------------------------------------------------------------------------------
def test_redis_state_gives_the_same_thresholds_as_in_process(mf_router, drift_scores, redis_url):
    scores = np.concatenate([drift_scores[0][:150], drift_scores[1][:150]])
    thresholds = []
    for state in (LocalState(), RedisState(redis_url, prefix="t1")):
        settings = BudgetSettings(target_strong_rate=RATE, window=80, refresh_every=1)
        controller = BudgetController(settings, {"mf": mf_router.threshold}, state)

        async def go(controller: BudgetController = controller) -> list[float]:
            out = []
            for p in scores:
                t = await controller.threshold("mf")
                await controller.record("mf", float(p), bool(p >= t))
                out.append(t)
            await controller.aclose()
            return out

        thresholds.append(asyncio.run(go()))
    np.testing.assert_allclose(thresholds[0], thresholds[1], rtol=0, atol=1e-12)
    client = redis.Redis.from_url(redis_url)
    assert client.llen("t1:window:mf") == 80  # the window keeps its last N entries
    client.close()


def test_unreachable_redis_is_one_clear_error():
    state = RedisState(f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(ConfigError, match="cannot use the controller state at redis://"):
        asyncio.run(state.connect())


# the server -----------------------------------------------------------------------------------
@pytest.fixture()
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    strong, weak = FakeUpstream("strong-up").start(), FakeUpstream("weak-up").start()
    try:
        yield strong, weak
    finally:
        strong.stop()
        weak.stop()


@contextmanager
def serving(mf_dir: Path, upstreams, budget: BudgetSettings) -> Iterator[str]:
    strong, weak = upstreams
    settings = ServeSettings(
        routers=[f"mf={mf_dir}"],
        strong=UpstreamSettings(base_url=strong.base_url),
        weak=UpstreamSettings(base_url=weak.base_url),
        budget=budget,
    )
    with ServerThread(create_app(settings)) as server:
        yield server.url


def _chat(client: httpx.Client, model: str, prompt: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def test_server_holds_the_share_and_explicit_thresholds_bypass(
    mf_dir, mf_router, upstreams, drift_prompts
):
    prompts = drift_prompts[1][:300]  # GSM8K + MMLU: the static threshold sends few strong
    window = 100
    with (
        serving(mf_dir, upstreams, BudgetSettings(target_strong_rate=RATE, window=window)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        sides, shares = [], []
        for prompt in prompts:
            response = _chat(client, "router-mf", prompt)
            assert response.headers["x-prefroute-controlled"] == "true"
            sides.append(response.headers["x-prefroute-side"])
            shares.append(float(response.headers["x-prefroute-strong-share"]))
            # the decision follows the served threshold
            p = float(response.headers["x-prefroute-strong-win-prob"])
            t = float(response.headers["x-prefroute-threshold"])
            assert (p >= t) == (sides[-1] == "strong")
        strong = np.array(sides) == "strong"
        static = mf_router.strong_win_prob(prompts) >= mf_router.threshold
        assert abs(strong[window:].mean() - RATE) < 0.06
        assert static.mean() < RATE - 0.1
        assert shares[-1] == pytest.approx(strong[-window:].mean())

        # an explicit threshold: routed by it, outside the window
        before = client.get("/metrics.json").json()["budget"]["routers"]["mf"]
        for prompt in prompts[:20]:
            response = _chat(client, "router-mf-0.5", prompt)
            assert response.headers["x-prefroute-controlled"] == "false"
            assert float(response.headers["x-prefroute-threshold"]) == 0.5
            p = float(response.headers["x-prefroute-strong-win-prob"])
            assert response.headers["x-prefroute-side"] == ("strong" if p >= 0.5 else "weak")
        after = client.get("/metrics.json").json()["budget"]["routers"]["mf"]
        assert after == before
        assert after["window_requests"] == window
        assert after["strong_share"] == pytest.approx(strong[-window:].mean())


def test_budget_pacing_prices_usage_and_holds_spend_down(mf_dir, upstreams, drift_prompts):
    prompts = drift_prompts[0][:60] + drift_prompts[1][:60]
    prices = Prices(strong_per_1k_input=10.0, strong_per_1k_output=30.0, weak_per_1k_input=0.1)
    expected_spend = 0.0
    budget = BudgetSettings(budget_per_hour=0.0, prices=prices, window=40)
    with serving(mf_dir, upstreams, budget) as url, httpx.Client(base_url=url, timeout=30) as c:
        sides = []
        for prompt in prompts:
            response = _chat(c, "router-mf", prompt)
            side = response.headers["x-prefroute-side"]
            usage = response.json()["usage"]
            expected_spend += usage_cost(prices, side, usage)
            sides.append(side)
        metrics = c.get("/metrics.json").json()["budget"]
        # a stream whose upstream sends no usage is counted as unpriced, not as free
        body = {
            "model": "router-mf",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with c.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert "data: [DONE]" in response.read().decode()
        assert c.get("/metrics.json").json()["budget"]["unpriced_responses"] == 1
    # every response was priced from its usage, and the spend adds up to the cent
    assert metrics["unpriced_responses"] == 0
    assert sum(metrics["priced_responses"].values()) == len(prompts)
    assert metrics["spend_usd"]["total"] == pytest.approx(expected_spend, rel=1e-9)
    # with no budget at all, once a strong answer has been priced nothing more goes strong
    first_strong = sides.index("strong")
    assert sides[first_strong + 2 :].count("strong") == 0
    assert metrics["target_share_now"] == 0.0

    # an ample budget lets nearly everything through
    rich = BudgetSettings(budget_per_hour=1e9, prices=prices, window=40)
    with serving(mf_dir, upstreams, rich) as url, httpx.Client(base_url=url, timeout=30) as c:
        sides = [_chat(c, "router-mf", p).headers["x-prefroute-side"] for p in prompts]
    assert sides[20:].count("strong") / len(sides[20:]) > 0.85


# replicas sharing one redis-server -----------------------------------------------------------
def _start_replica(mf_dir: Path, upstreams, redis_url: str, window: int, log: Path):
    """Start ``prefroute serve`` in its own process; (process, url) (not yet ready)."""
    strong, weak = upstreams
    port = _free_port()
    command = [
        sys.executable, "-m", "prefroute.cli.serve", f"mf={mf_dir}", "--port", str(port),
        "--strong-base-url", strong.base_url, "--weak-base-url", weak.base_url,
        "--no-access-log", "--target-strong-rate", str(RATE), "--window", str(window),
        "--state-url", redis_url,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OPENAI_API_KEY", None)
    with open(log, "wb") as stderr:  # a file, not a pipe nobody drains while it serves
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    return process, f"http://127.0.0.1:{port}", log


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"replica exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"replica at {url} did not start in {timeout} s")


@pytest.mark.slow
def test_two_server_processes_share_one_window_in_redis(
    mf_dir, upstreams, redis_url, drift_prompts, tmp_path
):
    window = 60
    replicas = [
        _start_replica(mf_dir, upstreams, redis_url, window, tmp_path / f"replica{i}.log")
        for i in range(2)
    ]
    try:
        for process, url, log in replicas:  # both load at once
            _wait_ready(process, url, log)
        clients = [httpx.Client(base_url=url, timeout=30) for _, url, _ in replicas]
        prompts = drift_prompts[1][:240]
        sides = []
        for i, prompt in enumerate(prompts):
            response = _chat(clients[i % 2], "router-mf", prompt)
            sides.append(response.headers["x-prefroute-side"])
        strong = np.array(sides) == "strong"
        views = [c.get("/metrics.json").json()["budget"]["routers"]["mf"] for c in clients]
        for c in clients:
            c.close()
    finally:
        for process, _, _ in replicas:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    # both replicas see one window: the last N requests of either, with their strong count
    assert views[0]["window_requests"] == views[1]["window_requests"] == window
    assert views[0]["window_strong"] == views[1]["window_strong"] == strong[-window:].sum()
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = store.lrange("prefroute:window:mf", 0, -1)
    store.close()
    assert [e.split("|")[1] == "1" for e in entries] == list(strong[-window:])
    # and together they hold the target on drifted traffic
    assert abs(strong[window:].mean() - RATE) < 0.07


def test_cli_refuses_an_unreachable_state_url_with_one_line(mf_dir):
    url = f"redis://127.0.0.1:{_free_port()}/0"
    command = [sys.executable, "-m", "prefroute.cli.main", "serve", str(mf_dir), "--port", "0"]
    command += ["--target-strong-rate", "0.3", "--state-url", url]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: cannot use the controller state at {url}" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="--state-url must look like redis://"):
        budget_settings(
            target_strong_rate=0.3, window=10, budget_per_hour=None, prices=(0, 0, 0, 0),
            state_url="http://127.0.0.1:6379/0",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="--state-url needs --target-strong-rate"):
        budget_settings(
            target_strong_rate=None, window=10, budget_per_hour=None, prices=(0, 0, 0, 0),
            state_url=url,
        )  # fmt: skip


def test_sorted_quantile_matches_numpy():
    from prefroute.serve.budget import _sorted_quantile

    values = np.sort(np.random.default_rng(1).uniform(size=37))
    for level in (0.0, 0.3, 0.7, 0.999, 1.0):
        assert _sorted_quantile(values, level) == pytest.approx(np.quantile(values, level))


def test_two_redis_controllers_interleaved_see_one_window(mf_router, drift_scores, redis_url):
    """Two replicas' controllers taking turns give the thresholds of one in-process controller."""
    scores = np.concatenate([drift_scores[0][:120], drift_scores[1][:120]])
    settings = BudgetSettings(target_strong_rate=RATE, window=60, refresh_every=1)
    calibrated = {"mf": mf_router.threshold}

    async def go() -> tuple[list[float], list[float]]:
        local = BudgetController(settings, calibrated, LocalState())
        replicas = [
            BudgetController(settings, calibrated, RedisState(redis_url, prefix="pair"))
            for _ in range(2)
        ]
        alone, shared = [], []
        for i, p in enumerate(scores):
            for controller, out in ((local, alone), (replicas[i % 2], shared)):
                t = await controller.threshold("mf")
                await controller.record("mf", float(p), bool(p >= t))
                out.append(t)
        for controller in replicas:
            await controller.aclose()
        return alone, shared

    alone, shared = asyncio.run(go())
    np.testing.assert_allclose(shared, alone, rtol=0, atol=1e-12)
