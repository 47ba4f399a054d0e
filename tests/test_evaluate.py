"""Routing-quality metrics, evaluation on stored benchmarks, plots and protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefroute.data.battles import Battles
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
from prefroute.errors import ConfigError
from prefroute.evaluate import (
    RankedOutcomes,
    apgr,
    bootstrap_apgr,
    cpt,
    evaluate_router,
    oracle_metrics,
    pgr,
    plot_routing_curves,
    prompt_length_probs,
    random_metrics,
    router_metrics,
    routing_curve,
)
from prefroute.evaluate.baselines import knn_probs, strong_win_labels
from prefroute.evaluate.protocols import (
    PAIR_STRONG,
    PAIR_WEAK,
    KnnScorer,
    LengthScorer,
    RouterScorer,
    crossfit_folds,
    run_golden_crossfit,
)
from prefroute.router import Router, make_router

# --- a hand-made 0/1 table ------------------------------------------------------------
# prompt  p    strong weak  gain
#   A    0.9     1     0    +1
#   B    0.7     1     1     0
#   C    0.5     0     1    -1
#   D    0.3     1     0    +1
#   E    0.1     1     1     0
# weak quality 3/5 = 0.6, strong 4/5 = 0.8, gap 0.2.
# Top-k by p for k = 0..5: cumulative gain 0, 1, 1, 0, 1, 1 -> quality 0.6 + gain / 5
# = 0.6, 0.8, 0.8, 0.6, 0.8, 0.8 at rates 0, .2, .4, .6, .8, 1; PGR = 0, 1, 1, 0, 1, 1.
# APGR (trapezoids of width 0.2): 0.2 * (0.5 + 1 + 0.5 + 0.5 + 1) = 0.7.
# RouteLLM's deciles for n = 5 fall on ascending positions ceil(i * 4 / 10) = 1,1,2,2,2,3,3,4,4
# plus "all" and "none": every rate 0, .2, ..., 1 appears, so its APGR is 0.7 as well.
# CPT(x): first crossing of PGR x on the segment (0, 0) -> (0.2, 1): 0.2 x -> 4%, 10%, 16%.
P5 = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
S5 = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
W5 = np.array([0.0, 1.0, 1.0, 0.0, 1.0])


def test_curve_pgr_apgr_cpt_by_hand():
    curve = routing_curve(S5, W5, P5, points="all")
    np.testing.assert_allclose(curve.strong_rate, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.quality, [0.6, 0.8, 0.8, 0.6, 0.8, 0.8])
    np.testing.assert_allclose(curve.pgr(0.6, 0.8), [0, 1, 1, 0, 1, 1])
    assert pgr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert apgr(curve, 0.6, 0.8) == pytest.approx(0.7)
    decile = routing_curve(S5, W5, P5, points="routellm")
    np.testing.assert_allclose(decile.strong_rate, curve.strong_rate)
    assert apgr(decile, 0.6, 0.8) == pytest.approx(0.7)
    assert cpt(curve, 0.6, 0.8, 0.2) == pytest.approx(0.04)
    assert cpt(curve, 0.6, 0.8, 0.5) == pytest.approx(0.10)
    assert cpt(curve, 0.6, 0.8, 0.8) == pytest.approx(0.16)
    m = router_metrics(S5, W5, P5, n_bootstrap=0)
    assert m.apgr == pytest.approx(0.7) and m.apgr_all == pytest.approx(0.7)
    assert m.cpt == pytest.approx({"20": 4.0, "50": 10.0, "80": 16.0})


def test_oracle_by_hand():
    # oracle order: gain +1 (A, D), then 0 (B, E), then -1 (C): rates 0, .4, .8, 1 with
    # cumulative gain 0, 2, 2, 1 -> PGR = gain / 5 / 0.2 = 0, 2, 2, 1.
    # APGR = .4 * (0 + 2) / 2 + .4 * (2 + 2) / 2 + .2 * (2 + 1) / 2 = 0.4 + 0.8 + 0.3 = 1.5
    m = oracle_metrics(S5, W5)
    assert m.apgr_all == pytest.approx(1.5)
    assert m.apgr == pytest.approx(1.5)
    # PGR 50% on the segment (0, 0) -> (0.4, 2): 0.4 * 0.5 / 2 = 10%
    assert m.cpt["50"] == pytest.approx(10.0)


def test_ties_move_together_by_hand():
    # p: 0.8, 0.8, 0.2, 0.2 with gains +1, 0 | 0, +1. Weak 1/4, strong 3/4, gap 0.5.
    # Realisable rates: 0, 0.5, 1 -> quality 0.25, 0.5, 0.75 -> PGR 0, 0.5, 1 -> APGR 0.5.
    # (Splitting the top group would invent a point (0.25, 0.5) and APGR 0.5625.)
    p = np.array([0.8, 0.8, 0.2, 0.2])
    s = np.array([1.0, 0.0, 1.0, 1.0])
    w = np.array([0.0, 0.0, 1.0, 0.0])
    curve = routing_curve(s, w, p, points="all")
    np.testing.assert_allclose(curve.strong_rate, [0, 0.5, 1])
    np.testing.assert_allclose(curve.quality, [0.25, 0.5, 0.75])
    assert apgr(curve, 0.25, 0.75) == pytest.approx(0.5)
    assert apgr(routing_curve(s, w, p, points="routellm"), 0.25, 0.75) == pytest.approx(0.5)
    # five evenly spaced targets realise only the three group boundaries
    grid = routing_curve(s, w, p, points=5)
    np.testing.assert_allclose(grid.strong_rate, [0, 0.5, 1])
    assert ((p >= grid.threshold[1]).mean()) == 0.5


def test_judge_scores_by_hand():
    # MT-Bench-like 1-10 scores: strong 9, 8, 10; weak 5, 8, 9; p 0.2, 0.5, 0.9.
    # Weak 22/3, strong 9, gap 5/3. By p: gains 1 (C), 0 (B), 4 (A): cumulative 0, 1, 1, 5;
    # PGR = cumulative / 3 / (5/3) = 0, .2, .2, 1 at rates 0, 1/3, 2/3, 1.
    # APGR = (1/3) (0.1 + 0.2 + 0.6) = 0.3; CPT(50%) = 2/3 + (0.3 / 0.8) / 3 = 0.7916...
    s, w, p = np.array([9.0, 8, 10]), np.array([5.0, 8, 9]), np.array([0.2, 0.5, 0.9])
    m = router_metrics(s, w, p, n_bootstrap=0)
    assert m.apgr_all == pytest.approx(0.3)
    assert m.cpt["50"] == pytest.approx(100 * (2 / 3 + 0.125))
    assert m.cpt["20"] == pytest.approx(100 / 3)


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="one length"):
        routing_curve(S5, W5, P5[:3])
    with pytest.raises(ConfigError, match="NaN"):
        routing_curve(S5, W5, np.array([0.1, np.nan, 0.2, 0.3, 0.4]))
    with pytest.raises(ConfigError, match="points"):
        routing_curve(S5, W5, P5, points="deciles")
    with pytest.raises(ConfigError, match="same quality"):
        pgr(0.5, 0.7, 0.7)


# --- real data ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mmlu(data_dir):
    table = load_outcomes("mmlu", data_dir)
    return table.column(ROUTELLM_STRONG), table.column(ROUTELLM_WEAK), table


def _routellm_reference_apgr(p, s, w):
    """RouteLLM's evaluate.py arithmetic, written out with pandas.qcut and np.trapezoid."""
    pd = pytest.importorskip("pandas")
    _, edges = pd.qcut(p, 10, retbins=True, duplicates="drop")
    points = []
    for i, t in enumerate(edges):
        chosen = p >= t if i != len(edges) - 1 else p > t
        points.append((chosen.mean(), np.where(chosen, s, w).mean()))
    points.sort()
    rate = np.array([x for x, _ in points])
    quality = np.array([y for _, y in points])
    auc = np.trapezoid(quality, rate)
    weak_auc = np.trapezoid(np.full(len(rate), w.mean()), rate)
    strong_auc = np.trapezoid(np.full(len(rate), s.mean()), rate)
    return (auc - weak_auc) / (strong_auc - weak_auc)


