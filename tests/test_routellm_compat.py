"""RouteLLM users change one import line: ``prefroute.compat.routellm.Controller``.

The script below is written against RouteLLM 0.2's API (its README's usage); the test runs it
unchanged except for the import line, in a fresh process, against two real upstreams on
127.0.0.1 reached through LiteLLM's provider settings, as a RouteLLM user's would be.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefroute.compat.names import routellm_model_alias
from prefroute.compat.routellm import Controller, RoutingError
from prefroute.errors import ConfigError
from prefroute.router import Router, load_router, make_router
from tests.upstream_server import FakeUpstream, ServerThread

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
ROOT = Path(__file__).resolve().parents[1]

ROUTELLM_SCRIPT = '''
import asyncio
import json
import os

import pandas as pd

from routellm.controller import Controller

client = Controller(
    routers=["mf"],
    strong_model="openai/gpt-4-1106-preview",
    weak_model="hosted_vllm/mixtral-8x7b-instruct-v0.1",
    config={"mf": {"checkpoint_path": os.environ["MF_CHECKPOINT"]}},
)
threshold = float(os.environ["ROUTER_THRESHOLD"])
prompts = json.load(open(os.environ["PROMPTS_FILE"]))

for prompt in prompts:
    response = client.chat.completions.create(
        model=f"router-mf-{threshold}",
        messages=[{"role": "user", "content": prompt}],
    )
    print(json.dumps({"content": response.choices[0].message.content}))


async def ask(prompt):
    response = await client.chat.completions.acreate(
        model=f"router-mf-{threshold}", messages=[{"role": "user", "content": prompt}]
    )
    return response.choices[0].message.content


print(json.dumps({"async": asyncio.run(ask(prompts[0]))}))
print(json.dumps({"route": [client.route(p, "mf", threshold) for p in prompts]}))
win_rates = client.batch_calculate_win_rate(pd.Series(prompts), "mf")
print(json.dumps({"win_rates": win_rates.tolist()}))
print(json.dumps({"model_counts": {r: dict(c) for r, c in client.model_counts.items()}}))
'''


@pytest.fixture(scope="module")
def mf_checkpoint(tmp_path_factory, alpaca_battles) -> Path:
    """A small prefroute mf router on the real AlpacaEval battles."""
    predictor = make_router("mf", strong_model=STRONG, weak_model=WEAK, dim=32, epochs=3,
                            progress=False)
    predictor.fit(alpaca_battles)
    router = Router(predictor)
    router.calibrate(sorted(set(alpaca_battles.prompts))[:300], strong_rate=0.3)
    directory = tmp_path_factory.mktemp("compat") / "mf"
    router.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def prompts(alpaca_battles) -> list[str]:
    return sorted(set(alpaca_battles.prompts))[300:312]


@pytest.mark.slow
def test_routellm_script_runs_with_one_changed_import(mf_checkpoint, prompts, tmp_path):
    router = load_router(mf_checkpoint)
    probs = router.strong_win_prob(prompts)
    threshold = float(np.median(probs))  # half of the prompts on each side
    script = ROUTELLM_SCRIPT.replace(
        "from routellm.controller import Controller",
        "from prefroute.compat.routellm import Controller",
    )
    assert script.count("\n") == ROUTELLM_SCRIPT.count("\n") and script != ROUTELLM_SCRIPT
    (tmp_path / "script.py").write_text(script)
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))

    with FakeUpstream("strong-up") as strong, FakeUpstream("weak-up") as weak:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "OPENAI_API_KEY": "sk-test-strong", "OPENAI_BASE_URL": strong.base_url,
            "HOSTED_VLLM_API_BASE": weak.base_url, "HOSTED_VLLM_API_KEY": "sk-test-weak",
            "MF_CHECKPOINT": str(mf_checkpoint), "ROUTER_THRESHOLD": repr(threshold),
            "PROMPTS_FILE": str(tmp_path / "prompts.json"),
        }
        done = subprocess.run([sys.executable, str(tmp_path / "script.py")], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        n_strong, n_weak = strong.count(200), weak.count(200)
        strong_models, weak_models = dict(strong.by_model), dict(weak.by_model)

    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    contents = [row["content"] for row in lines if "content" in row]
    out = {k: v for row in lines for k, v in row.items() if k != "content"}
    goes_strong = probs >= threshold
    assert 0 < goes_strong.sum() < len(prompts)
    for prompt, content, strong_side in zip(prompts, contents, goes_strong):
        expected = "strong-up/gpt-4-1106-preview" if strong_side else \
            "weak-up/mixtral-8x7b-instruct-v0.1"
        assert content.startswith(f"{expected} echoes: {prompt[:20]}")
    assert out["async"].startswith("strong-up" if goes_strong[0] else "weak-up")
    # one request per completion, each on its side; provider prefixes stripped by LiteLLM
    assert n_strong == goes_strong.sum() + goes_strong[0]
    assert n_weak == (~goes_strong).sum() + (not goes_strong[0])
    assert set(strong_models) == {"gpt-4-1106-preview"}
    assert set(weak_models) == {"mixtral-8x7b-instruct-v0.1"}
    assert out["route"] == ["openai/gpt-4-1106-preview" if s else
                            "hosted_vllm/mixtral-8x7b-instruct-v0.1" for s in goes_strong]
    np.testing.assert_allclose(out["win_rates"], probs, rtol=0, atol=1e-12)
    counts = out["model_counts"]["mf"]
    assert counts == {k: v for k, v in {
        "openai/gpt-4-1106-preview": int(goes_strong.sum() + goes_strong[0]),
        "hosted_vllm/mixtral-8x7b-instruct-v0.1": int((~goes_strong).sum()
                                                      + (not goes_strong[0])),
    }.items() if v}


def test_controller_fixes_routellm_bugs_and_names_errors(mf_checkpoint, prompts, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"mf:\n  checkpoint_path: {mf_checkpoint}\n  hidden_size: 128\n")
    client = Controller(["mf", "random"], STRONG, WEAK, config=config)
    router = client.routers["mf"]
    # RouteLLM raises without a threshold; prefroute uses the calibrated one
    calibrated = router.threshold
    prob = float(router.strong_win_prob([prompts[0]])[0])
    assert client.route(prompts[0], "mf") == (STRONG if prob >= calibrated else WEAK)
    assert client._parse_model("router-mf") == ("mf", calibrated)
    assert client._parse_model("router-mf-0.25") == ("mf", 0.25)
    # the last USER turn is routed on, not messages[-1] (RouteLLM routes on an assistant turn)
    messages = [{"role": "user", "content": prompts[0]},
                {"role": "assistant", "content": "Sure."}]
    routed = client._routed_kwargs(None, None, {"model": "router-mf-0.5", "messages": messages})
    assert routed["model"] == (STRONG if prob >= 0.5 else WEAK)
    # random needs no checkpoint and scores like prefroute's random router
    rates = client.batch_calculate_win_rate(pd.Series(prompts, index=range(10, 22)), "random")
    assert list(rates.index) == list(range(10, 22)) and rates.between(0, 1).all()
    for bad, match in [(("p", "sw_ranking", 0.5), "Invalid router"),
                       (("p", "mf", 1.5), "Invalid threshold")]:
        with pytest.raises(RoutingError, match=match):
            client.route(*bad)
    with pytest.raises(RoutingError, match="unknown model"):
        client._parse_model("gpt-4")
    with pytest.raises(ConfigError, match="needs a prefroute checkpoint.*sw_bt"):
        Controller(["sw_ranking"], STRONG, WEAK, config={})
    with pytest.raises(RoutingError, match="Invalid router"):
        Controller(["knn"], STRONG, WEAK)


def test_server_and_controller_accept_routellm_router_names(mf_checkpoint, alpaca_battles):
    import openai

    from prefroute.serve import ServeSettings, UpstreamSettings, create_app

    predictor = make_router("sw_bt", strong_model=STRONG, weak_model=WEAK)
    predictor.fit(alpaca_battles)
    sw_dir = mf_checkpoint.parent / "sw_bt"
    Router(predictor, 0.4).save_pretrained(sw_dir)
    served = {"sw_bt": load_router(sw_dir)}
    assert routellm_model_alias("router-sw_ranking-0.116", served) == "router-sw_bt-0.116"
    assert routellm_model_alias("router-sw_ranking", served) == "router-sw_bt"
    assert routellm_model_alias("router-mf-0.1", served) == "router-mf-0.1"  # not served

    with FakeUpstream("strong-up") as strong, FakeUpstream("weak-up") as weak:
        settings = ServeSettings(
            routers=[f"sw_bt={sw_dir}"],
            strong=UpstreamSettings(base_url=strong.base_url),
            weak=UpstreamSettings(base_url=weak.base_url),
        )
        with ServerThread(create_app(settings)) as server:
            api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
            ask = [{"role": "user", "content": "Prove that sqrt(2) is irrational."}]
            prob = float(served["sw_bt"].strong_win_prob([ask[0]["content"]])[0])
            for model, threshold in [("router-sw_ranking-0.0", 0.0), ("router-sw_ranking-1.0", 1.0),
                                     ("router-sw_ranking", 0.4)]:
                reply = api.chat.completions.with_raw_response.create(model=model, messages=ask)
                side = reply.headers["x-prefroute-side"]
                assert side == ("strong" if prob >= threshold else "weak"), model
                assert reply.headers["x-prefroute-router"] == "sw_bt"
            api.close()


def test_async_completion_runs_in_an_event_loop(mf_checkpoint, prompts, monkeypatch):
    with FakeUpstream("strong-up") as strong, FakeUpstream("weak-up") as weak:
        client = Controller(["mf"], "openai/strong", "openai/weak",
                            config={"mf": str(mf_checkpoint)}, api_base=strong.base_url,
                            api_key="sk-test")

        async def both():
            return await asyncio.gather(*[
                client.acompletion(router="mf", threshold=0.0,
                                   messages=[{"role": "user", "content": p}])
                for p in prompts[:3]
            ])

        replies = asyncio.run(both())
        assert all(r.choices[0].message.content.startswith("strong-up/strong") for r in replies)
        assert strong.count(200) == 3 and weak.count() == 0
        assert dict(client.model_counts["mf"]) == {"openai/strong": 3}
