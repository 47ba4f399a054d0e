"""Calibration: thresholds for a strong-call rate or a cost budget, on real prompts."""

from __future__ import annotations

import numpy as np
import pytest

from prefroute.calibrate import (
    CHARS_PER_TOKEN,
    Prices,
    calibrate_budget,
    calibrate_strong_rate,
    threshold_for_strong_rate,
)
from prefroute.data.battles import Battles
from prefroute.data.outcomes import load_outcomes
from prefroute.errors import ConfigError
from prefroute.router import Router, make_router

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.fixture(scope="module")
def mmlu_prompts(data_dir):
    prompts = load_outcomes("mmlu", data_dir).prompts
    rows = np.random.default_rng(0).permutation(len(prompts))[:4000]
    return [prompts[i] for i in rows[:2000]], [prompts[i] for i in rows[2000:]]


@pytest.fixture(scope="module")
def random_router():
    predictor = make_router("random", strong_model=STRONG, weak_model=WEAK, seed=3)
    predictor.fit(Battles.from_records([{"prompt": "x", "model_a": STRONG, "model_b": WEAK,
                                         "winner": "model_a"}]))
    return Router(predictor)


@pytest.mark.parametrize("rate", RATES)
def test_strong_rate_calibration_hits_rate_on_real_prompts(random_router, mmlu_prompts, rate):
    calibration, held_out = mmlu_prompts
    cal = random_router.calibrate(calibration, rate)
    routed = random_router.route(calibration)
    realised = np.mean([m == STRONG for m in routed])
    assert abs(realised - rate) <= 0.01
    assert cal.realised_strong_rate == pytest.approx(realised)
    # on 2,000 new prompts the rate is a binomial proportion: sd <= sqrt(0.25 / 2000) = 0.011
    fresh = np.mean([m == STRONG for m in random_router.route(held_out)])
    assert abs(fresh - rate) <= 0.05


def test_ties_move_together():
    p = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    # 2 of 5 strong falls inside the 0.5 group: the whole group goes (smallest rate >= 40%)
    t = threshold_for_strong_rate(p, 0.4)
    assert (p >= t).sum() == 4
    assert (p >= threshold_for_strong_rate(p, 0.2)).sum() == 1
    assert (p >= threshold_for_strong_rate(p, 0.0)).sum() == 0
    assert (p >= threshold_for_strong_rate(p, 1.0)).sum() == 5


def test_neighbouring_floats_split_exactly():
    # the midpoint of two adjacent doubles rounds onto one of them
    values = np.random.default_rng(0).random(500)
    for v in values:
        p = np.array([v, np.nextafter(v, 0.0)])
        assert (p >= threshold_for_strong_rate(p, 0.5)).sum() == 1


def _routed_cost(p, threshold, strong_cost, weak_cost):
    strong = p >= threshold
    return float(np.where(strong, strong_cost, weak_cost).sum() / len(p) * 1000.0), strong


def _assert_max_affordable(p, cal, strong_cost, weak_cost, limit):
    cost, strong = _routed_cost(p, cal.threshold, strong_cost, weak_cost)
    assert cost <= limit + 1e-9
    assert cal.cost_per_1k_requests == pytest.approx(cost)
    assert cal.realised_strong_rate == pytest.approx(strong.mean())
    # one more prompt (the next by probability) would break the budget
    order = np.argsort(-p, kind="stable")
    k = int(strong.sum())
    if k < len(p):
        more = strong.copy()
        more[order[k]] = True
        assert np.where(more, strong_cost, weak_cost).sum() / len(p) * 1000.0 > limit


def test_budget_per_call_prices(random_router, mmlu_prompts):
    prompts = mmlu_prompts[0]
    p = random_router.strong_win_prob(prompts)
    prices = Prices(strong_per_call=0.01, weak_per_call=0.001)
    # all weak = $1 per 1k, all strong = $10 per 1k; $4 buys (4 - 1) / 9 = 1/3 strong calls
    cal = calibrate_budget(p, prompts, prices, per_1k_requests=4.0)
    n = len(prompts)
    assert cal.realised_strong_rate == pytest.approx(np.floor(n / 3) / n)
    _assert_max_affordable(p, cal, np.full(n, 0.01), np.full(n, 0.001), 4.0)