def test_apgr_matches_routellm_arithmetic_on_mmlu(mmlu):
    s, w, table = mmlu
    rng = np.random.default_rng(5)
    cases = [rng.random(len(s)), np.round(rng.random(len(s)), 1),
             prompt_length_probs(table.prompts), (s - w) * 0.3 + rng.random(len(s))]
    for p in cases:
        ours = router_metrics(s, w, p, n_bootstrap=0).apgr
        assert ours == pytest.approx(_routellm_reference_apgr(p, s, w), abs=1e-12)


def test_oracle_apgr_on_mmlu_is_high(mmlu):
    s, w, _ = mmlu
    m = oracle_metrics(s, w)
    # strong beats weak on 17.8% of prompts: the oracle recovers the whole gap by then
    assert m.apgr > 0.9
    assert m.cpt["80"] < 20.0


def test_random_router_apgr_near_half(mmlu):
    s, w, _ = mmlu
    n = len(s)
    gain = s - w
    # Per seed, APGR - 0.5 = sum_j weight_j (G_j / n - r_j gap) / gap, weights summing to 1,
    # G_j the gain of a random k_j-subset: Var(G_j / n) = k (n - k) var(gain) / (n^2 (n - 1))
    # <= var(gain) / (4 (n - 1)); so sd(APGR) <= sd(gain) / (2 gap sqrt(n - 1)).
    bound = gain.std() / (2 * gain.mean() * np.sqrt(n - 1))
    m = random_metrics(s, w, n_seeds=10)
    assert abs(m.apgr - 0.5) < 4 * bound / np.sqrt(10)
    assert abs(m.apgr_all - 0.5) < 4 * bound / np.sqrt(10)
    assert m.extra["apgr_expected"] == 0.5
    # the stored curve is the expected straight line
    assert m.curve[50]["pgr"] == pytest.approx(0.5)


