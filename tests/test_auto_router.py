"""kNN, logistic, length and auto routers on real golden battles (GSM8K)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from prefroute.data.loaders import golden_battles
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
from prefroute.errors import CheckpointError, ConfigError, DataError
from prefroute.evaluate.metrics import router_metrics
from prefroute.router import load_router
from prefroute.routers.auto import AutoRouter, describe_auto
from prefroute.routers.checks import check_router
from prefroute.routers.knn import KNNRouter
from prefroute.routers.length import LengthRouter
from prefroute.routers.logistic import LogisticRouter

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
SMALL_CANDIDATES = [
    {"name": "knn-20", "router": "knn", "params": {"k": 20}},
    {"name": "logistic", "router": "logistic", "params": {"c": 0.5}},
    {"name": "length", "router": "length", "params": {}},
]


@pytest.fixture(scope="module")
def gsm8k_battles(data_dir):
    table = load_outcomes("gsm8k", data_dir)
    rows = np.random.default_rng(0).permutation(len(table))[:700]
    battles = golden_battles(table.subset(np.sort(rows)), ROUTELLM_STRONG, ROUTELLM_WEAK,
                             strong_name=STRONG, weak_name=WEAK)
    held_out = [table.prompts[i] for i in np.setdiff1d(np.arange(len(table)), rows)[:40]]
    return battles, held_out


@pytest.mark.parametrize("cls,params", [(KNNRouter, {"k": 15}), (LogisticRouter, {}),
                                        (LogisticRouter, {"two_part": False}),
                                        (LengthRouter, {})])
def test_simple_routers_pass_check_router(cls, params, gsm8k_battles):
    battles, prompts = gsm8k_battles
    check_router(cls, battles, prompts, strong_model=STRONG, weak_model=WEAK, params=params)


def test_two_part_logistic_composes_decisiveness_and_direction(gsm8k_battles, tmp_path):
    from scipy.special import expit

    battles, prompts = gsm8k_battles
    router = LogisticRouter(strong_model=STRONG, weak_model=WEAK, two_part=True).fit(battles)
    x = router.embedder_.encode(prompts).astype(np.float64)
    decisive = expit(x @ router.tie_coef_ + router.tie_intercept_)
    direction = expit(x @ router.coef_ + router.intercept_)
    probs = router.predict_proba(prompts)
    np.testing.assert_allclose(probs, 0.5 + decisive * (direction - 0.5), atol=1e-12)
    assert 0 < decisive.min() and decisive.max() < 1 and probs.std() > 0.01
    router.save_pretrained(tmp_path / "two_part")
    np.testing.assert_array_equal(load_router(tmp_path / "two_part").predictor
                                  .predict_proba(prompts), probs)


def test_logistic_checkpoint_from_before_two_part_loads_as_written(gsm8k_battles, tmp_path):
    """two_part became the default later: a config.json without the key is a plain model."""
    import json

    battles, prompts = gsm8k_battles
    plain = LogisticRouter(strong_model=STRONG, weak_model=WEAK, two_part=False).fit(battles)
    assert LogisticRouter(strong_model=STRONG, weak_model=WEAK).two_part
    plain.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["params"]["two_part"]
    config_path.write_text(json.dumps(config))
    loaded = load_router(tmp_path / "old").predictor
    assert loaded.two_part is False
    np.testing.assert_array_equal(loaded.predict_proba(prompts), plain.predict_proba(prompts))


def test_two_part_logistic_learns_more_from_few_labels_on_mmlu(data_dir):
    """Most MMLU labels are ties; modelled apart they stop pulling the direction to 1/2."""
    table = load_outcomes("mmlu", data_dir)
    gains = []
    for seed in range(3):
        rows = np.random.default_rng(seed).permutation(len(table))[:4000]
        train, test = np.sort(rows[:1600]), np.sort(rows[1600:])
        battles = golden_battles(table.subset(train), ROUTELLM_STRONG, ROUTELLM_WEAK,
                                 strong_name=STRONG, weak_name=WEAK)
        strong = table.column(ROUTELLM_STRONG)[test]
        weak = table.column(ROUTELLM_WEAK)[test]
        prompts = [table.prompts[i] for i in test]
        apgr = {}
        for two_part in (False, True):
            router = LogisticRouter(strong_model=STRONG, weak_model=WEAK,
                                    two_part=two_part).fit(battles)
            apgr[two_part] = router_metrics(strong, weak, router.predict_proba(prompts),
                                            n_bootstrap=0, grid=2).apgr
        gains.append(apgr[True] - apgr[False])
    assert np.mean(gains) > 0.005, gains


def test_knn_is_the_weighted_mean_of_neighbour_labels(gsm8k_battles):
    battles, _ = gsm8k_battles
    knn = KNNRouter(strong_model=STRONG, weak_model=WEAK, k=1).fit(battles)
    # a training prompt's nearest neighbour is itself: k=1 returns its own label
    own = knn.predict_proba(battles.prompts[:20])
    expected = knn.labels_[:20]
    assert np.mean(own == expected) >= 0.9  # exact duplicates may swap places


def test_knn_needs_pair_battles(gsm8k_battles):
    battles, _ = gsm8k_battles
    with pytest.raises(DataError, match="no battle between"):
        KNNRouter(strong_model=STRONG, weak_model="someone-else").fit(battles)


def test_auto_selects_the_candidate_with_the_best_oof_apgr(gsm8k_battles):
    battles, prompts = gsm8k_battles
    broken = {"name": "broken", "router": "sw_bt", "params": {"gamma": -1.0}}
    auto = AutoRouter(strong_model=STRONG, weak_model=WEAK,
                      candidates=[*SMALL_CANDIDATES, broken], n_folds=3, combine="select",
                      progress=False).fit(battles)
    rows = {r["name"]: r for r in auto.oof_table_}
    # a candidate that cannot fit is reported in the table and left out, not silently dropped
    assert rows["broken"]["status"].startswith("failed") and "gamma" in rows["broken"]["status"]
    assert auto.candidate_names_ == [c["name"] for c in SMALL_CANDIDATES]
    singles = [r for r in auto.oof_table_ if r["router"] != "stack" and r["status"] == "ok"]
    best = max(singles, key=lambda r: r["oof_apgr"])
    assert auto.mode_ == "select" and auto.member_names_ == [best["name"]]
    assert rows[best["name"]]["chosen"]
    # the OOF table's APGR is RouteLLM's APGR of the stored out-of-fold probabilities
    labels = auto.oof_labels_
    for j, name in enumerate(auto.candidate_names_):
        expected = router_metrics(labels, 1.0 - labels, auto.oof_probs_[:, j],
                                  n_bootstrap=0).apgr
        assert rows[name]["oof_apgr"] == pytest.approx(expected, abs=1e-12)
    # folds hold near-duplicate groups: every held-out battle has a fold, all folds used
    assert set(np.unique(auto.oof_folds_)) == {0, 1, 2}
    assert np.isfinite(auto.oof_probs_).all()
    # the selected member's calibrated output is a monotone map of its own scores
    raw = auto.uncalibrated_proba(prompts)
    cal = auto.predict_proba(prompts)
    order = np.argsort(raw)
    assert (np.diff(cal[order]) >= -1e-12).all()


def test_auto_stack_reloads_to_identical_probabilities(gsm8k_battles, tmp_path):
    battles, prompts = gsm8k_battles
    auto = check_router(AutoRouter, battles, prompts, strong_model=STRONG, weak_model=WEAK,
                        params={"candidates": SMALL_CANDIDATES, "n_folds": 3, "combine": "stack",
                                "calibration": "isotonic", "progress": False})
    assert auto.mode_ == "stack" and auto.member_names_ == [c["name"] for c in SMALL_CANDIDATES]
    auto.save_pretrained(tmp_path / "ckpt")
    loaded = load_router(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.strong_win_prob(prompts), auto.predict_proba(prompts))
    np.testing.assert_array_equal(loaded.predictor.oof_probs_, auto.oof_probs_)
    from prefroute.checkpoint import read_config

    text = describe_auto(read_config(tmp_path / "ckpt"))
    assert "stack weights" in text and "knn-20" in text and "| stack | stack |" in text
    # a member folder replaced by another router type is refused, naming the folder
    member = tmp_path / "ckpt" / "members" / "00"
    LengthRouter(strong_model=STRONG, weak_model=WEAK).fit(battles).save_pretrained(member)
    with pytest.raises(CheckpointError, match="members/00"):
        load_router(tmp_path / "ckpt")


def test_auto_rejects_bad_candidates(gsm8k_battles):
    battles, _ = gsm8k_battles
    for bad in ([], [{"name": "x", "router": "nope"}], [{"name": "a", "router": "auto"}],
                [{"name": "a", "router": "knn", "colour": 1}]):
        with pytest.raises(ConfigError):
            AutoRouter(strong_model=STRONG, weak_model=WEAK, candidates=bad,
                       progress=False).fit(battles)


def test_cli_train_defaults_to_auto_and_info_prints_the_oof_table(gsm8k_battles, tmp_path):
    import json

    from typer.testing import CliRunner

    from prefroute.cli.main import app

    battles, _ = gsm8k_battles
    data = tmp_path / "battles.jsonl"
    battles.to_jsonl(data)
    out = tmp_path / "auto"
    params = json.dumps({"candidates": SMALL_CANDIDATES[1:], "n_folds": 3, "progress": False})
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(data), "--strong-model", STRONG,
                                 "--weak-model", WEAK, "--out", str(out), "--params", params])
    assert result.exit_code == 0, result.output
    assert "training auto" in result.output
    assert load_router(out).router_type == "auto"
    shown = runner.invoke(app, ["info", str(out)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^router:\s+auto\b", shown.output, re.M), shown.output
    assert "| logistic | logistic |" in shown.output
    assert "OOF APGR" in shown.output


def test_auto_score_sources_must_match_pair_battles(gsm8k_battles):
    battles, _ = gsm8k_battles
    with pytest.raises(ConfigError, match="score_sources"):
        AutoRouter(strong_model=STRONG, weak_model=WEAK, candidates=SMALL_CANDIDATES,
                   score_sources=["judge"], progress=False).fit(battles)
    with pytest.raises(ConfigError, match="score_sources"):
        AutoRouter(strong_model=STRONG, weak_model=WEAK, score_sources="golden",
                   progress=False).fit(battles)


def test_auto_scores_on_golden_battles_when_there_are_enough(gsm8k_battles, data_dir):
    """Judge battles train the candidates, but APGR is about graded correctness: by default
    auto chooses on the golden pair battles once there are enough of them."""
    from prefroute.data.battles import Battles
    from prefroute.routers.auto import MIN_GOLDEN_TO_SCORE
    from prefroute.training import load_training_battles

    golden, _ = gsm8k_battles
    judge = load_training_battles(["alpaca_eval"], data_dir)
    judge_pair = judge.filter(np.array([{a, b} == {STRONG, WEAK} for a, b in zip(
        judge.column("model_a"), judge.column("model_b"), strict=True)]))
    assert len(judge_pair) > 50
    mixed = Battles.concat([golden, judge])

    def fit(battles, **params):
        return AutoRouter(strong_model=STRONG, weak_model=WEAK, candidates=SMALL_CANDIDATES,
                          n_folds=3, progress=False, **params).fit(battles)

    n_golden = len(golden)  # every golden battle is between the pair
    assert n_golden >= MIN_GOLDEN_TO_SCORE
    default = fit(mixed)
    assert len(default.oof_labels_) == n_golden
    assert default.scored_on_.startswith(f"{n_golden} golden pair battles")
    every = fit(mixed, score_sources="all")
    assert len(every.oof_labels_) == n_golden + len(judge_pair)
    # too few golden battles to choose by: every pair battle counts
    few = Battles.concat([golden.take(np.arange(MIN_GOLDEN_TO_SCORE - 1)), judge])
    assert len(fit(few).oof_labels_) == MIN_GOLDEN_TO_SCORE - 1 + len(judge_pair)