def test_budget_per_token_prices(random_router, mmlu_prompts):
    prompts = mmlu_prompts[0]
    p = random_router.strong_win_prob(prompts)
    prices = Prices(strong_per_1k_input=0.01, strong_per_1k_output=0.03,
                    weak_per_1k_input=0.0006, weak_per_1k_output=0.0006,
                    expected_output_tokens=200)
    tokens = np.array([len(x) for x in prompts]) / CHARS_PER_TOKEN
    strong_cost = (tokens * 0.01 + 200 * 0.03) / 1000
    weak_cost = (tokens * 0.0006 + 200 * 0.0006) / 1000
    all_strong = strong_cost.sum() / len(p) * 1000
    for fraction in (0.25, 0.5, 0.9):
        cal = calibrate_budget(p, prompts, prices, fraction_of_all_strong=fraction)
        _assert_max_affordable(p, cal, strong_cost, weak_cost, fraction * all_strong)
        assert 0.0 < cal.realised_strong_rate < 1.0
    everything = calibrate_budget(p, prompts, prices, fraction_of_all_strong=1.0)
    assert everything.realised_strong_rate == 1.0


def test_budget_with_tied_probabilities_stays_within_budget():
    p = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    prompts = ["q"] * 5
    prices = Prices(strong_per_call=1.0, weak_per_call=0.0)
    # $400 per 1k buys 2 of 5 strong calls, but the 0.5 group only moves as a block of 3:
    # the largest realisable affordable count is 1
    cal = calibrate_budget(p, prompts, prices, per_1k_requests=400.0)
    assert (p >= cal.threshold).sum() == 1
    assert cal.cost_per_1k_requests == pytest.approx(200.0)


def test_bad_budgets_raise():
    p = np.array([0.2, 0.8])
    prompts = ["a", "b"]
    prices = Prices(strong_per_call=0.01, weak_per_call=0.001)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate_budget(p, prompts, prices)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate_budget(p, prompts, prices, per_1k_requests=5.0, fraction_of_all_strong=0.5)
    with pytest.raises(ConfigError, match="per_1k_requests"):
        calibrate_budget(p, prompts, prices, per_1k_requests=-1.0)
    with pytest.raises(ConfigError, match="per_1k_requests"):
        calibrate_budget(p, prompts, prices, per_1k_requests=float("nan"))
    with pytest.raises(ConfigError, match="below the all-weak cost"):
        calibrate_budget(p, prompts, prices, per_1k_requests=0.5)
    with pytest.raises(ConfigError, match="fraction_of_all_strong"):
        calibrate_budget(p, prompts, prices, fraction_of_all_strong=-0.1)
    with pytest.raises(ConfigError, match="probabilities for"):
        calibrate_budget(p, ["a"], prices, per_1k_requests=5.0)
    with pytest.raises(ConfigError, match="costs nothing"):
        Prices(weak_per_call=0.001)
    with pytest.raises(ConfigError, match="strong_per_call"):
        Prices(strong_per_call=-0.01)


def test_bad_rates_and_probabilities_raise():
    with pytest.raises(ConfigError, match="strong_rate"):
        calibrate_strong_rate(np.array([0.1, 0.2]), 1.5)
    with pytest.raises(ConfigError, match="empty"):
        calibrate_strong_rate(np.array([]), 0.5)
    with pytest.raises(ConfigError, match="NaN"):
        calibrate_strong_rate(np.array([0.2, np.nan, 0.7]), 0.5)


@pytest.mark.parametrize(
    "field", ["strong_per_call", "weak_per_1k_input", "expected_output_tokens"])
def test_an_infinite_price_is_refused(field):
    # was accepted: the costs became inf - inf = nan and the error named a temporary folder
    message = rf"'{field}' parameter of Prices must be in \[0.0, inf\)"
    with pytest.raises(ConfigError, match=message):
        Prices(**{"strong_per_call": 1.0, field: float("inf")})


def test_an_infinite_budget_is_refused():
    p = np.array([0.2, 0.6, 0.9])
    for budget in ({"per_1k_requests": float("inf")}, {"fraction_of_all_strong": float("inf")}):
        with pytest.raises(ConfigError, match=r"must be in \[0.0, inf\)"):
            calibrate_budget(p, ["a", "b", "c"], Prices(strong_per_call=1.0), **budget)
