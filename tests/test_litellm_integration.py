"""prefroute inside LiteLLM: the real ``litellm.Router`` against two real upstreams on 127.0.0.1.

The router is a small mf checkpoint trained on the real AlpacaEval battles and calibrated to a
30% strong-call rate on the 200 prompts that are then sent through LiteLLM.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest  # noqa: E402
from upstream_server import FakeUpstream  # noqa: E402

litellm = pytest.importorskip("litellm")

from prefroute.errors import ConfigError  # noqa: E402
from prefroute.integrations.litellm import PrefrouteStrategy, attach, detach  # noqa: E402
from prefroute.router import Router, load_router, make_router  # noqa: E402

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
STRONG_RATE = 0.3
N_REQUESTS = 200


@pytest.fixture(scope="module")
def prompts(alpaca_battles) -> list[str]:
    return sorted(set(alpaca_battles.prompts))[:N_REQUESTS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, alpaca_battles, prompts) -> Router:
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, dim=32, epochs=3, progress=False
    )
    predictor.fit(alpaca_battles)
    router = Router(predictor)
    router.calibrate(prompts, strong_rate=STRONG_RATE)
    directory = tmp_path_factory.mktemp("mf_litellm")
    router.save_pretrained(directory)
    return load_router(directory)


@pytest.fixture()
def upstreams():
    with FakeUpstream("strong") as strong, FakeUpstream("weak") as weak:
        yield strong, weak


def model_list(strong: FakeUpstream, weak: FakeUpstream) -> list[dict]:
    return [
        {
            "model_name": "routed",
            "litellm_params": {
                "model": f"openai/{STRONG}",
                "api_base": strong.base_url,
                "api_key": "k",
            },
            "model_info": {"id": "strong-deployment", "prefroute_side": "strong"},
        },
        {
            "model_name": "routed",
            "litellm_params": {
                "model": f"openai/{WEAK}",
                "api_base": weak.base_url,
                "api_key": "k",
            },
            "model_info": {"id": "weak-deployment", "prefroute_side": "weak"},
        },
    ]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def send_all(router, prompts: list[str], concurrency: int = 16) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str):
        async with gate:
            return await router.acompletion(model="routed", messages=user(prompt))

    return await asyncio.gather(*(one(p) for p in prompts))


@pytest.mark.slow
def test_200_requests_reach_strong_at_the_calibrated_rate(checkpoint, prompts, upstreams):
    strong, weak = upstreams
    deployments = model_list(strong, weak)
    router = litellm.Router(model_list=deployments)
    strategy = attach(router, checkpoint, deployments)
    try:
        responses = asyncio.run(send_all(router, prompts))
    finally:
        detach(strategy)
    expected = checkpoint.route(prompts)
    assert strong.count() + weak.count() == N_REQUESTS
    rate = strong.count() / N_REQUESTS
    assert abs(rate - checkpoint.calibration["realised_strong_rate"]) <= 0.03
    assert abs(rate - STRONG_RATE) <= 0.03
    # each request went exactly where the checkpoint says, and the response says so
    probs = checkpoint.strong_win_prob(prompts)
    for prompt, response, model, prob in zip(prompts, responses, expected, probs, strict=True):
        side = "strong" if model == STRONG else "weak"
        decision = response._hidden_params["prefroute"]
        assert decision["side"] == side
        # float32 embeddings: agree well below any threshold gap
        assert decision["strong_win_prob"] == pytest.approx(prob, abs=1e-6)
        assert response._hidden_params["model_id"] == f"{side}-deployment"
        assert response.choices[0].message.content.endswith(prompt[:60])
    assert set(strong.by_model) == {STRONG} and set(weak.by_model) == {WEAK}


def test_rate_option_and_sync_calls(checkpoint, prompts, upstreams):
    strong, weak = upstreams
    deployments = model_list(strong, weak)
    router = litellm.Router(model_list=deployments)
    # 100%: every prompt strong, through the sync path too
    strategy = attach(router, checkpoint, deployments, strong_rate=100)
    try:
        for prompt in prompts[:5]:
            response = router.completion(model="routed", messages=user(prompt))
            assert response._hidden_params["model_id"] == "strong-deployment"
    finally:
        detach(strategy)
    assert strong.count() == 5 and weak.count() == 0


def test_routing_plugin_narrows_candidates(checkpoint, prompts, upstreams):
    strong, weak = upstreams
    plugin = PrefrouteStrategy(checkpoint)  # no model_list: matched by the model names
    router = litellm.Router(model_list=model_list(strong, weak), plugins=[plugin])
    litellm.callbacks.append(plugin)  # as litellm_settings.callbacks does on the proxy
    sample = prompts[:20]
    try:
        responses = asyncio.run(send_all(router, sample))
    finally:
        detach(plugin)
    expected = checkpoint.route(sample)
    expected_strong = sum(model == STRONG for model in expected)
    assert strong.count() == expected_strong and weak.count() == len(sample) - expected_strong
    sides = [r._hidden_params["prefroute"]["side"] for r in responses]
    assert sides == ["strong" if model == STRONG else "weak" for model in expected]


def test_bad_configurations_are_named(checkpoint, upstreams):
    strong, weak = upstreams
    deployments = model_list(strong, weak)
    untagged = [{**d, "model_info": {"id": d["model_info"]["id"]}} for d in deployments]
    with pytest.raises(ConfigError, match="no model group has deployments tagged"):
        attach(litellm.Router(model_list=untagged), checkpoint, untagged)
    with pytest.raises(ConfigError, match=r"need one strong and one weak"):
        PrefrouteStrategy(checkpoint, deployments[:1])
    with pytest.raises(ConfigError, match="not both"):
        PrefrouteStrategy(checkpoint, deployments, strong_rate=30, threshold=0.5)