def test_bootstrap_matches_loop_and_contains_estimate(mmlu):
    s, w, table = mmlu
    rows = np.arange(0, len(s), 7)
    s, w = s[rows], w[rows]
    p = np.round(prompt_length_probs([table.prompts[i] for i in rows]), 2)  # with ties
    ranked = RankedOutcomes(s, w, p)
    (low, high), samples = bootstrap_apgr(ranked, n_bootstrap=30, seed=11, chunk=7)
    # the same draws, one resample at a time through the plain curve code
    rng = np.random.default_rng(11)
    expected = []
    for start in range(0, 30, 7):
        draws = rng.integers(0, len(s), size=(min(7, 30 - start), len(s)))
        for idx in draws:
            c = routing_curve(s[idx], w[idx], p[idx], points="routellm")
            expected.append(apgr(c, w[idx].mean(), s[idx].mean()))
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-12)
    point = router_metrics(s, w, p, n_bootstrap=0).apgr
    (low, high), _ = bootstrap_apgr(ranked, n_bootstrap=1000, seed=0)
    assert low < point < high
    assert high - low < 0.3
    # seeded: same CI again
    assert bootstrap_apgr(ranked, n_bootstrap=1000, seed=0)[0] == (low, high)


@pytest.fixture(scope="module")
def random_router():
    predictor = make_router("random", strong_model=PAIR_STRONG, weak_model=PAIR_WEAK, seed=1)
    predictor.fit(Battles.from_records([{"prompt": "x", "model_a": PAIR_STRONG,
                                         "model_b": PAIR_WEAK, "winner": "model_a"}]))
    return Router(predictor)


@pytest.mark.parametrize("benchmark,listed", [("mt-bench", 8), ("gsm8k", 12), ("mmlu", 5)])
def test_evaluate_router_end_to_end(random_router, data_dir, benchmark, listed):
    result = evaluate_router(random_router, benchmark, data_dir, n_bootstrap=200)
    total = len(load_outcomes(benchmark, data_dir))
    assert result.dropped["routellm_contaminated"] == listed
    assert result.n_prompts == total - listed and result.n_dropped == listed
    assert result.strong_quality > result.weak_quality
    assert result.name == "random"
    low, high = result.apgr_ci
    assert low <= result.apgr <= high
    assert result.oracle.apgr > result.apgr
    assert len(result.curve) >= min(result.n_prompts + 1, 101) - 1
    assert result.curve[0]["strong_rate"] == 0 and result.curve[-1]["strong_rate"] == 1
    assert result.curve[-1]["quality"] == pytest.approx(result.strong_quality)
    # the router's probabilities as an array give the same numbers
    table = load_outcomes(benchmark, data_dir)
    same = evaluate_router(random_router.strong_win_prob(table.prompts), benchmark, data_dir,
                           n_bootstrap=200, name="random")
    assert same.apgr == result.apgr and same.apgr_ci == result.apgr_ci
    payload = json.loads(result.to_json())
    assert payload["router"]["apgr"] == pytest.approx(result.apgr)
    md = result.to_markdown()
    assert md.count("\n") == 4 and "oracle" in md and f"{result.apgr:.3f}" in md


def test_evaluate_any_table_and_pair(random_router, data_dir):
    pro = evaluate_router(random_router, "mmlu_pro", data_dir, strong_model="gpt-4o-2024-05-13",
                          weak_model="Mixtral-8x7B-Instruct-v0.1", n_bootstrap=0)
    table = load_outcomes("mmlu_pro", data_dir)
    complete = table.complete_rows(["gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"])
    assert pro.n_prompts == int(complete.sum())
    assert pro.dropped["missing_scores"] == int((~complete).sum())
    rb = evaluate_router(prompt_length_probs, "routerbench", data_dir, n_bootstrap=0,
                         strong_model="gpt-4-1106-preview", weak_model="mistralai/mistral-7b-chat")
    assert rb.n_prompts == 2544 - rb.dropped["missing_scores"]
    with pytest.raises(ConfigError, match="strong_model and weak_model"):
        evaluate_router(random_router, "mmlu_pro", data_dir)
    with pytest.raises(ConfigError, match="one value per prompt"):
        evaluate_router(np.zeros(10), "gsm8k", data_dir)


