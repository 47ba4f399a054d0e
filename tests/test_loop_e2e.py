"""The preference loop end to end, every step over real HTTP on 127.0.0.1.

Two local upstreams and the routing server with ``--shadow-rate 0.5 --log-dir`` answer the
openai client; users send feedback; a local judge labels the shadow pairs through
``prefroute augment judge --from-log``; feedback becomes battles; ``prefroute update`` folds
both into the router and ``prefroute compare`` gates the result.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest
from openai_stub_server import Request, StubOpenAIServer
from typer.testing import CliRunner
from upstream_server import FakeUpstream, ServerThread

from prefroute.cli.main import app
from prefroute.data.battles import Battles
from prefroute.router import Router, load_router, make_router
from prefroute.serve import ServeSettings, UpstreamSettings, create_app
from prefroute.serve.journal import iter_journal

STRONG, WEAK = "gpt-4-1106-preview", "claude-2"
N_REQUESTS = 30


def _answers(request: Request) -> tuple[str, str]:
    text = request.user
    a = text.split("[The Start of Answer A]\n", 1)[1].split("\n[The End of Answer A]", 1)[0]
    b = text.split("[The Start of Answer B]\n", 1)[1].split("\n[The End of Answer B]", 1)[0]
    return a, b


def strong_loving_judge(request: Request) -> str:
    """A judge that prefers whichever answer came from the strong upstream."""
    a, _ = _answers(request)
    return "Answer A is better. [[A]]" if a.startswith("strong-up") else "B is better. [[B]]"


def _records(log_dir, kind: str) -> list[dict]:
    return [r for _, _, r in iter_journal(log_dir) if r["type"] == kind]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, alpaca_battles):
    model_b = np.array(alpaca_battles.column("model_b"), dtype=object)
    battles = alpaca_battles.filter(np.isin(model_b, [WEAK, "vicuna-13b", "phi-2"]))
    router = Router(make_router("sw_bt", strong_model=STRONG, weak_model=WEAK).fit(battles),
                    training={"sources": []})
    prompts = sorted(set(battles.prompts))
    router.calibrate(prompts[:N_REQUESTS], strong_rate=0.5)
    directory = tmp_path_factory.mktemp("loop") / "v1"
    router.save_pretrained(directory)
    return directory, prompts


def test_the_loop_end_to_end(checkpoint, alpaca_battles, tmp_path):
    directory, prompts = checkpoint
    log_dir = tmp_path / "journal"
    asked = prompts[:N_REQUESTS]
    strong_up, weak_up = FakeUpstream("strong-up").start(), FakeUpstream("weak-up").start()
    try:
        settings = ServeSettings(
            routers={"loop": str(directory)},
            strong=UpstreamSettings(base_url=strong_up.base_url),
            weak=UpstreamSettings(base_url=weak_up.base_url),
            log_dir=log_dir, log_responses=True, shadow_rate=0.5, shadow_seed=7,
        )
        with ServerThread(create_app(settings)) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
            ids, sides = [], []
            for prompt in asked:
                raw = client.chat.completions.with_raw_response.create(
                    model="router-loop", messages=[{"role": "user", "content": prompt}])
                ids.append(raw.parse().id)
                sides.append(raw.headers["x-prefroute-side"])
            assert len(set(ids)) == N_REQUESTS and {"strong", "weak"} == set(sides)
            requests = _records(log_dir, "request")
            n_shadow = sum(r["shadow"] for r in requests)
            assert 5 <= n_shadow <= 25  # about half of 30
            deadline = time.monotonic() + 30  # the shadow calls finish in the background
            while len(_records(log_dir, "shadow")) < n_shadow and time.monotonic() < deadline:
                time.sleep(0.05)
            shadows = _records(log_dir, "shadow")
            assert len(shadows) == n_shadow
            assert strong_up.count() + weak_up.count() == N_REQUESTS + n_shadow
            by_id = {r["id"]: r for r in requests}
            for s in shadows:  # the other side answered the same prompt
                request = by_id[s["id"]]
                assert s["side"] != request["side"] and s["response"].startswith(
                    f"{s['side']}-up/")
                assert request["response"].startswith(f"{request['side']}-up/")
            assert all(r["text"] in asked and r["usage"] for r in requests)

            # a streamed answer is journalled once the stream ends; its id is in a header
            with client.chat.completions.with_streaming_response.create(
                    model="router-loop", stream=True,
                    messages=[{"role": "user", "content": prompts[-1]}]) as streamed:
                stream_id = streamed.headers["x-prefroute-request-id"]
                text = "".join(c.choices[0].delta.content or "" for c in streamed.parse()
                               if c.choices)
            deadline = time.monotonic() + 10
            while stream_id not in {r["id"] for r in _records(log_dir, "request")}:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            (record,) = [r for r in _records(log_dir, "request") if r["id"] == stream_id]
            assert record["stream"] and record["response"] == text and text
            n_shadow += record["shadow"]  # the streamed request may be shadowed too
            while len(_records(log_dir, "shadow")) < n_shadow and time.monotonic() < deadline:
                time.sleep(0.05)

            feedback_url = f"{server.url}/v1/feedback"
            verdicts = [{"id": ids[0], "preferred": "this"}, {"id": ids[1], "preferred": "other"},
                        {"id": ids[2], "score": 0.25}]
            for body in verdicts:
                answer = httpx.post(feedback_url, json=body, timeout=10)
                assert answer.status_code == 200 and answer.json()["status"] == "recorded"
            unknown = httpx.post(feedback_url, json={"id": "chatcmpl-nope", "preferred": "this"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "unknown_id"
            bad = httpx.post(feedback_url, json={"id": ids[0], "score": 3})
            assert bad.status_code == 400
    finally:
        strong_up.stop()
        weak_up.stop()

    runner = CliRunner()
    with StubOpenAIServer(strong_loving_judge) as judge:
        result = runner.invoke(app, [
            "augment", "judge", "--from-log", str(log_dir), "--judge-model", "judge-1",
            "--judge-base-url", judge.base_url, "--out", str(tmp_path / "judged.jsonl"),
            "--no-progress", "--max-attempts", "2"])
        assert result.exit_code == 0, result.output
        assert len(judge.delivered()) == 2 * n_shadow  # both orders, once each
        again = runner.invoke(app, [  # resumes from its journal: nothing is judged twice
            "augment", "judge", "--from-log", str(log_dir), "--judge-model", "judge-1",
            "--judge-base-url", judge.base_url, "--out", str(tmp_path / "judged.jsonl"),
            "--no-progress"])
        assert again.exit_code == 0 and len(judge.delivered()) == 2 * n_shadow
    judged = Battles.read(tmp_path / "judged.jsonl")
    assert len(judged) == n_shadow
    assert set(judged.column("model_a")) == {STRONG} and set(judged.column("model_b")) == {WEAK}
    assert set(judged.column("winner")) == {"model_a"}  # the judge always preferred strong

    result = runner.invoke(app, ["augment", "feedback", "--from-log", str(log_dir),
                                 "--out", str(tmp_path / "feedback.jsonl")])
    assert result.exit_code == 0, result.output
    feedback = Battles.read(tmp_path / "feedback.jsonl")
    assert len(feedback) == 3
    p_b = dict(zip(feedback.prompts, feedback.numeric("p_b_wins"), strict=True))
    served_weak = [s == "weak" for s in sides[:3]]
    assert p_b[asked[0]] == (1.0 if served_weak[0] else 0.0)  # "this" answer won
    assert p_b[asked[1]] == (0.0 if served_weak[1] else 1.0)  # the other side won
    assert p_b[asked[2]] == pytest.approx(0.25 if served_weak[2] else 0.75)

    result = runner.invoke(app, [
        "update", str(directory), "--data", str(tmp_path / "judged.jsonl"),
        "--data", str(tmp_path / "feedback.jsonl"), "--out", str(tmp_path / "v2"),
        "--no-clean"])
    assert result.exit_code == 0, result.output
    v1, v2 = load_router(directory), load_router(tmp_path / "v2")
    (entry,) = v2.training["lineage"]
    assert entry["data"]["n_battles"] == n_shadow + 3 and entry["parent"]["name"] == "v1"
    moved = np.abs(v2.strong_win_prob(asked) - v1.strong_win_prob(asked))
    assert moved.max() > 0  # the new battles changed the router

    model_b = np.array(alpaca_battles.column("model_b"), dtype=object)
    held = alpaca_battles.filter(model_b == WEAK)
    rows = [{"prompt": p, "strong_score": 1 - q, "weak_score": q}
            for p, q in zip(held.prompts, held.numeric("p_b_wins"), strict=True)
            if p not in set(asked)]
    (tmp_path / "outcomes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["compare", str(directory), str(tmp_path / "v2"),
                                 "--outcomes", str(tmp_path / "outcomes.jsonl"), "--json",
                                 "--bootstrap", "300"])
    verdict = json.loads(result.output)
    assert verdict["n_prompts"] == len(rows)
    assert result.exit_code == (1 if verdict["verdict"] == "worse" else 0)
