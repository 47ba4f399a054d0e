"""The preference loop's parts on real AlpacaEval / MMLU data: update, swap, compare, journal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from prefroute.cli.main import app
from prefroute.data.battles import Battles
from prefroute.errors import ConfigError, DataError
from prefroute.loop.compare import compare_probabilities, paired_apgr_difference
from prefroute.loop.mf_update import learn_model_vector, model_prior, warm_update
from prefroute.loop.sw_bt_update import append_battles, swap_model
from prefroute.loop.update import update_router
from prefroute.router import Router, load_router, make_router
from prefroute.serve.journal import RotatingJournal, iter_journal

STRONG = "gpt-4-1106-preview"
BASE_WEAK = "claude-2"
NEW_MODEL = "alpaca-7b"
SUBSET = ["claude-2", "vicuna-13b", "phi-2", "gemma-7b-it", "alpaca-7b", "falcon-7b-instruct"]


@pytest.fixture(scope="module")
def six(alpaca_battles) -> Battles:
    """AlpacaEval judge battles of gpt-4-1106-preview against six models (3,864 battles)."""
    model_b = np.array(alpaca_battles.column("model_b"), dtype=object)
    return alpaca_battles.filter(np.isin(model_b, SUBSET))


def _split_new_prompts(battles: Battles, seed: int = 0) -> tuple[Battles, Battles]:
    """(old, new): new holds two models' battles on half the prompts, including 40 prompts
    that the old battles never saw."""
    prompts = np.array(battles.prompts, dtype=object)
    distinct = np.unique(prompts)
    rng = np.random.default_rng(seed)
    unseen = set(rng.choice(distinct, 40, replace=False))
    half = set(rng.choice(distinct, len(distinct) // 2, replace=False)) | unseen
    model_b = np.array(battles.column("model_b"), dtype=object)
    is_new = np.array([p in half for p in prompts]) & np.isin(model_b, ["phi-2", "alpaca-7b"])
    is_new |= np.array([p in unseen for p in prompts])
    return battles.filter(~is_new), battles.filter(is_new)


@pytest.mark.parametrize("params", [{}, {"top_k": 25}, {"top_k": 25, "index": "hnsw"}])
def test_sw_bt_append_equals_a_fit_on_the_union(six, params):
    old, new = _split_new_prompts(six)
    fitted = make_router("sw_bt", strong_model=STRONG, weak_model=BASE_WEAK, **params).fit(old)
    updated = append_battles(fitted, new)
    union = make_router("sw_bt", strong_model=STRONG, weak_model=BASE_WEAK, **params).fit(
        Battles.concat([old, new]))
    assert updated.prompt_embeddings_.shape == union.prompt_embeddings_.shape
    assert updated.prompt_embeddings_.shape[0] > fitted.prompt_embeddings_.shape[0]
    queries = sorted(set(new.prompts))[:60] + ["Write a haiku about tea.", "What is 2+2?"]
    if params.get("index") == "hnsw":  # the appended index finds the exact neighbours
        assert updated.index_.ntotal == updated.prompt_embeddings_.shape[0]
        q = updated.embedder_.encode(queries)
        _, found = updated.index_.search(q, 25)
        exact = np.argsort(-(q @ updated.prompt_embeddings_.T), axis=1)[:, :25]
        recall = np.mean([len(set(f) & set(e)) / 25 for f, e in zip(found, exact, strict=True)])
        assert recall > 0.9
    else:
        np.testing.assert_allclose(updated.predict_proba(queries), union.predict_proba(queries),
                                   atol=1e-9)
    # the parent is untouched
    assert fitted.prompt_embeddings_.shape[0] < updated.prompt_embeddings_.shape[0]


def test_sw_bt_swap_rates_the_new_model_from_its_battles(six, tmp_path):
    model_b = np.array(six.column("model_b"), dtype=object)
    base = six.filter(model_b != NEW_MODEL)
    own = six.filter(model_b == NEW_MODEL)
    given, rest = own.take(np.arange(100)), own.take(np.arange(100, len(own)))
    fitted = make_router("sw_bt", strong_model=STRONG, weak_model=BASE_WEAK).fit(base)
    swapped = swap_model(fitted, given, role="weak", model=NEW_MODEL)
    assert swapped.weak_model == NEW_MODEL and fitted.weak_model == BASE_WEAK
    retrained = make_router("sw_bt", strong_model=STRONG, weak_model=NEW_MODEL).fit(
        Battles.concat([base, given]))
    np.testing.assert_allclose(swapped.predict_proba(rest.prompts[:50]),
                               retrained.predict_proba(rest.prompts[:50]), atol=1e-9)
    with pytest.raises(DataError, match="appears in none"):
        swap_model(fitted, given, role="weak", model="no-such-model")
    # a model joined to nothing the router knows cannot be rated against the strong model
    island = Battles.from_records([{"prompt": "hi there, who are you", "model_a": "x-1",
                                    "model_b": "x-2", "winner": "model_a"}])
    with pytest.raises(DataError, match="no battle joins"):
        swap_model(fitted, island, role="weak", model="x-1")


def test_update_router_records_lineage_and_round_trips(six, tmp_path):
    model_b = np.array(six.column("model_b"), dtype=object)
    base = six.filter(model_b != NEW_MODEL)
    given = six.filter(model_b == NEW_MODEL).take(np.arange(80))
    parent_dir = tmp_path / "parent"
    Router(make_router("sw_bt", strong_model=STRONG, weak_model=BASE_WEAK).fit(base), 0.4,
           training={"sources": ["alpaca_eval"]}).save_pretrained(parent_dir)
    parent = load_router(parent_dir)
    child, report = update_router(parent, given, weak_model=NEW_MODEL, parent=parent_dir,
                                  data_name="new.jsonl", data_sources=["new.jsonl"])
    assert report.kind == "swap" and report.n_battles == 80
    child.save_pretrained(tmp_path / "child")
    loaded = load_router(tmp_path / "child")
    assert loaded.weak_model == NEW_MODEL and loaded.threshold == 0.4
    (entry,) = loaded.training["lineage"]
    assert entry["parent"]["name"] == "parent" and len(entry["parent"]["sha256"]) == 64
    assert entry["data"]["n_battles"] == 80 and entry["replaced"] == {
        "weak": f"{BASE_WEAK} -> {NEW_MODEL}"}
    assert loaded.training["sources"] == ["alpaca_eval", "new.jsonl"]
    assert loaded.calibration["stale"] is True
    np.testing.assert_allclose(loaded.strong_win_prob(given.prompts[:20]),
                               child.strong_win_prob(given.prompts[:20]))
    # a second update chains the lineage
    grandchild, _ = update_router(loaded, given, parent=tmp_path / "child")
    assert [e["kind"] for e in grandchild.training["lineage"]] == ["swap", "update"]
    random_router = Router(make_router("random", strong_model=STRONG,
                                       weak_model=BASE_WEAK).fit(base))
    with pytest.raises(ConfigError, match="must be retrained"):
        update_router(random_router, given)


@pytest.fixture(scope="module")
def mf_base(six):
    model_b = np.array(six.column("model_b"), dtype=object)
    base = six.filter(model_b != NEW_MODEL)
    return base, make_router("mf", strong_model=STRONG, weak_model=BASE_WEAK, epochs=6,
                             projection_bias=True, progress=False).fit(base)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def test_mf_swap_learns_only_the_new_vector_and_fits_its_battles(six, mf_base, tmp_path):
    _, fitted = mf_base
    model_b = np.array(six.column("model_b"), dtype=object)
    own = six.filter(model_b == NEW_MODEL)
    given, rest = own.take(np.arange(200)), own.take(np.arange(200, len(own)))
    swapped = learn_model_vector(fitted, given, NEW_MODEL)
    assert NEW_MODEL not in fitted.models_ and swapped.models_[-1] == NEW_MODEL
    np.testing.assert_array_equal(swapped.P_[:-1], fitted.P_)  # every known model frozen
    np.testing.assert_array_equal(swapped.W_, fitted.W_)
    np.testing.assert_array_equal(swapped.w_, fitted.w_)
    # held-out battles of the new model: the fitted vector beats the prior mean alone
    y = 1.0 - rest.numeric("p_b_wins")
    prior_only = learn_model_vector(fitted, given, NEW_MODEL, prior_strength=1e9)
    mean, _ = model_prior(fitted)
    unit = prior_only.P_[-1] / np.linalg.norm(prior_only.P_[-1])
    assert np.allclose(unit, mean / np.linalg.norm(mean), atol=1e-3)
    learned = _log_loss(swapped.pair_proba(rest.prompts, STRONG, NEW_MODEL), y)
    prior = _log_loss(prior_only.pair_proba(rest.prompts, STRONG, NEW_MODEL), y)
    assert learned < prior
    # the swapped router saves and loads like any other (config.json + safetensors)
    swapped.weak_model = NEW_MODEL
    swapped.save_pretrained(tmp_path / "swapped")
    reloaded = load_router(tmp_path / "swapped")
    np.testing.assert_array_equal(reloaded.strong_win_prob(rest.prompts[:50]),
                                  swapped.predict_proba(rest.prompts[:50]))
    with pytest.raises(DataError, match="against a model the router"):
        learn_model_vector(fitted, Battles.from_records([{
            "prompt": "hello, how are you today", "model_a": "u-1", "model_b": "u-2",
            "winner": "model_a"}]), "u-1")


def test_mf_warm_update_lowers_the_loss_on_new_battles_with_replay(six, mf_base):
    base, fitted = mf_base
    model_b = np.array(six.column("model_b"), dtype=object)
    new = six.filter(model_b == NEW_MODEL)
    updated = warm_update(fitted, new, replay=base, replay_size=500, epochs=3)
    info = updated.training_info_["update"]
    assert info["n_replayed"] == 500 and info["new_models"] == [NEW_MODEL]
    y = 1.0 - new.numeric("p_b_wins")
    mean, _ = model_prior(fitted)
    before = learn_model_vector(fitted, new, NEW_MODEL, prior_strength=1e9)  # prior vector
    loss_before = _log_loss(before.pair_proba(new.prompts, STRONG, NEW_MODEL), y)
    loss_after = _log_loss(updated.pair_proba(new.prompts, STRONG, NEW_MODEL), y)
    assert loss_after < loss_before
    assert not np.array_equal(updated.W_, fitted.W_)  # everything trained, from the old weights


def test_paired_bootstrap_on_mmlu_detects_a_worse_router(data_dir):
    from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes

    table = load_outcomes("mmlu", data_dir)
    rows = np.random.default_rng(0).permutation(len(table))[:3000]
    strong, weak = table.column(ROUTELLM_STRONG)[rows], table.column(ROUTELLM_WEAK)[rows]
    rng = np.random.default_rng(1)
    gain = strong - weak
    good = gain + rng.normal(0, 0.6, len(rows))  # a router that sees the gain through noise
    noisy = rng.random(len(rows))  # a random one
    worse = compare_probabilities("mmlu", strong, weak, good, noisy, n_bootstrap=400)
    assert worse.verdict == "worse" and worse.ci[1] < 0 < worse.old_apgr - 0.5
    better = compare_probabilities("mmlu", strong, weak, noisy, good, n_bootstrap=400)
    assert better.verdict == "better"
    same = compare_probabilities("mmlu", strong, weak, good, good, n_bootstrap=200)
    assert same.verdict == "no significant difference" and same.difference == 0
    # paired: the CI of the difference is narrower than the spread of either APGR alone
    _, _, ci, diffs = paired_apgr_difference(strong, weak, good, good + rng.normal(0, 0.05,
                                             len(rows)), n_bootstrap=300)
    assert ci[1] - ci[0] < 0.05 and np.isfinite(diffs).all()


def test_cli_update_and_compare_gate(six, tmp_path):
    model_b = np.array(six.column("model_b"), dtype=object)
    base = six.filter(model_b != NEW_MODEL)
    own = six.filter(model_b == NEW_MODEL)
    Router(make_router("sw_bt", strong_model=STRONG, weak_model=BASE_WEAK).fit(base)
           ).save_pretrained(tmp_path / "old")
    own.take(np.arange(150)).write(tmp_path / "new.jsonl")
    runner = CliRunner()
    result = runner.invoke(app, ["update", str(tmp_path / "old"), "--data",
                                 str(tmp_path / "new.jsonl"), "--weak-model", NEW_MODEL,
                                 "--out", str(tmp_path / "new"), "--no-clean"])
    assert result.exit_code == 0, result.output
    assert "swap of sw_bt: 150 new battles" in result.output
    again = runner.invoke(app, ["update", str(tmp_path / "old"), "--data",
                                str(tmp_path / "new.jsonl"), "--out", str(tmp_path / "new")])
    assert again.exit_code != 0 and "exists and is not empty" in str(again.exception or
                                                                     again.output)
    # outcomes: the new model's held-out prompts, judge preference as the score
    rest = own.take(np.arange(150, len(own)))
    p_b = rest.numeric("p_b_wins")
    with open(tmp_path / "outcomes.jsonl", "w") as handle:
        for prompt, p in zip(rest.prompts, p_b, strict=True):
            handle.write(json.dumps({"prompt": prompt, "strong_score": 1 - p,
                                     "weak_score": p}) + "\n")
    result = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new"),
                                 "--outcomes", str(tmp_path / "outcomes.jsonl"), "--json",
                                 "--bootstrap", "300"])
    verdict = json.loads(result.output)
    assert result.exit_code == (1 if verdict["verdict"] == "worse" else 0)
    assert verdict["n_prompts"] == len(rest)
    # outcomes on which OLD ranks well: a random NEW router is significantly worse (exit 1)
    old_probs = load_router(tmp_path / "old").strong_win_prob(rest.prompts)
    (tmp_path / "gate.jsonl").write_text("".join(
        json.dumps({"prompt": p, "strong_score": float(q >= np.median(old_probs)),
                    "weak_score": 0.25}) + "\n" for p, q in zip(rest.prompts, old_probs,
                                                               strict=True)))
    Router(make_router("random", strong_model=STRONG, weak_model=BASE_WEAK, seed=1).fit(base)
           ).save_pretrained(tmp_path / "random")
    result = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "random"),
                                 "--outcomes", str(tmp_path / "gate.jsonl"), "--bootstrap", "300"])
    assert result.exit_code == 1 and "NEW is worse than OLD" in result.output, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "random"), str(tmp_path / "old"),
                                 "--outcomes", str(tmp_path / "gate.jsonl"), "--bootstrap", "300"])
    assert result.exit_code == 0 and "NEW is better than OLD" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new"),
                                 "--benchmark", "mt-bench", "--bootstrap", "200"])
    assert result.exit_code in (0, 1) and "mt-bench: 72 prompts" in result.output
    (tmp_path / "new.jsonl").rename(tmp_path / "moved.jsonl")  # a recorded source is gone
    again = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new"),
                                "--benchmark", "mt-bench", "--bootstrap", "200"])
    assert again.exit_code in (0, 1) and "mt-bench: 72 prompts" in again.output
    (tmp_path / "tied.jsonl").write_text("".join(
        json.dumps({"prompt": p, "strong_score": 1, "weak_score": 1}) + "\n"
        for p in rest.prompts))
    result = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new"),
                                 "--outcomes", str(tmp_path / "tied.jsonl")])
    assert isinstance(result.exception, DataError) and "undefined" in str(result.exception)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x y z", "strong_score": "nan?"}\n')
    result = runner.invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new"),
                                 "--outcomes", str(tmp_path / "broken.jsonl")])
    assert isinstance(result.exception, DataError)
    assert "row 1" in str(result.exception) and "strong_score" in str(result.exception)


def test_journal_rotates_and_a_torn_last_line_is_skipped(tmp_path):
    journal = RotatingJournal(tmp_path, max_bytes=4096)
    for i in range(200):
        journal.append({"type": "request", "id": f"r{i}", "text": "x" * 50})
    journal.close()
    files = sorted(tmp_path.glob("journal-*.jsonl"))
    assert len(files) > 2 and all(f.stat().st_size <= 4096 for f in files)
    # a crash mid-write: the last line is cut short
    with open(files[-1], "ab") as handle:
        handle.write(b'{"type": "request", "id": "torn", "te')
    records = [r for _, _, r in iter_journal(tmp_path)]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(200)]
    # reopening continues after the torn line, on a fresh line
    journal = RotatingJournal(tmp_path, max_bytes=4096)
    journal.append({"type": "request", "id": "after"})
    journal.close()
    assert [r["id"] for _, _, r in iter_journal(tmp_path)][-1] == "after"
    middle = files[0]
    middle.write_bytes(middle.read_bytes().replace(b'"r1"', b'"r1', 1))
    with pytest.raises(DataError, match=f"file {middle}, row"):
        list(iter_journal(tmp_path))
    assert os.access(files[0], os.R_OK)


def test_serve_loop_settings_are_checked(tmp_path, six):
    from prefroute.serve import ServeSettings, UpstreamSettings, create_app

    directory = tmp_path / "r"
    Router(make_router("random", strong_model=STRONG, weak_model=BASE_WEAK).fit(six)
           ).save_pretrained(directory)
    up = UpstreamSettings(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="need --log-dir"):
        create_app(ServeSettings(routers=[str(directory)], strong=up, weak=up, shadow_rate=0.5))
    with pytest.raises(ConfigError, match="shadow_rate must be in"):
        create_app(ServeSettings(routers=[str(directory)], strong=up, weak=up,
                                 log_dir=tmp_path / "j", shadow_rate=1.5))


def test_cli_mf_update_replays_old_battles(six, mf_base, tmp_path):
    base, fitted = mf_base
    Router(fitted).save_pretrained(tmp_path / "mf")
    base.take(np.arange(600)).write(tmp_path / "old.jsonl")
    model_b = np.array(six.column("model_b"), dtype=object)
    six.filter(model_b == NEW_MODEL).take(np.arange(120)).write(tmp_path / "new.jsonl")
    result = CliRunner().invoke(app, [
        "update", str(tmp_path / "mf"), "--data", str(tmp_path / "new.jsonl"), "--replay",
        str(tmp_path / "old.jsonl"), "--replay-size", "100", "--epochs", "1", "--no-clean",
        "--out", str(tmp_path / "mf-2")])
    assert result.exit_code == 0, result.output
    assert "update of mf: 120 new battles, 100 replayed" in result.output
    updated = load_router(tmp_path / "mf-2")
    assert NEW_MODEL in updated.predictor.models_
    assert updated.training["lineage"][0]["n_replayed"] == 100


def test_feedback_survives_a_restart_and_becomes_battles(tmp_path):
    from data_aug.from_log import feedback_battles
    from prefroute.serve.errors import ServeError
    from prefroute.serve.journal import RequestLog

    journal = RotatingJournal(tmp_path)
    log = RequestLog(journal)
    common = {"router_name": "r", "threshold": 0.5, "strong_model": STRONG,
              "weak_model": BASE_WEAK, "started": 0.0, "usage": None, "response": None,
              "stream": False}
    log.record_request(request_id="a", text="Explain photosynthesis briefly.",
                       strong_win_prob=0.7, side="strong", model=STRONG, **common)
    log.record_request(request_id="b", text="Name three prime numbers.",
                       strong_win_prob=0.2, side="weak", model=BASE_WEAK, **common)
    journal.close()
    restarted = RequestLog(RotatingJournal(tmp_path))  # a new server on the same folder
    assert restarted.known_ids == {"a", "b"}
    restarted.record_feedback({"id": "a", "preferred": "other"})
    restarted.record_feedback({"id": "b", "score": 0.9})
    restarted.record_feedback({"id": "b", "score": 0.2})  # changed their mind: the last counts
    with pytest.raises(ServeError) as unknown:
        restarted.record_feedback({"id": "zzz", "preferred": "this"})
    assert unknown.value.status == 404
    for bad in ({"id": "a"}, {"id": "a", "preferred": "yes"}, {"id": "a", "score": -1},
                {"id": "a", "preferred": "this", "score": 1}, {"id": 3, "score": 1}):
        with pytest.raises(ServeError) as invalid:
            restarted.record_feedback(bad)
        assert invalid.value.status == 400
    restarted.journal.close()
    battles = feedback_battles(tmp_path)
    rows = {r["prompt"]: r for r in battles.to_records()}
    assert rows["Explain photosynthesis briefly."]["winner"] == "model_b"  # the weak side won
    assert rows["Name three prime numbers."]["p_b_wins"] == pytest.approx(0.2)
    assert set(battles.column("source")) == {"feedback"}
