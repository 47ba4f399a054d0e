"""N-way routing (prefroute.multi) on the real RouterBench / MMLU-Pro outcome tables.

Hand-worked examples are written out in comments next to the expected values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from prefroute.data.outcomes import load_outcomes
from prefroute.errors import CheckpointError, ConfigError, DataError
from prefroute.multi import (
    ROUTER_PRESETS,
    EncoderMLCRouter,
    MLCRouter,
    MultiRouter,
    labels_from_generation_records,
    labels_from_generations,
    labels_from_outcomes,
    load_multi_router,
    maj_at_k,
    make_multi_router,
)
from prefroute.multi.data import merge_split_rows, prepare_table, split_rows
from prefroute.multi.metrics import (
    ModelProfile,
    aiq,
    cheapest_at_quality,
    cost_quality_curve,
    evaluate_choices,
    nondecreasing_convex_hull,
    oracle_choices,
    oracle_gap_closed,
    paired_bootstrap_ci,
    random_result,
    upper_bound_choices,
)
from prefroute.multi.policies import (
    argmax_policy,
    best_threshold,
    cost_aware_policy,
    fit_prediction_policy,
    fit_sorted_threshold,
    prediction_policy,
    random_policy,
    sorted_policy,
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def routerbench(data_dir):
    return load_outcomes("routerbench", data_dir)


@pytest.fixture(scope="module")
def mmlu_pro(data_dir):
    return load_outcomes("mmlu_pro", data_dir)


@pytest.fixture(scope="module")
def rb_small(routerbench):
    """300 training and 100 test prompts of the prepared RouterBench table (seeded)."""
    table = prepare_table(routerbench).table
    rows = np.random.default_rng(0).permutation(len(table))[:400]
    return table.subset(rows[:300]), table.subset(rows[300:])


# ------------------------------------------------------------------------------- labels


def test_labels_from_outcomes_keep_missing_results(mmlu_pro):
    labels = labels_from_outcomes(mmlu_pro)
    assert labels.models == mmlu_pro.models
    np.testing.assert_array_equal(np.isnan(labels.labels), np.isnan(mmlu_pro.scores))
    deepseek = mmlu_pro.model_index("DeepSeek-Coder-V2")
    assert np.isnan(labels.labels[:, deepseek]).sum() == 1333
    row = int(np.flatnonzero(np.isnan(mmlu_pro.scores[:, deepseek]))[0])
    expected = {m for m in mmlu_pro.models if mmlu_pro.column(m)[row] == 1.0}
    assert labels.label_sets()[row] == expected
    assert labels.multi_hot[row, deepseek] == 0


def test_labels_need_a_threshold_for_graded_scores(data_dir):
    mt = load_outcomes("mt-bench", data_dir)  # GPT-4 judge scores 1-10
    with pytest.raises(DataError, match="threshold"):
        labels_from_outcomes(mt)
    labels = labels_from_outcomes(mt, threshold=9.0)
    known = ~np.isnan(mt.scores)
    np.testing.assert_array_equal(labels.labels[known], (mt.scores[known] >= 9.0).astype(float))


def test_maj_at_k_by_hand():
    assert maj_at_k(["42", "42", "7"], "42") == 1  # 42 has 2 of 3 votes
    assert maj_at_k(["7", "7", "42"], "42") == 0  # 7 wins the vote
    # "1,000." -> "1000", "1000" -> "1000", gold "1000.0" -> "1000": 2 votes of 3 match
    assert maj_at_k(["1,000.", "1000", "7"], "1000.0") == 1
    assert maj_at_k([None, None, "3"], "3") == 0  # failed extractions win the vote
    # a 1-1 tie between "a" (sampled first) and "b"; gold is "b"
    assert maj_at_k(["a", "b"], "b", ties="first") == 0
    assert maj_at_k(["a", "b"], "b", ties="any") == 1
    assert maj_at_k(["b", "a"], "b", ties="none") == 0
    with pytest.raises(ConfigError):
        maj_at_k(["a"], "a", ties="coin")


def test_labels_from_generations_by_hand(tmp_path):
    generations = {
        "m1": [["4", "4", "5"], ["x", "y", "y"], []],  # prompt 2: no answers -> NaN
        "m2": [["5", "5", "4"], ["y", "y", "y"], ["10", "10", "3"]],
    }
    gold = ["4", "y", "10"]
    labels = labels_from_generations(generations, gold)
    expected = np.array([[1, 0], [1, 1], [np.nan, 1]])
    np.testing.assert_array_equal(labels.labels, expected)
    # k=1: only the first sample counts: m1 "4"=4 (1), "x"!=y (0); m2 "5"!=4 (0), "y" (1), "10" (1)
    k1 = labels_from_generations(generations, gold, k=1)
    np.testing.assert_array_equal(k1.labels, np.array([[1, 0], [0, 1], [np.nan, 1]]))
    with pytest.raises(DataError, match="fewer than k=4"):
        labels_from_generations(generations, gold, k=4)

    path = tmp_path / "gen.jsonl"
    records = [
        {"prompt_id": "q1", "model": "m1", "answers": ["4", "4", "5"], "gold": "4"},
        {"prompt_id": "q1", "model": "m2", "answers": ["5", "5", "4"], "gold": "4"},
        {"prompt_id": "q2", "model": "m2", "answers": ["y"], "gold": "y"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ids, from_file = labels_from_generation_records(path)
    assert ids == ["q1", "q2"]
    np.testing.assert_array_equal(from_file.labels, np.array([[1, 0], [np.nan, 1]]))
    records.append({"prompt_id": "q2", "model": "m1", "answers": ["y"], "gold": "z"})
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(DataError, match="two gold answers"):
        labels_from_generation_records(path)


# --------------------------------------------------------------------------------- data


def test_prepare_mmlu_pro_drops_the_incomplete_model_then_rows(mmlu_pro):
    prepared = prepare_table(mmlu_pro)
    assert prepared.dropped_models == ["DeepSeek-Coder-V2"]  # missing on 13.8% > 5%
    others = [m for m in mmlu_pro.models if m != "DeepSeek-Coder-V2"]
    expected_rows = int(mmlu_pro.complete_rows(others).sum())
    assert len(prepared.table) == expected_rows == 9603
    assert prepared.table.models == others
    assert not np.isnan(prepared.table.scores).any()


def test_routerbench_split_rows_are_merged(routerbench):
    merged = merge_split_rows(routerbench)
    assert len(set(merged.ids)) == len(merged.ids) == len(routerbench) - 9
    rid = "arc-challenge.val.226"
    rows = [i for i, x in enumerate(routerbench.ids) if x == rid]
    union = np.where(
        np.isnan(routerbench.scores[rows[0]]),
        routerbench.scores[rows[1]],
        routerbench.scores[rows[0]],
    )
    np.testing.assert_array_equal(merged.scores[merged.ids.index(rid)], union)
    prepared = prepare_table(routerbench)
    assert not np.isnan(prepared.table.scores).any() and not np.isnan(prepared.table.costs).any()


def test_split_is_seeded_and_disjoint():
    a, b = split_rows(1000, seed=3), split_rows(1000, seed=3)
    np.testing.assert_array_equal(a.test, b.test)
    assert len(a.test) == 200 and len(a.val) == 100 and len(a.train) == 700
    assert not set(a.test) & set(a.val) and not set(a.train) & (set(a.test) | set(a.val))
    with pytest.raises(ConfigError):
        split_rows(10, test_size=0.6, val_size=0.5)


# ------------------------------------------------------------------------------ routers

FAST_PARAMS = {
    "mlc": {"epochs": 60, "patience": 5},
    "sc": {},
    "kmeans-tfidf": {
        "n_clusters": 8,
        "embedder": {"name": "tfidf", "params": {"n_components": 64}},
    },
    "kmeans-embed": {"n_clusters": 8},
    "knn": {"k": 20},
    "mf": {"epochs": 40},
    "mf-pairwise": {"epochs": 40},
}


def _no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        assert path.suffix not in (".pkl", ".pickle", ".joblib", ".pt", ".bin"), path


@pytest.mark.parametrize("name", sorted(FAST_PARAMS))
def test_router_on_routerbench(name, rb_small, tmp_path):
    train, test = rb_small
    router = make_multi_router(name, **FAST_PARAMS[name]).fit(train.prompts, train)
    scores = router.predict_scores(test.prompts)
    assert scores.shape == (len(test), len(train.models))
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    assert router.models == train.models

    # columns are in model order: the mean confidence per model follows its training accuracy
    rho = spearmanr(scores.mean(axis=0), train.scores.mean(axis=0)).statistic
    assert rho > 0.5, rho
    # routing by argmax beats random routing (the expected accuracy of a random model)
    chosen = test.scores[np.arange(len(test)), argmax_policy(scores)].mean()
    assert chosen > random_result(test.scores).accuracy + 0.05

    router.save_pretrained(tmp_path / name)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["type"] == ROUTER_PRESETS[name][0].router_type and config["task"] == "multi"
    assert config["state"]["models"] == train.models
    _no_pickle(tmp_path / name)
    loaded = load_multi_router(tmp_path / name)
    assert type(loaded) is type(router)
    np.testing.assert_array_equal(loaded.predict_scores(test.prompts), scores)
    # one prompt at a time scores the same as the batch (classes with batch-free inference)
    if name != "knn":
        np.testing.assert_allclose(
            loaded.predict_scores(test.prompts[:1])[0], scores[0], rtol=1e-12
        )


def test_mlc_masks_missing_labels_on_mmlu_pro(mmlu_pro):
    rows = np.flatnonzero(np.isnan(mmlu_pro.scores).any(axis=1))[:150]  # every row misses a result
    rows = np.concatenate([rows, np.arange(150)])
    sub = mmlu_pro.subset(rows)
    router = MLCRouter(epochs=30, patience=5).fit(sub.prompts, sub)
    scores = router.predict_scores(sub.prompts[:20])
    assert np.isfinite(scores).all()
    assert all(np.isfinite(loss) for loss in router.training_curve_["train_loss"])


def test_fit_rejects_bad_targets(rb_small):
    train, _ = rb_small
    with pytest.raises(DataError, match="label rows"):
        MLCRouter().fit(train.prompts[:10], train.scores[:11], models=train.models)
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        MLCRouter().fit(train.prompts[:3], np.array([[0, 2.0], [1, 0], [0, 1]]))
    with pytest.raises(ConfigError, match="not fitted"):
        MLCRouter().predict_scores(["hi"])
    with pytest.raises(CheckpointError):
        MultiRouter.from_pretrained(Path("/nonexistent/router"))


@pytest.mark.slow
def test_encoder_mlc_fine_tunes_and_reloads(rb_small, tmp_path):
    train, test = rb_small
    router = EncoderMLCRouter(
        max_length=64, epochs=1, batch_size=16, val_fraction=0.0, torch_threads=1
    )
    router.fit(train.prompts[:120], train.subset(range(120)))
    scores = router.predict_scores(test.prompts[:24])
    assert scores.shape == (24, len(train.models))
    rho = spearmanr(scores.mean(axis=0), train.scores[:120].mean(axis=0)).statistic
    assert rho > 0.5, rho
    router.save_pretrained(tmp_path / "enc")
    encoder = tmp_path / "enc" / "encoder"
    assert (encoder / "model.safetensors").is_file() and (encoder / "tokenizer.json").is_file()
    hf_config = json.loads((encoder / "config.json").read_text())
    assert hf_config["problem_type"] == "multi_label_classification"
    assert [hf_config["id2label"][str(i)] for i in range(len(train.models))] == train.models
    _no_pickle(tmp_path / "enc")
    np.testing.assert_array_equal(
        load_multi_router(tmp_path / "enc").predict_scores(test.prompts[:24]), scores
    )


# ----------------------------------------------------------------------------- policies

# Three prompts, three models.
CONF = np.array(
    [
        [0.90, 0.20, 0.40],
        [0.30, 0.35, 0.10],
        [0.60, 0.70, 0.65],
    ]
)


def test_policies_by_hand():
    # argmax: row 0 -> 0 (0.9), row 1 -> 1 (0.35), row 2 -> 1 (0.7)
    np.testing.assert_array_equal(argmax_policy(CONF), [0, 1, 1])
    # prediction, tau 0.5, fallback 2: rows 0 and 2 trust the argmax (0.9, 0.7 >= 0.5),
    # row 1 (0.35 < 0.5) falls back to model 2
    np.testing.assert_array_equal(prediction_policy(CONF, threshold=0.5, fallback=2), [0, 2, 1])
    # sorted, order [2, 0, 1], tau 0.5: row 0: model 2 (0.4) fails, model 0 (0.9) passes -> 0;
    # row 1: nobody reaches 0.5 -> argmax 1; row 2: model 2 (0.65) passes first -> 2
    np.testing.assert_array_equal(sorted_policy(CONF, order=[2, 0, 1], threshold=0.5), [0, 1, 2])
    # cost-aware, costs [3, 1, 0], lambda 0.1: row 0: [0.6, 0.1, 0.4] -> 0;
    # row 1: [0.0, 0.25, 0.1] -> 1; row 2: [0.3, 0.6, 0.65] -> 2
    np.testing.assert_array_equal(
        cost_aware_policy(CONF, model_costs=[3, 1, 0], lam=0.1), [0, 1, 2]
    )
    np.testing.assert_array_equal(
        cost_aware_policy(CONF, model_costs=[3, 1, 0], lam=0.0), [0, 1, 1]
    )
    # lambda 10: cost dominates, the free model 2 everywhere
    np.testing.assert_array_equal(cost_aware_policy(CONF, model_costs=[3, 1, 0], lam=10), [2, 2, 2])


def test_random_policy_by_hand():
    # tau 0.5, top 2: rows 0 and 2 are confident -> argmax 0 and 1; row 1 (best 0.35) picks
    # at random between its two most confident models, 1 (0.35) and 0 (0.30)
    picks = {int(random_policy(CONF, threshold=0.5, top_k=2, seed=s)[1]) for s in range(40)}
    assert picks == {0, 1}
    for s in range(5):
        choice = random_policy(CONF, threshold=0.5, top_k=2, seed=s)
        assert choice[0] == 0 and choice[2] == 1
        np.testing.assert_array_equal(choice, random_policy(CONF, threshold=0.5, top_k=2, seed=s))
    # threshold 0: never random
    np.testing.assert_array_equal(random_policy(CONF, threshold=0.0), argmax_policy(CONF))


def test_learned_thresholds_by_hand():
    # max confidences 0.9, 0.8, 0.6, 0.4 with gains +1, -1, +1, -1 for trusting the argmax:
    # trusting the top 1 -> +1, top 2 -> 0, top 3 -> +1, all -> 0; the tie between top 1 and
    # top 3 goes to trusting more, so tau sits between 0.6 and 0.4: 0.5
    assert best_threshold(
        np.array([0.9, 0.8, 0.6, 0.4]), np.array([1, -1, 1, -1.0])
    ) == pytest.approx(0.5)
    # all gains negative: trust nothing; tau above every confidence
    assert best_threshold(np.array([0.9, 0.4]), np.array([-1, -1.0])) > 0.9

    # the same as a validation table: argmax is model 0 on every row, fallback model 1
    conf = np.array([[0.9, 0.1], [0.8, 0.1], [0.6, 0.1], [0.4, 0.1]])
    scores = np.array([[1, 0], [0, 1], [1, 0], [0, 1.0]])
    fitted = fit_prediction_policy(conf, scores, fallback=1)
    assert fitted.threshold == pytest.approx(0.5)
    np.testing.assert_array_equal(fitted(conf), [0, 0, 0, 1])

    # sorted: order [1, 0] (model 1 is asked first). Row 0: model 1 at 0.7, model 0 at 0.8;
    # row 1: model 1 at 0.2, model 0 at 0.9; model 0 is right on both rows, model 1 on none.
    # tau <= 0.7 sends row 0 to model 1 (wrong) -> accuracy 1/2; tau in (0.7, 0.8] sends both
    # rows to model 0 -> 1. The lowest grid value with accuracy 1 is 0.75.
    conf = np.array([[0.8, 0.7], [0.9, 0.2]])
    scores = np.array([[1, 0], [1, 0.0]])
    assert fit_sorted_threshold(conf, scores, order=[1, 0], grid=[0.5, 0.7, 0.75, 0.8]) == 0.75


def test_forest_prediction_policy_on_real_confidences(rb_small):
    train, test = rb_small
    router = make_multi_router("sc").fit(train.prompts, train)
    conf = router.predict_scores(test.prompts)
    fallback = int(np.argmax(train.scores.mean(axis=0)))
    a = fit_prediction_policy(
        conf[:60], test.scores[:60], fallback=fallback, method="forest", seed=1
    )
    b = fit_prediction_policy(
        conf[:60], test.scores[:60], fallback=fallback, method="forest", seed=1
    )
    choice = a(conf[60:])
    np.testing.assert_array_equal(choice, b(conf[60:]))
    # every pick is the argmax or the fallback
    assert np.all((choice == conf[60:].argmax(axis=1)) | (choice == fallback))


# ------------------------------------------------------------------------------ metrics


def test_oracle_and_upper_bound_by_hand():
    scores = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1.0]])
    profile = ModelProfile(["a", "b", "c"], prices=np.array([3.0, 2.0, 1.0]))
    # row 0: correct {a, b} -> cheapest b (1); row 1: none correct -> cheapest c (2);
    # row 2: correct {b, c} -> cheapest c (2)
    np.testing.assert_array_equal(oracle_choices(scores, profile=profile), [1, 2, 2])
    conf = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [0.1, 0.1, 0.8]])
    # predicted sets at 0.5: {a, b}, {} -> {argmax c}, {c}; restricted oracle: b (right, cheaper
    # than a), c (wrong), c (right): accuracy 2/3, cost (2 + 1 + 1) / 3
    ub = upper_bound_choices(conf, scores, profile=profile)
    np.testing.assert_array_equal(ub, [1, 2, 2])
    result = evaluate_choices("ub", ub, scores, profile=profile)
    assert result.accuracy == pytest.approx(2 / 3) and result.cost == pytest.approx(4 / 3)
    # per-prompt costs win over prices when given
    prompt_costs = np.array([[1, 5, 5], [5, 5, 2], [5, 5, 3.0]])
    assert evaluate_choices("x", ub, scores, prompt_costs=prompt_costs).cost == pytest.approx(
        (5 + 2 + 3) / 3
    )
    assert oracle_gap_closed(0.8, 0.7, 0.9) == pytest.approx(0.5)
    # the chosen model's score per prompt is kept for paired comparisons: [1, 0, 1]
    np.testing.assert_array_equal(result.per_prompt, [1, 0, 1])


def test_paired_bootstrap_by_hand():
    # the router is right on every prompt the baseline gets right, plus 1 of 10 more:
    # mean difference 0.1; every resample's difference lies in [0, 1]
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1.0])
    b = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0.0])
    diff, low, high = paired_bootstrap_ci(a, b, seed=0)
    assert diff == pytest.approx(0.1) and 0.0 <= low <= 0.1 <= high <= 1.0
    assert low == 0.0  # 10 draws miss the one differing prompt with probability 0.9^10 = 35%
    # identical vectors: a zero-width interval at 0
    assert paired_bootstrap_ci(b, b) == (0.0, 0.0, 0.0)


def test_aiq_by_hand():
    costs = [1, 2, 3, 4, 2.5]
    quals = [0.5, 0.6, 0.9, 0.8, 0.55]
    # upper hull: (1, .5) -> (3, .9) -> (4, .8); (2, .6) and (2.5, .55) lie below the segment
    # (1, .5)-(3, .9) (0.7 and 0.8 there); cut at the best quality -> vertices (1, .5), (3, .9)
    hc, hq = nondecreasing_convex_hull(costs, quals)
    np.testing.assert_array_equal(hc, [1, 3])
    np.testing.assert_array_equal(hq, [0.5, 0.9])
    # over [1, 4]: ramp 1..3 has area (0.5 + 0.9) / 2 * 2 = 1.4, flat 3..4 adds 0.9;
    # AIQ = 2.3 / 3
    assert aiq(costs, quals) == pytest.approx(2.3 / 3)
    # over [0, 4]: no routing point is cheaper than 1, so [0, 1] counts 0: 2.3 / 4
    assert aiq(costs, quals, cost_range=(0, 4)) == pytest.approx(2.3 / 4)
    # over [2, 3]: the ramp from 0.7 to 0.9: mean 0.8
    assert aiq(costs, quals, cost_range=(2, 3)) == pytest.approx(0.8)
    assert cheapest_at_quality(costs, quals, 0.8) == 3
    assert cheapest_at_quality(costs, quals, 0.95) is None


def test_cost_quality_curve_spans_cheapest_to_argmax(rb_small):
    train, test = rb_small
    conf = make_multi_router("knn", k=20).fit(train.prompts, train).predict_scores(test.prompts)
    profile = ModelProfile.from_table(train)
    curve = cost_quality_curve(
        conf, test.scores, model_costs=profile.prices, prompt_costs=test.costs, profile=profile
    )
    cheapest = int(np.argmin(profile.prices))
    # lambda 0 is the argmax policy; the largest lambda sends everything to the cheapest model
    assert curve.qualities[0] == pytest.approx(
        test.scores[np.arange(len(test)), conf.argmax(1)].mean()
    )
    assert curve.qualities[-1] == pytest.approx(test.scores[:, cheapest].mean())
    assert curve.costs[-1] == pytest.approx(test.costs[:, cheapest].mean())
    np.testing.assert_allclose(curve.latencies[-1], profile.latencies[cheapest])


# ---------------------------------------------------------------------------------- CLI


def test_cli_train_and_eval_on_routerbench(data_dir, tmp_path):
    from prefroute.cli.multi import app

    runner = CliRunner()
    for router, params in (("knn", '{"k": 30}'), ("sc", "{}")):
        res = runner.invoke(
            app,
            [
                "train",
                "--table",
                "routerbench",
                "--router",
                router,
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / router),
                "--params",
                params,
            ],
        )
        assert res.exit_code == 0, res.output
    png = tmp_path / "cq.png"
    res = runner.invoke(
        app,
        [
            "eval",
            str(tmp_path / "knn"),
            str(tmp_path / "sc"),
            "--table",
            "routerbench",
            "--data-dir",
            str(data_dir),
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    split = json.loads((tmp_path / "knn" / "split.json").read_text())
    table = prepare_table(load_outcomes("routerbench", data_dir)).table
    test_rows = [table.ids.index(i) for i in split["test_ids"]]
    scores = table.scores[test_rows]
    assert report["n_test"] == len(test_rows) == round(0.2 * len(table))
    assert report["oracle"]["accuracy"] == pytest.approx(scores.max(axis=1).mean())
    singles = {r["name"]: r["accuracy"] for r in report["singles"]}
    for j, model in enumerate(table.models):
        assert singles[model] == pytest.approx(scores[:, j].mean())
    assert [r["router"] for r in report["routers"]] == ["knn", "sc"]
    for r in report["routers"]:
        assert [x["name"] for x in r["results"]] == [
            "argmax",
            "random",
            "prediction",
            "prediction-rf",
            "sorted",
            "cost",
        ]
        assert 0 < r["aiq"] < 1
        assert r["upper_bound"]["accuracy"] <= report["oracle"]["accuracy"] + 1e-12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = runner.invoke(
        app,
        [
            "eval",
            str(tmp_path / "knn"),
            "--table",
            "routerbench",
            "--data-dir",
            str(data_dir),
            "--policy",
            "cost",
            "--lambda",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| knn | cost |" in res.output

    res = runner.invoke(
        app,
        [
            "train",
            "--table",
            "routerbench",
            "--router",
            "svm",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    res = runner.invoke(
        app, ["eval", str(tmp_path / "knn"), "--table", "mmlu_pro", "--data-dir", str(data_dir)]
    )
    assert isinstance(res.exception, ConfigError) and "routerbench" in str(res.exception)
