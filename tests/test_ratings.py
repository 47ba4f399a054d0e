"""Bradley-Terry ratings and tiers, checked on the shared real battle data."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from prefroute.data.battles import Battles
from prefroute.data.ratings import (
    ELO_BASE,
    ELO_SCALE,
    BTRatings,
    bt_log_likelihood,
    fit_bt,
    fit_bt_batched,
    fit_ratings,
    pairwise_counts,
)
from prefroute.data.tiers import (
    ModelTiers,
    drop_same_tier,
    map_battles_to_tiers,
    optimal_tiers,
    tiers_from_ratings,
)
from prefroute.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA = DATA / "alpaca_eval" / "judge_battles.jsonl"
MT_HUMAN = DATA / "mt_bench_human_judgments" / "human.jsonl"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"shared data file {path} is not available")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def mt_human() -> Battles:
    rows = _read_jsonl(MT_HUMAN)
    return Battles.from_records(
        {
            "prompt": r["conversation_a"][0]["content"],
            "model_a": r["model_a"],
            "model_b": r["model_b"],
            "winner": r["winner"],
        }
        for r in rows
    )


@pytest.fixture(scope="module")
def alpaca() -> Battles:
    rows = _read_jsonl(ALPACA)
    keys = ("prompt", "model_a", "model_b", "winner", "p_b_wins", "source")
    return Battles.from_records({k: r[k] for k in keys} for r in rows)


@pytest.fixture(scope="module")
def alpaca_ratings(alpaca: Battles) -> BTRatings:
    return fit_ratings(alpaca)


def _bt_gradient(wins: np.ndarray, theta: np.ndarray, reg: float) -> np.ndarray:
    games = wins + wins.T
    p = expit(theta[:, None] - theta[None, :])
    return wins.sum(axis=1) - (games * p).sum(axis=1) - reg * theta


def _random_wins(rng: np.random.Generator, n: int, density: float = 0.6) -> np.ndarray:
    wins = rng.poisson(3.0, size=(n, n)).astype(float) * (rng.random((n, n)) < density)
    np.fill_diagonal(wins, 0.0)
    return wins


# --- counts ---------------------------------------------------------------------------


def test_pairwise_counts_matches_loop() -> None:
    rng = np.random.default_rng(0)
    m, n = 500, 7
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    o = rng.choice([0.0, 0.5, 1.0, 0.3], size=m)
    w = rng.random(m)
    expected = np.zeros((n, n))
    for i in range(m):
        expected[a[i], b[i]] += w[i] * o[i]
        expected[b[i], a[i]] += w[i] * (1 - o[i])
    np.testing.assert_allclose(pairwise_counts(a, b, o, w, n), expected, atol=1e-12)
    ones = pairwise_counts(a, b, o, None, n)
    assert ones.sum() == pytest.approx(m)


# --- solver ---------------------------------------------------------------------------


def test_batched_solver_equals_single_solver() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 5, 12):
        wins = np.stack([_random_wins(rng, n) for _ in range(30)])
        batched = fit_bt_batched(wins)
        single = np.stack([fit_bt(w) for w in wins])
        np.testing.assert_allclose(batched, single, atol=1e-9)
        np.testing.assert_allclose(batched.mean(axis=1), 0.0, atol=1e-12)


def test_newton_converges_to_stationary_point(alpaca: Battles, caplog) -> None:
    models = alpaca.models()
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[m] for m in alpaca.column("model_a")])
    b = np.array([index[m] for m in alpaca.column("model_b")])
    wins = pairwise_counts(a, b, 1.0 - alpaca.numeric("p_b_wins"), None, len(models))
    with caplog.at_level(logging.DEBUG, logger="prefroute"):
        theta = fit_bt(wins, max_iter=30)
    assert "did not converge" not in caplog.text
    assert np.abs(_bt_gradient(wins, theta, 1e-6)).max() < 1e-6
    best = bt_log_likelihood(wins, theta, 1e-6)
    rng = np.random.default_rng(5)
    for _ in range(5):
        assert bt_log_likelihood(wins, theta + 1e-3 * rng.normal(size=theta.size), 1e-6) < best


def test_large_problem_uses_sparse_path_and_converges() -> None:
    # 150 models: the pair incidence matrix is large enough to be kept sparse
    wins = _random_wins(np.random.default_rng(6), 150, density=0.3)
    theta = fit_bt(wins)
    assert np.abs(_bt_gradient(wins, theta, 1e-6)).max() < 1e-6


def test_ridge_keeps_a_model_that_never_loses_finite(caplog) -> None:
    rng = np.random.default_rng(2)
    rest = _random_wins(rng, 6, density=1.0) + 1.0
    np.fill_diagonal(rest, 0.0)
    wins = np.zeros((7, 7))
    wins[1:, 1:] = rest
    wins[0, 1:] = 5.0  # model 0 beats everyone and never loses
    with caplog.at_level(logging.WARNING, logger="prefroute"):
        theta = fit_bt(wins)
    assert "did not converge" not in caplog.text
    assert np.isfinite(theta).all()
    assert theta[0] == theta.max() and theta[0] - theta[1:].max() > 5.0
    # model 0's battles are almost perfectly explained, so the others' gaps are those of
    # the fit without model 0
    sub = fit_bt(rest)
    np.testing.assert_allclose(theta[1:] - theta[1:].mean(), sub, atol=1e-4)


def test_disconnected_groups_are_each_centred() -> None:
    wins = np.zeros((4, 4))
    wins[0, 1], wins[1, 0] = 3.0, 1.0
    wins[2, 3], wins[3, 2] = 1.0, 2.0
    theta = fit_bt(wins)
    assert theta[0] - theta[1] == pytest.approx(np.log(3.0), abs=1e-5)
    assert theta[3] - theta[2] == pytest.approx(np.log(2.0), abs=1e-5)
    assert theta[:2].sum() == pytest.approx(0.0, abs=1e-6)
    assert theta[2:].sum() == pytest.approx(0.0, abs=1e-6)


def test_solver_rejects_bad_input() -> None:
    with pytest.raises(DataError, match=r"\[n, n\]"):
        fit_bt(np.ones((3, 4)))
    with pytest.raises(DataError, match="non-negative"):
        fit_bt(-np.ones((3, 3)))
    with pytest.raises(ConfigError, match="The 'reg' parameter of fit_bt"):
        fit_bt(np.ones((3, 3)), reg=0.0)


# --- ratings on real data -------------------------------------------------------------


def test_mt_bench_human_ranking(mt_human: Battles) -> None:
    ratings = fit_ratings(mt_human)
    assert sorted(ratings.models) == sorted(
        ["gpt-4", "claude-v1", "gpt-3.5-turbo", "vicuna-13b-v1.2", "alpaca-13b", "llama-13b"]
    )
    ranking = ratings.ranking()
    assert ranking[0] == "gpt-4"
    assert ranking[-1] == "llama-13b"
    assert ratings.win_prob("gpt-4", "llama-13b") > 0.9
    assert ratings.win_prob("gpt-4", "llama-13b") + ratings.win_prob("llama-13b", "gpt-4") == (
        pytest.approx(1.0)
    )
    assert ratings.elo.mean() == pytest.approx(ELO_BASE)
    assert int(ratings.counts.sum()) == 2 * len(mt_human)


def test_mt_bench_ties_option(mt_human: Battles, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="prefroute"):
        dropped = fit_ratings(mt_human, ties="drop")
    assert "417 ties" in caplog.text and "dropped 417 tied battles" in caplog.text
    half = fit_ratings(mt_human, ties="half")
    # ties pull ratings together
    assert np.ptp(dropped.theta) > np.ptp(half.theta)
    assert dropped.ranking()[0] == "gpt-4"


def test_alpaca_ratings_match_scipy_reference(alpaca: Battles, alpaca_ratings: BTRatings) -> None:
    assert len(alpaca_ratings.models) == 58  # gpt4_1106_preview + 57 opponents
    assert set(alpaca.column("model_a")) == {"gpt4_1106_preview"}
    rank = {m: i for i, m in enumerate(alpaca_ratings.ranking())}
    assert rank["gpt4_1106_preview"] < rank["alpaca-7b"]
    assert rank["claude-2"] < rank["falcon-7b-instruct"]
    assert rank["gpt-3.5-turbo-1106"] < rank["oasst-sft-pythia-12b"]

    # direct per-battle soft-label logistic likelihood, minimised by L-BFGS
    models = alpaca_ratings.models
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[m] for m in alpaca.column("model_a")])
    b = np.array([index[m] for m in alpaca.column("model_b")])
    y = 1.0 - alpaca.numeric("p_b_wins")
    n, reg = len(models), 1e-6

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[a] - theta[b]
        value = -(y * log_expit(d) + (1 - y) * log_expit(-d)).sum() + 0.5 * reg * theta @ theta
        r = y - expit(d)
        grad = -(np.bincount(a, r, n) - np.bincount(b, r, n)) + reg * theta
        return value, grad

    res = minimize(
        nll,
        np.zeros(n),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "gtol": 1e-9, "ftol": 1e-16, "maxcor": 30},
    )
    reference = res.x - res.x.mean()
    np.testing.assert_allclose(alpaca_ratings.theta, reference, atol=1e-4)
    np.testing.assert_allclose(alpaca_ratings.elo, ELO_SCALE * reference + ELO_BASE, atol=1e-2)


def test_soft_labels_and_weights(alpaca: Battles) -> None:
    hard = fit_ratings(alpaca, use_soft_labels=False)
    soft = fit_ratings(alpaca)
    assert not np.allclose(hard.theta, soft.theta)
    assert np.corrcoef(hard.theta, soft.theta)[0, 1] > 0.99

    small = alpaca.take(np.arange(0, len(alpaca), 7))
    doubled = Battles.concat([small, small.take(np.arange(0, len(small), 2))])
    weighted = small.with_column("weight", np.where(np.arange(len(small)) % 2 == 0, 2.0, 1.0))
    np.testing.assert_allclose(fit_ratings(weighted).theta, fit_ratings(doubled).theta, atol=1e-8)
    np.testing.assert_allclose(
        fit_ratings(weighted, weights=None).theta, fit_ratings(small).theta, atol=1e-12
    )
    explicit = fit_ratings(small, weights=np.where(np.arange(len(small)) % 2 == 0, 2.0, 1.0))
    np.testing.assert_allclose(explicit.theta, fit_ratings(weighted).theta, atol=1e-12)


def test_fit_ratings_rejects_bad_parameters(mt_human: Battles) -> None:
    with pytest.raises(ConfigError, match="The 'ties' parameter of fit_ratings"):
        fit_ratings(mt_human, ties="ignore")
    with pytest.raises(ConfigError, match="The 'weights' parameter of fit_ratings"):
        fit_ratings(mt_human, weights=np.ones(3))
    with pytest.raises(ConfigError, match="The 'weights' parameter of fit_ratings"):
        fit_ratings(mt_human, weights="uniform")
    with pytest.raises(ConfigError, match="The 'confidence' parameter of fit_ratings"):
        fit_ratings(mt_human, confidence=1.0)
    with pytest.raises(ConfigError, match="The 'bootstrap' parameter of fit_ratings"):
        fit_ratings(mt_human, bootstrap=-1)
    with pytest.raises(ConfigError, match="Unknown model 'gpt-5'"):
        fit_ratings(mt_human).win_prob("gpt-5", "gpt-4")


def test_bootstrap_intervals(mt_human: Battles) -> None:
    full = fit_ratings(mt_human, bootstrap=200, seed=0)
    assert (full.ci_low < full.elo).all() and (full.elo < full.ci_high).all()
    again = fit_ratings(mt_human, bootstrap=200, seed=0)
    np.testing.assert_array_equal(full.ci_low, again.ci_low)

    rng = np.random.default_rng(0)
    subset = mt_human.take(np.sort(rng.choice(len(mt_human), len(mt_human) // 4, replace=False)))
    part = fit_ratings(subset, bootstrap=200, seed=0)
    assert (part.ci_low <= part.elo).all() and (part.elo <= part.ci_high).all()
    width_full = full.ci_high - full.ci_low
    width_part = part.ci_high - part.ci_low
    assert (width_part > width_full).all()
    # standard errors shrink like 1/sqrt(n): four times the data, about half the width
    assert 1.5 < np.median(width_part / width_full) < 2.7


def test_ratings_dict_round_trip(mt_human: Battles) -> None:
    ratings = fit_ratings(mt_human, bootstrap=20)
    data = json.loads(json.dumps(ratings.to_dict()))
    back = BTRatings.from_dict(data)
    assert back.models == ratings.models
    np.testing.assert_allclose(back.theta, ratings.theta)
    np.testing.assert_allclose(back.ci_high, ratings.ci_high)
    np.testing.assert_array_equal(back.counts, ratings.counts)
    np.testing.assert_allclose(data["elo"], ratings.elo)


# --- tiers ----------------------------------------------------------------------------


def _brute_force_tiers(values: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    order = np.argsort(-values)
    s = values[order]
    best_cost, best = np.inf, None
    for cuts in itertools.combinations(range(1, len(s)), k - 1):
        bounds = (0, *cuts, len(s))
        groups = [s[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        cost = sum(((g - g.mean()) ** 2).sum() for g in groups)
        if cost < best_cost - 1e-12:
            best_cost, best = cost, bounds
    tiers = np.empty(len(s), dtype=int)
    for t, (lo, hi) in enumerate(itertools.pairwise(best)):
        tiers[order[lo:hi]] = t
    return best_cost, tiers


def _tier_cost(values: np.ndarray, tiers: np.ndarray) -> float:
    return sum(((values[tiers == t] - values[tiers == t].mean()) ** 2).sum() for t in set(tiers))


def test_optimal_tiers_equals_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(1, 10))
        k = int(rng.integers(1, n + 1))
        values = rng.normal(size=n) * rng.choice([0.01, 1.0, 100.0])
        cost, expected = _brute_force_tiers(values, k)
        got = optimal_tiers(values, k)
        np.testing.assert_array_equal(got, expected)
        assert _tier_cost(values, got) == pytest.approx(cost, rel=1e-9, abs=1e-12)


def test_optimal_tiers_edge_cases_and_order() -> None:
    values = np.array([0.3, -1.0, 2.0, 0.5, 1.9])
    np.testing.assert_array_equal(optimal_tiers(values, 1), np.zeros(5, dtype=int))
    # k = n: every value its own tier, ranked from the highest
    np.testing.assert_array_equal(optimal_tiers(values, 5), [3, 4, 0, 2, 1])
    np.testing.assert_array_equal(optimal_tiers(values, 2), [1, 1, 0, 1, 0])
    perm = np.random.default_rng(4).permutation(5)
    np.testing.assert_array_equal(optimal_tiers(values[perm], 3), optimal_tiers(values, 3)[perm])
    # equal values share a tier whatever their position
    dup = np.array([1.0, 5.0, 1.0, 3.0, 5.0])
    tiers = optimal_tiers(dup, 3)
    assert tiers[0] == tiers[2] and tiers[1] == tiers[4]
    with pytest.raises(ConfigError, match="at most the number of distinct values"):
        optimal_tiers(dup, 4)


@pytest.mark.parametrize("k", [0, 6, -1, 2.5])
def test_optimal_tiers_rejects_bad_k(k) -> None:
    with pytest.raises(ConfigError, match=r"The 'k' parameter of optimal_tiers must be .* Got"):
        optimal_tiers(np.arange(5.0), k)


def test_optimal_tiers_rejects_nan() -> None:
    with pytest.raises(DataError, match="finite"):
        optimal_tiers(np.array([1.0, np.nan]), 1)


def test_alpaca_tiers(alpaca: Battles, alpaca_ratings: BTRatings, caplog) -> None:
    tiers = tiers_from_ratings(alpaca_ratings, 10)
    assert tiers.n_tiers == 10
    assert all(tiers.members(t) for t in range(10))
    theta = dict(zip(alpaca_ratings.models, alpaca_ratings.theta, strict=True))
    # tiers are contiguous in strength, tier 0 strongest
    for m1, m2 in itertools.combinations(tiers.models, 2):
        if theta[m1] > theta[m2]:
            assert tiers.tier_of[m1] <= tiers.tier_of[m2]
    assert tiers.tier_of[alpaca_ratings.ranking()[0]] == 0
    assert tiers.tier_of[alpaca_ratings.ranking()[-1]] == 9
    assert tiers.tier_of["gpt4_1106_preview"] < tiers.tier_of["alpaca-7b"]

    back = ModelTiers.from_dict(json.loads(json.dumps(tiers.to_dict())))
    assert back == tiers

    tier_a, tier_b = map_battles_to_tiers(alpaca, tiers)
    assert (tier_a == tiers.tier_of["gpt4_1106_preview"]).all()
    expected_b = np.array([tiers.tier_of[m] for m in alpaca.column("model_b")])
    np.testing.assert_array_equal(tier_b, expected_b)

    with caplog.at_level(logging.INFO, logger="prefroute"):
        kept = drop_same_tier(alpaca, tiers)
    same = int((tier_a == tier_b).sum())
    assert same > 0 and len(kept) == len(alpaca) - same
    assert f"removed {same} of {len(alpaca)}" in caplog.text


def test_map_battles_to_tiers_names_missing_model() -> None:
    battles = Battles.from_records(
        [
            {"prompt": "p1", "model_a": "x", "model_b": "y", "winner": "model_a"},
            {"prompt": "p2", "model_a": "y", "model_b": "z", "winner": "tie"},
        ]
    )
    tiers = ModelTiers(models=["x", "y"], tier_of={"x": 0, "y": 1}, n_tiers=2)
    with pytest.raises(DataError, match=r"row 2, field 'model_b': model 'z' has no tier"):
        map_battles_to_tiers(battles, tiers)
    with pytest.raises(DataError, match="outside"):
        ModelTiers(models=["x"], tier_of={"x": 3}, n_tiers=2)