def test_decontamination_drops_copies_of_training_prompts(random_router, data_dir):
    table = load_outcomes("gsm8k", data_dir)
    copies = [table.prompts[i] for i in (3, 100, 900)]
    train = copies + ["Write a haiku about autumn leaves.", "Translate 'good morning' to French."]
    result = evaluate_router(random_router, "gsm8k", data_dir, train_prompts=train, n_bootstrap=0)
    found = {c["eval_prompt"] for c in result.info["contaminated"]}
    assert set(copies) <= found
    assert all(c["cosine"] >= 0.95 for c in result.info["contaminated"])
    assert result.dropped["embedding_contaminated"] == len(found)
    assert result.n_prompts == len(table) - 12 - len(found)
    off = evaluate_router(random_router, "gsm8k", data_dir, train_prompts=train,
                          decontaminate=False, exclude_routellm_contaminated=False,
                          n_bootstrap=0)
    assert off.n_prompts == len(table) and off.n_dropped == 0


def test_plot_is_png(random_router, data_dir, tmp_path):
    a = evaluate_router(random_router, "gsm8k", data_dir, n_bootstrap=0)
    b = evaluate_router(prompt_length_probs, "gsm8k", data_dir, n_bootstrap=0, name="length")
    path = plot_routing_curves([a, b], tmp_path / "figs" / "gsm8k.png",
                               reference_apgr={"paper": 0.622})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    mt = evaluate_router(random_router, "mt-bench", data_dir, n_bootstrap=0)
    with pytest.raises(ConfigError, match="one figure"):
        plot_routing_curves([a, mt], tmp_path / "bad.png")


# --- baselines and protocols -------------------------------------------------------------
def test_strong_win_labels_either_side():
    b = Battles.from_records([
        {"prompt": "a", "model_a": "S", "model_b": "W", "winner": "model_a"},
        {"prompt": "b", "model_a": "W", "model_b": "S", "winner": "model_a"},
        {"prompt": "c", "model_a": "S", "model_b": "W", "winner": "tie"},
        {"prompt": "d", "model_a": "S", "model_b": "X", "winner": "model_a"},
        {"prompt": "e", "model_a": "S", "model_b": "W", "winner": "model_b", "p_b_wins": 0.8},
    ])
    prompts, labels = strong_win_labels(b, "S", "W")
    assert prompts == ["a", "b", "c", "e"]
    np.testing.assert_allclose(labels, [1.0, 0.0, 0.5, 0.2])


def test_knn_averages_nearest_labels():
    train = ["solve the equation x + 2 = 5", "solve the equation 3x = 9",
             "write a poem about the sea", "write a poem about the moon"]
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    probs = knn_probs(train, labels, ["solve the equation 2x = 8", "write a poem about rain"], k=2)
    np.testing.assert_allclose(probs, [1.0, 0.0])


def test_crossfit_folds_keep_duplicates_together(mmlu):
    _, _, table = mmlu
    seen: dict[str, int] = {}
    dup_rows = []
    for i, p in enumerate(table.prompts):
        if p in seen:
            dup_rows += [seen[p], i]
        seen.setdefault(p, i)
    rows = np.unique(np.r_[dup_rows, np.arange(0, len(table), 40)])
    sub = table.subset(rows)
    folds = crossfit_folds(sub, ROUTELLM_STRONG, ROUTELLM_WEAK, n_folds=5, seed=0)
    by_prompt: dict[str, set] = {}
    for p, f in zip(sub.prompts, folds, strict=True):
        by_prompt.setdefault(p, set()).add(int(f))
    assert len(dup_rows) > 100
    assert all(len(f) == 1 for f in by_prompt.values())
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.min() > 0.15 * len(sub)


def test_golden_crossfit_on_gsm8k(data_dir, random_router):
    def factory():
        return make_router("random", strong_model=PAIR_STRONG, weak_model=PAIR_WEAK)

    result = run_golden_crossfit(
        [RouterScorer("random", factory), LengthScorer(), KnnScorer(k=20)], data_dir,
        benchmarks=["gsm8k"], n_folds=3, n_bootstrap=100, progress=False,
    )
    rs = {r.name: r for r in result.results["gsm8k"]}
    assert set(rs) == {"random", "prompt-length", "knn-golden"}
    info = result.info["benchmarks"]["gsm8k"]
    assert sum(info["fold_sizes"]) == 1319
    # each fold trains on the other folds' golden battles plus the 36,700 judge battles
    assert info["train_battles_per_fold"] == [1319 - k + 36_700 for k in info["fold_sizes"]]
    # prompt length carries real signal on GSM8K (longer word problems are harder)
    assert rs["prompt-length"].router.apgr_ci[0] > 0.5
    assert rs["random"].oracle.apgr > 1.0
    assert len(rs["prompt-length"].info["fold_apgr"]) == 3
    assert "0.622" in result.summary_markdown()
