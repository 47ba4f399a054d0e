"""`augment select`: distinct, deterministic picks that feed `augment golden`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from prefroute.cli.main import app
from prefroute.data.outcomes import load_outcomes
from prefroute.errors import ConfigError
from prefroute.selection import pool_vectors, select_prompts


@pytest.fixture(scope="module")
def gsm8k_pool(data_dir):
    table = load_outcomes("gsm8k", data_dir)
    prompts = table.prompts[:400]
    return prompts, pool_vectors(prompts)


@pytest.mark.parametrize("method", ["kmeans", "kcenter"])
def test_select_returns_n_distinct_prompts_deterministically(gsm8k_pool, method):
    prompts, vectors = gsm8k_pool
    pool = prompts + prompts[:50]  # repeated prompts count once
    vecs = np.concatenate([vectors, vectors[:50]])
    a = select_prompts(pool, 60, seed=3, method=method, vectors=vecs)
    b = select_prompts(pool, 60, seed=3, method=method, vectors=vecs)
    assert len(a.indices) == 60
    assert len({pool[i] for i in a.indices}) == 60
    np.testing.assert_array_equal(a.indices, b.indices)
    other = select_prompts(pool, 60, seed=4, method=method, vectors=vecs)
    assert not np.array_equal(np.sort(other.indices), np.sort(a.indices))


def test_uncertainty_moves_picks_towards_the_boundary(gsm8k_pool):
    prompts, vectors = gsm8k_pool
    probs = np.random.default_rng(0).random(len(prompts))
    plain = select_prompts(prompts, 40, vectors=vectors)
    uncertain = select_prompts(prompts, 40, vectors=vectors, strong_win_prob=probs,
                               uncertainty_weight=0.9)
    boundary = 1 - np.abs(2 * probs - 1)
    assert boundary[uncertain.indices].mean() > boundary[plain.indices].mean() + 0.1
    assert np.isnan(plain.uncertainty).all() and np.isfinite(uncertain.uncertainty).all()
    # uncertainty alone, one pick: the one prompt at the boundary, wherever it sits
    one = np.ones(len(prompts))
    one[7] = 0.5
    pick = select_prompts(prompts, 1, vectors=vectors, strong_win_prob=one,
                          uncertainty_weight=1.0)
    assert pick.indices.tolist() == [7]


def test_select_keeps_the_pools_mix(data_dir):
    """Stratified picks keep each part of the pool at its share: 10% GSM8K prompts in an
    MMLU pool get ~10 of 100 picks, more precisely than a random draw would (binomial sd 3),
    and the picks are no sparser than the pool (one pick per cluster over-represented the
    rare corners and gave the diverse MMLU part most clusters: 6-9 GSM8K picks)."""
    from sklearn.neighbors import NearestNeighbors

    mmlu = load_outcomes("mmlu", data_dir).prompts[:1800]
    gsm8k = load_outcomes("gsm8k", data_dir).prompts[:200]
    prompts = list(mmlu) + list(gsm8k)
    vectors = pool_vectors(prompts)
    counts = [int((select_prompts(prompts, 100, seed=seed, vectors=vectors).indices
                   >= len(mmlu)).sum()) for seed in range(6)]
    assert all(8 <= c <= 12 for c in counts), counts
    # typicality: mean distance to the 10 nearest pool neighbours, picks against the pool
    dist = NearestNeighbors(n_neighbors=11).fit(vectors).kneighbors(vectors)[0][:, 1:].mean(1)
    se = dist.std() / np.sqrt(300)
    for seed in range(3):
        picks = select_prompts(prompts, 300, seed=seed, vectors=vectors).indices
        assert abs(dist[picks].mean() - dist.mean()) < 3 * se


def test_select_refuses_a_budget_beyond_the_pool(gsm8k_pool):
    prompts, vectors = gsm8k_pool
    with pytest.raises(ConfigError, match="distinct prompts"):
        select_prompts(prompts[:10] * 3, 11, vectors=np.concatenate([vectors[:10]] * 3))
    probs = np.full(len(prompts), 0.5)
    with pytest.raises(ConfigError, match="router probabilities for"):
        select_prompts(prompts, 5, vectors=vectors, strong_win_prob=probs[:-1])
    probs[3] = np.nan
    with pytest.raises(ConfigError, match="nan for prompt 3 is not a probability"):
        select_prompts(prompts, 5, vectors=vectors, strong_win_prob=probs)


def test_cli_select_feeds_augment_golden(tmp_path, data_dir):
    runner = CliRunner()
    picks, ids = tmp_path / "picks.jsonl", tmp_path / "ids.txt"
    result = runner.invoke(app, ["augment", "select", "--table", "gsm8k", "--budget", "25",
                                 "--data-dir", str(data_dir), "--out", str(picks),
                                 "--ids-out", str(ids), "--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in picks.read_text().splitlines()]
    assert len(rows) == 25 and len({r["prompt_id"] for r in rows}) == 25
    golden = tmp_path / "golden.jsonl"
    result = runner.invoke(app, ["augment", "golden", "--table", "gsm8k", "--strong",
                                 "gpt-4-1106-preview", "--weak",
                                 "mistralai/Mixtral-8x7B-Instruct-v0.1", "--data-dir",
                                 str(data_dir), "--ids-file", str(ids), "--out", str(golden)])
    assert result.exit_code == 0, result.output
    battles = [json.loads(line) for line in golden.read_text().splitlines()]
    assert {b["prompt"] for b in battles} == {r["prompt"] for r in rows}


def _disagreed(table, rows) -> np.ndarray:
    strong = table.column("gpt-4-1106-preview")[rows]
    weak = table.column("mistralai/Mixtral-8x7B-Instruct-v0.1")[rows]
    return (strong != weak).astype(float)


def test_disagreement_picks_prompts_where_the_models_disagree(data_dir):
    from prefroute.selection import disagreement_probability

    table = load_outcomes("mmlu", data_dir)
    rows = np.random.default_rng(0).permutation(len(table.prompts))[:4000]
    prompts = [table.prompts[i] for i in rows]
    vectors = pool_vectors(prompts)
    truth = _disagreed(table, rows)
    labelled, pool = np.arange(800), np.arange(800, 4000)
    d = disagreement_probability(vectors[pool], vectors[labelled], truth[labelled])
    assert d.shape == (len(pool),) and ((d > 0) & (d < 1)).all()
    pool_prompts = [prompts[i] for i in pool]
    picks = select_prompts(pool_prompts, 400, seed=0, method="disagreement",
                           vectors=vectors[pool], disagreement=d)
    again = select_prompts(pool_prompts, 400, seed=0, method="disagreement",
                           vectors=vectors[pool], disagreement=d)
    np.testing.assert_array_equal(picks.indices, again.indices)
    assert len(set(picks.indices.tolist())) == 400
    # the model ranks held-out disagreements above agreements, the draw favours its high
    # predictions, and prompts weighted as drawn hold clearly more real disagreements
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth[pool], d) > 0.58
    assert d[picks.indices].mean() > d.mean() + 0.03
    weights = d**2
    assert weights @ truth[pool] / weights.sum() > truth[pool].mean() + 0.03
    # labels that never disagree leave nothing to learn: every prompt gets the same chance
    flat = disagreement_probability(vectors[pool], vectors[labelled], np.zeros(800))
    assert (flat == 0).all()
    with pytest.raises(ConfigError, match="disagreement probability"):
        select_prompts(pool_prompts, 10, method="disagreement", vectors=vectors[pool])


def test_cli_select_with_labels_leaves_them_out_and_seeks_disagreement(tmp_path, data_dir):
    runner = CliRunner()
    common = ["--table", "gsm8k", "--data-dir", str(data_dir)]
    first, ids = tmp_path / "first.jsonl", tmp_path / "ids.txt"
    result = runner.invoke(app, ["augment", "select", *common, "--budget", "150", "--out",
                                 str(first), "--ids-out", str(ids)])
    assert result.exit_code == 0, result.output
    golden = tmp_path / "golden.jsonl"
    result = runner.invoke(app, ["augment", "golden", *common, "--strong",
                                 "gpt-4-1106-preview", "--weak",
                                 "mistralai/Mixtral-8x7B-Instruct-v0.1", "--ids-file", str(ids),
                                 "--out", str(golden)])
    assert result.exit_code == 0, result.output
    second = tmp_path / "second.jsonl"
    result = runner.invoke(app, ["augment", "select", *common, "--budget", "100", "--labelled",
                                 str(golden), "--out", str(second)])
    assert result.exit_code == 0, result.output
    assert "disagreement" in result.output and "left out 150 pool prompts" in result.output
    picked = [json.loads(line)["prompt"] for line in second.read_text().splitlines()]
    labelled = {json.loads(line)["prompt"] for line in golden.read_text().splitlines()}
    assert len(set(picked)) == 100 and not set(picked) & labelled
    # without labels the method has nothing to learn from: one clear error
    result = runner.invoke(app, ["augment", "select", *common, "--budget", "10", "--method",
                                 "disagreement", "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0 and "--labelled" in str(result.output) + str(result.exception)
