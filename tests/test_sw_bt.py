"""The similarity-weighted Bradley-Terry router (sw_bt), on the shared real data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from prefroute.data.battles import Battles
from prefroute.data.loaders import load_source
from prefroute.data.outcomes import load_outcomes
from prefroute.data.ratings import fit_bt_batched
from prefroute.errors import CheckpointError, ConfigError
from prefroute.routers.base import WinPredictor
from prefroute.routers.checks import check_router
from prefroute.routers.sw_bt import SWBTReference, SWBTRouter, battle_outcomes, bridge_path

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


@pytest.fixture(scope="module")
def eval_prompts(data_dir: Path) -> list[str]:
    """280 evaluation prompts: MT-Bench, GSM8K and MMLU questions."""
    rng = np.random.default_rng(0)
    mmlu = load_outcomes("mmlu", data_dir).prompts
    return (
        load_outcomes("mt-bench", data_dir).prompts
        + load_outcomes("gsm8k", data_dir).prompts[:100]
        + [mmlu[i] for i in rng.choice(len(mmlu), 100, replace=False)]
    )


@pytest.fixture(scope="module")
def fitted(alpaca_battles: Battles) -> SWBTRouter:
    return SWBTRouter(strong_model=STRONG, weak_model=WEAK, num_tiers=10).fit(alpaca_battles)


@pytest.fixture(scope="module")
def mt_bench(data_dir: Path) -> Battles:
    return load_source("mt_bench_human", data_dir)


def test_contract(alpaca_battles: Battles, eval_prompts: list[str]) -> None:
    router = check_router(
        SWBTRouter,
        alpaca_battles,
        eval_prompts,
        strong_model=STRONG,
        weak_model=WEAK,
        params={"num_tiers": 10},
    )
    probs = router.predict_proba(eval_prompts)
    assert probs.std() > 0, "similarity weighting must make probabilities prompt-dependent"
    # 36,700 battles collapse to 644 distinct prompts x a few tier pairs
    assert router.prompt_embeddings_.shape == (644, router.embedder_.dim)
    assert router.pair_counts_.shape[0] == 644
    assert router.n_groups_ == 10


def test_default_rates_models_not_tiers(alpaca_battles: Battles, eval_prompts: list[str]) -> None:
    router = check_router(
        SWBTRouter, alpaca_battles, eval_prompts, strong_model=STRONG, weak_model=WEAK
    )
    assert router.n_groups_ == len(alpaca_battles.models()) == 58
    assert router.predict_proba(eval_prompts).std() > 0


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_contract_with_top_k(
    alpaca_battles: Battles, eval_prompts: list[str], index: str, tmp_path: Path
) -> None:
    params = {"top_k": 32, "index": index}
    router = check_router(
        SWBTRouter,
        alpaca_battles,
        eval_prompts[:60],
        strong_model=STRONG,
        weak_model=WEAK,
        params=params,
    )
    assert router.index_kind_ == index
    path = router.save_pretrained(tmp_path / "ckpt")
    if index == "flat":  # exact search: the embeddings are the index
        assert router.index_ is None and not (path / "prompt_index.faiss").exists()
        return
    assert (path / "prompt_index.faiss").is_file()
    (path / "prompt_index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(CheckpointError, match="prompt_index.faiss"):
        SWBTRouter.from_pretrained(path)
    (path / "prompt_index.faiss").unlink()
    with pytest.raises(CheckpointError, match="prompt_index.faiss"):
        SWBTRouter.from_pretrained(path)


def test_fast_path_equals_per_query_logistic_regression(
    fitted: SWBTRouter, alpaca_battles: Battles, eval_prompts: list[str]
) -> None:
    queries = [eval_prompts[0], eval_prompts[90], eval_prompts[250]]
    reference = SWBTReference(fitted, alpaca_battles, tol=1e-8).predict_proba(queries)
    np.testing.assert_allclose(fitted.predict_proba(queries), reference, atol=1e-4, rtol=0)
    # RouteLLM's own solver settings land within 1e-3 as well
    loose = SWBTReference(fitted, alpaca_battles).predict_proba(queries[:1])
    np.testing.assert_allclose(fitted.predict_proba(queries[:1]), loose, atol=1e-3, rtol=0)


def test_newton_path_with_cycles_ties_and_hard_labels(
    mt_bench: Battles, eval_prompts: list[str]
) -> None:
    # Six MT-Bench models all compared with each other: the graph has cycles, so the batched
    # Newton solver (not the closed form over bridges) decides; the votes hold ties.
    assert "tie" in set(mt_bench.column("winner"))
    router = SWBTRouter(strong_model="gpt-4", weak_model="llama-13b", num_tiers=0).fit(mt_bench)
    assert bridge_path(router.pair_groups_, router.strong_group_, router.weak_group_) is None
    queries = eval_prompts[100:104]
    reference = SWBTReference(router, mt_bench, tol=1e-8).predict_proba(queries)
    probs = router.predict_proba(queries)
    np.testing.assert_allclose(probs, reference, atol=1e-4, rtol=0)
    assert (probs > 0.5).all(), "gpt-4 beats llama-13b in the human votes"


def test_bridge_closed_form_equals_batched_solver(
    fitted: SWBTRouter, eval_prompts: list[str]
) -> None:
    # AlpacaEval battles all involve gpt-4-turbo: the tier graph is a star.
    assert bridge_path(fitted.pair_groups_, fitted.strong_group_, fitted.weak_group_) is not None
    embeddings = fitted.embedder_.encode(eval_prompts[:50])
    pair_wins = fitted.weighted_pair_wins(embeddings)
    t = fitted.n_groups_
    wins = np.zeros((50, t, t))
    wins[:, fitted.pair_groups_[:, 0], fitted.pair_groups_[:, 1]] = pair_wins
    theta = fit_bt_batched(wins, reg=fitted.reg)
    newton = expit(theta[:, fitted.strong_group_] - theta[:, fitted.weak_group_])
    np.testing.assert_allclose(fitted.predict_proba(eval_prompts[:50]), newton, atol=1e-7)


def test_pair_counts_hold_every_battle(fitted: SWBTRouter, alpaca_battles: Battles) -> None:
    # Each used battle adds its weight (1) split between the two directions of its pair.
    outcome, _, _ = battle_outcomes(alpaca_battles, use_soft_labels=True, ties="half")
    groups = fitted.group_of_model_
    cross = np.array(
        [
            groups[a] != groups[b]
            for a, b in zip(
                alpaca_battles.column("model_a"), alpaca_battles.column("model_b"), strict=True
            )
        ]
    )
    assert fitted.pair_counts_.sum() == pytest.approx(cross.sum())
    won_by_a = sum(
        fitted.pair_counts_[:, c].sum()
        for c, (i, _) in enumerate(fitted.pair_groups_)
        if i == groups[STRONG]
    )
    assert won_by_a == pytest.approx(outcome[cross].sum())  # gpt-4-turbo is always model_a


def test_top_k(fitted: SWBTRouter, alpaca_battles: Battles, eval_prompts: list[str]) -> None:
    full = fitted.predict_proba(eval_prompts)
    every = SWBTRouter(
        strong_model=STRONG, weak_model=WEAK, top_k=10_000, index="flat", num_tiers=10
    )
    every.fit(alpaca_battles)
    np.testing.assert_allclose(every.predict_proba(eval_prompts), full, atol=1e-9, rtol=0)
    few = SWBTRouter(strong_model=STRONG, weak_model=WEAK, top_k=5, index="flat", num_tiers=10)
    near = few.fit(alpaca_battles).predict_proba(eval_prompts)
    assert np.isfinite(near).all() and (near >= 0).all() and (near <= 1).all()
    # re-targeting a fitted router gives what fitting with that top_k gives
    np.testing.assert_array_equal(
        fitted.with_search(top_k=5, index="flat").predict_proba(eval_prompts), near
    )
    assert fitted.top_k is None and (fitted.predict_proba(eval_prompts) == full).all()
    assert np.abs(near - full).max() > 0.01
    # the nearest prompts' votes spread the probabilities out
    assert near.std() > full.std()


def test_similarity_norm_none_differs(
    fitted: SWBTRouter, alpaca_battles: Battles, eval_prompts: list[str]
) -> None:
    raw = SWBTRouter(strong_model=STRONG, weak_model=WEAK, similarity_norm="none", num_tiers=10)
    probs = raw.fit(alpaca_battles).predict_proba(eval_prompts)
    assert np.abs(probs - fitted.predict_proba(eval_prompts)).max() > 1e-4
    reference = SWBTReference(raw, alpaca_battles, tol=1e-8).predict_proba(eval_prompts[:1])
    np.testing.assert_allclose(probs[:1], reference, atol=1e-4, rtol=0)


def test_math_prompts_follow_the_golden_math_win_rate(
    data_dir: Path, alpaca_battles: Battles
) -> None:
    """Trained on golden MMLU-Pro battles + AlpacaEval, held-out math prompts get a higher
    P(strong) than held-out chat instructions or psychology questions.

    What the data shows (checked below): on MMLU-Pro math, GPT-4o beats Mixtral more often
    (mean score 0.70) than across all strong-vs-weak tier battles pooled (0.66) and than on
    psychology (0.57). A chat instruction's neighbourhood is close to the pooled rate, since
    golden battles outnumber the AlpacaEval battles between the two tiers about 8 to 1.
    """
    golden = load_source("golden:mmlu_pro", data_dir, golden_as=(STRONG, WEAK))
    table = load_outcomes("mmlu_pro", data_dir)
    category = dict(zip(table.prompts, table.meta["category"], strict=True))
    rng = np.random.default_rng(0)
    held = {
        c: set(
            rng.choice(sorted({p for p in golden.prompts if category[p] == c}), 150, replace=False)
        )
        for c in ("math", "psychology")
    }
    held["chat"] = set(rng.choice(sorted(set(alpaca_battles.prompts)), 100, replace=False))
    left_out = set().union(*held.values())
    train = Battles.concat([golden, alpaca_battles])
    train = train.filter(np.array([p not in left_out for p in train.prompts]))
    router = SWBTRouter(strong_model=STRONG, weak_model=WEAK).fit(train)

    # The data: the strong tier's mean score against the weak tier.
    outcome, _, _ = battle_outcomes(train, use_soft_labels=True, ties="half")
    tier_a = np.array([router.group_of_model_[m] for m in train.column("model_a")])
    tier_b = np.array([router.group_of_model_[m] for m in train.column("model_b")])
    forward = (tier_a == router.strong_group_) & (tier_b == router.weak_group_)
    backward = (tier_a == router.weak_group_) & (tier_b == router.strong_group_)
    score = np.where(forward, outcome, 1.0 - outcome)
    on_edge = forward | backward
    train_category = np.array([category.get(p, "chat") for p in train.prompts])

    def rate(mask: np.ndarray) -> float:
        return float(score[mask & on_edge].mean())

    pooled, math_rate = rate(on_edge), rate(train_category == "math")
    assert math_rate > pooled + 0.03 and math_rate > rate(train_category == "psychology") + 0.1
    is_chat = train_category == "chat"
    assert (on_edge & ~is_chat).sum() > 5 * (on_edge & is_chat).sum()

    probs = {name: router.predict_proba(sorted(prompts)) for name, prompts in held.items()}
    probs["gsm8k"] = router.predict_proba(load_outcomes("gsm8k", data_dir).prompts[:150])
    for math_like in ("math", "gsm8k"):
        for other in ("chat", "psychology"):
            a, b = probs[math_like], probs[other]
            gap = a.mean() - b.mean()
            stderr = np.hypot(a.std() / np.sqrt(a.size), b.std() / np.sqrt(b.size))
            assert gap > 4 * stderr, (math_like, other, gap, stderr)
    print(
        {name: round(float(p.mean()), 4) for name, p in probs.items()},
        {"pooled": round(pooled, 4), "math": round(math_rate, 4)},
    )
    # pulled from the pooled rate towards the math rate, not past it
    assert probs["math"].mean() < math_rate


def test_same_tier_predicts_half_and_warns(
    fitted: SWBTRouter, alpaca_battles: Battles, caplog: pytest.LogCaptureFixture
) -> None:
    tier = fitted.tiers_.tier_of[WEAK]
    mates = [m for m in fitted.tiers_.members(tier) if m != WEAK]
    assert mates, "the weak model's tier has other members on this data"
    router = SWBTRouter(strong_model=mates[0], weak_model=WEAK, num_tiers=10)
    with caplog.at_level(logging.WARNING, logger="prefroute"):
        router.fit(alpaca_battles)
    assert "same tier" in caplog.text
    assert (router.predict_proba(["Tell me a joke", "Integrate x^2 dx"]) == 0.5).all()


def test_unknown_model_names_known_ones(alpaca_battles: Battles) -> None:
    router = SWBTRouter(strong_model="gpt-5-ultra", weak_model=WEAK)
    with pytest.raises(ConfigError, match="gpt-5-ultra") as info:
        router.fit(alpaca_battles)
    assert STRONG in str(info.value) and "known models" in str(info.value)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("gamma", 0.0),
        ("similarity_norm", "mean"),
        ("top_k", 0),
        ("index", "lsh"),
        ("num_tiers", -1),
        ("ties", "win"),
        ("reg", 0.0),
        ("index_params", {"nlists": 4}),
    ],
)
def test_bad_parameters(alpaca_battles: Battles, param: str, value: object) -> None:
    router = SWBTRouter(strong_model=STRONG, weak_model=WEAK, **{param: value})
    with pytest.raises(ConfigError, match=param):
        router.fit(alpaca_battles)


def test_corrupted_checkpoints(fitted: SWBTRouter, tmp_path: Path) -> None:
    path = fitted.save_pretrained(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    assert config["state"]["embedder"] == fitted.embedder_.spec()
    assert config["state"]["tiers"]["tier_of"][STRONG] == fitted.strong_group_

    wrong = json.loads(json.dumps(config))
    wrong["state"]["embedder"]["params"]["dim"] = 128
    (path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="embedder"):
        WinPredictor.from_pretrained(path)

    wrong = json.loads(json.dumps(config))
    wrong["state"]["n_prompts"] = 643
    (path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="prompt_embeddings"):
        SWBTRouter.from_pretrained(path)

    wrong = json.loads(json.dumps(config))
    wrong["params"]["similarity_norm"] = "mean"
    (path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="similarity_norm"):
        SWBTRouter.from_pretrained(path)

    (path / "config.json").write_text(json.dumps(config))
    loaded = SWBTRouter.from_pretrained(path)
    assert loaded.predict_proba("Tell me a joke") == fitted.predict_proba("Tell me a joke")
