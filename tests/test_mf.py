"""The matrix-factorisation win predictor, trained on the shared AlpacaEval / MMLU-Pro data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.loaders import apply_aliases, load_source
from prefroute.data.ratings import fit_ratings
from prefroute.embed import CachedEmbedder, build_embedder
from prefroute.errors import ConfigError, DataError
from prefroute.routers import router_class
from prefroute.routers.checks import check_router
from prefroute.routers.mf import MFRouter, plot_training_curve

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mixtral-8x7b-instruct-v0.1"
# Small, fast settings: the data are real, the epochs few.
FAST = {"epochs": 4, "patience": 2, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def alpaca() -> Battles:
    if not (DATA / "alpaca_eval" / "judge_battles.jsonl").exists():
        pytest.skip(f"shared data not found under {DATA}")
    return apply_aliases(load_source("alpaca_eval", DATA), ModelAliases())


@pytest.fixture(scope="module")
def golden() -> Battles:
    return load_source("golden:mmlu_pro", DATA, golden_as=(GPT4, MIXTRAL))


@pytest.fixture(scope="module")
def alpaca_small(alpaca: Battles) -> Battles:
    """AlpacaEval battles of GPT-4 Turbo against 8 models (5,150 battles, 644 prompts)."""
    keep = {
        MIXTRAL,
        "alpaca-7b",
        "falcon-7b-instruct",
        "claude-2.1",
        "gpt-3.5-turbo-1106",
        "FuseChat-Gemma-2-9B-Instruct",
        "vicuna-13b-v1.5",
        "phi-2",
    }
    return alpaca.filter(np.isin(alpaca.column("model_b"), list(keep)))


@pytest.fixture(scope="module")
def trained(alpaca: Battles) -> MFRouter:
    """One predictor on all 36,700 AlpacaEval battles (58 models)."""
    return MFRouter(strong_model=GPT4, weak_model=MIXTRAL, **{**FAST, "epochs": 8}).fit(alpaca)


def _weights(p: MFRouter) -> list[np.ndarray]:
    return [p.P_, p.W_, p.w_]


def test_contract(alpaca: Battles, golden: Battles) -> None:
    every_4th = alpaca.take(np.arange(0, len(alpaca), 4))
    battles = Battles.concat([every_4th, golden.take(np.arange(3000))])
    prompts = golden.prompts[3000:3040] + alpaca.prompts[:20] + ["Write a haiku about routers."]
    predictor = check_router(
        MFRouter,
        battles,
        prompts,
        strong_model=GPT4,
        weak_model=MIXTRAL,
        params={**FAST, "epochs": 2},
        atol=0.0,
    )
    assert router_class("mf") is MFRouter
    assert predictor.training_info_["n_ties"] > 0  # the golden battles hold ties; dropped
    assert (
        predictor.training_info_["n_train_battles"] + predictor.training_info_["n_val_battles"]
        == len(battles) - predictor.training_info_["n_ties"]
    )


def test_training_loss_falls_and_curve_is_kept(trained: MFRouter, tmp_path: Path) -> None:
    curve = trained.training_curve_
    assert len(curve["train_loss"]) == len(curve["val_loss"]) >= 2
    assert curve["train_loss"][-1] < curve["train_loss"][0]
    assert min(curve["val_loss"]) < curve["val_loss"][0]
    info = trained.training_info_
    # the validation split is by distinct prompt: 10% of the 644 AlpacaEval prompts
    assert info["n_val_prompts"] == round(0.1 * 644) and info["n_train_prompts"] == 644 - 64
    assert info["n_soft_labels"] == 36_700
    png = plot_training_curve(trained, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trained.save_pretrained(tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "config.json").read_text())["state"]
    assert state["embedder"]["name"] == "wordllama" and len(state["models"]) == 58
    assert state["training_curve"]["train_loss"] == curve["train_loss"]


def test_early_stopping_restores_best_epoch(alpaca_small: Battles) -> None:
    # A high learning rate overfits the 580 training prompts within a few epochs.
    params = {"lr": 3e-2, "patience": 2, "progress": False}
    stopped = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, epochs=30, **params).fit(alpaca_small)
    curve = stopped.training_curve_
    best = curve["best_epoch"]
    assert len(curve["val_loss"]) == best + 2 < 30, "training should stop 2 epochs after the best"
    assert curve["val_loss"][best - 1] == min(curve["val_loss"])
    # Training for exactly `best` epochs follows the same seeded trajectory: the restored
    # weights are those of the best epoch, not of the last one.
    exact = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, epochs=best, **params).fit(alpaca_small)
    for restored, reference in zip(_weights(stopped), _weights(exact), strict=True):
        np.testing.assert_array_equal(restored, reference)
    # Without the restore, the same run ends with the last epoch's (worse) weights.
    last = MFRouter(
        strong_model=GPT4, weak_model=MIXTRAL, epochs=30, restore_best=False, **params
    ).fit(alpaca_small)
    assert last.training_curve_ == curve
    assert not np.array_equal(last.P_, stopped.P_)


def test_same_seed_same_model_other_seed_differs(alpaca_small: Battles) -> None:
    prompts = alpaca_small.prompts[:200]
    runs = [
        MFRouter(strong_model=GPT4, weak_model=MIXTRAL, seed=s, **FAST).fit(alpaca_small)
        for s in (7, 7, 8)
    ]
    probs = [r.predict_proba(prompts) for r in runs]
    np.testing.assert_array_equal(probs[0], probs[1])
    for a, b in zip(_weights(runs[0]), _weights(runs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(probs[0] - probs[2]).max() > 1e-3


def test_training_leaves_global_torch_state_alone(alpaca_small: Battles) -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MFRouter(strong_model=GPT4, weak_model=MIXTRAL, **{**FAST, "epochs": 1}, torch_threads=1).fit(
        alpaca_small
    )
    assert torch.equal(torch.rand(3), expected), "fit must not consume the global torch RNG"
    assert torch.get_num_threads() == threads


def test_learned_ordering_matches_the_data(trained: MFRouter, alpaca: Battles) -> None:
    prompts = sorted(set(alpaca.prompts))
    models_b = np.array(alpaca.column("model_b"))
    p_b_wins = alpaca.numeric("p_b_wins")
    for weak in ("alpaca-7b", "falcon-7b-instruct", "phi-2"):
        # GPT-4 Turbo wins > 0.97 of these battles (mean 1 - p_b_wins)
        assert 1 - p_b_wins[models_b == weak].mean() > 0.95
        assert trained.pair_proba(prompts, GPT4, weak).mean() > 0.8
    for stronger in ("FuseChat-Gemma-2-9B-Instruct", "example"):
        # ... and loses most battles against these two
        assert 1 - p_b_wins[models_b == stronger].mean() < 0.35
        assert trained.pair_proba(prompts, GPT4, stronger).mean() < 0.5
    # the pair scoring is antisymmetric: P(a beats b) = 1 - P(b beats a)
    np.testing.assert_allclose(
        trained.pair_proba(prompts[:50], "phi-2", MIXTRAL),
        1 - trained.pair_proba(prompts[:50], MIXTRAL, "phi-2"),
        atol=1e-12,
    )


def test_mean_pairwise_ranking_agrees_with_bradley_terry(trained: MFRouter, alpaca: Battles):
    ratings = fit_ratings(alpaca)
    scores = trained.model_scores(sorted(set(alpaca.prompts)))  # [644, 58]
    assert scores.shape == (644, len(trained.models_))
    pairwise = 1 / (1 + np.exp(-(scores[:, :, None] - scores[:, None, :])))  # P(i beats j | q)
    n = len(trained.models_)
    mean_win = (pairwise.sum(axis=2) - 0.5).mean(axis=0) / (n - 1)
    theta = np.array([ratings.theta[ratings.index(m)] for m in trained.models_])
    rho = spearmanr(mean_win, theta).statistic
    assert rho > 0.9, f"Spearman {rho:.3f} between MF and Bradley-Terry rankings"


def test_numpy_fast_path_equals_torch_forward(trained: MFRouter, alpaca: Battles) -> None:
    prompts = alpaca.prompts[:300]
    net = trained.to_torch()
    emb = torch.from_numpy(trained.embed(prompts))
    idx = trained.model_index_
    with torch.no_grad():
        reference = net.win_prob(idx[GPT4], idx[MIXTRAL], emb).numpy()
        ref_scores = torch.stack(
            [net.scores(torch.full((len(prompts),), i), emb) for i in range(len(idx))], dim=1
        ).numpy()
    np.testing.assert_allclose(trained.predict_proba(prompts), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        trained.pair_proba(prompts, "phi-2", "claude-2.1"),
        net.win_prob(idx["phi-2"], idx["claude-2.1"], emb).numpy(),
        rtol=0,
        atol=1e-6,
    )
    np.testing.assert_allclose(trained.model_scores(prompts), ref_scores, rtol=0, atol=1e-5)
    assert np.abs(trained.predict_proba(prompts) - 0.5).max() > 0.05  # not a flat predictor


def test_projection_bias(alpaca_small: Battles, tmp_path: Path) -> None:
    params = {**FAST, "epochs": 6}
    plain = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, **params).fit(alpaca_small)
    biased = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, projection_bias=True, **params)
    biased.fit(alpaca_small)
    # a per-model constant is what these battles mostly teach (wordllama embeddings share
    # little common direction to carry it otherwise)
    assert min(biased.training_curve_["val_loss"]) < min(plain.training_curve_["val_loss"]) - 0.02
    prompts = alpaca_small.prompts[:100]
    emb = torch.from_numpy(biased.embed(prompts))
    idx = biased.model_index_
    np.testing.assert_allclose(
        biased.pair_proba(prompts, "phi-2", MIXTRAL),
        biased.to_torch().win_prob(idx["phi-2"], idx[MIXTRAL], emb).numpy(),
        rtol=0,
        atol=1e-6,
    )
    loaded = MFRouter.from_pretrained(biased.save_pretrained(tmp_path / "biased"))
    np.testing.assert_array_equal(loaded.model_scores(prompts), biased.model_scores(prompts))


def test_checkpoint_keeps_every_pair(trained: MFRouter, alpaca: Battles, tmp_path: Path) -> None:
    prompts = alpaca.prompts[:100]
    loaded = MFRouter.from_pretrained(trained.save_pretrained(tmp_path / "mf"))
    np.testing.assert_array_equal(
        loaded.pair_proba(prompts, "phi-2", "claude-2.1"),
        trained.pair_proba(prompts, "phi-2", "claude-2.1"),
    )
    np.testing.assert_array_equal(loaded.model_scores(prompts), trained.model_scores(prompts))
    assert loaded.models_ == trained.models_
    assert loaded.training_curve_ == trained.training_curve_


def test_soft_and_hard_labels_give_different_models(alpaca_small: Battles) -> None:
    prompts = alpaca_small.prompts[:200]
    soft = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, **FAST).fit(alpaca_small)
    hard = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, use_soft_labels=False, **FAST).fit(
        alpaca_small
    )
    assert soft.training_info_["n_soft_labels"] == len(alpaca_small)
    assert np.abs(soft.predict_proba(prompts) - hard.predict_proba(prompts)).max() > 1e-3
    # hard 0/1 labels are fitted more confidently than the judge's soft probabilities
    assert hard.training_curve_["train_loss"][-1] < soft.training_curve_["train_loss"][-1]


def test_ties(golden: Battles, tmp_path: Path) -> None:
    # An embedder instance works too (recorded by its spec); the cache spares re-embedding
    # the same 2,000 long MMLU-Pro prompts in each of the four fits.
    cached = CachedEmbedder(build_embedder("wordllama"), tmp_path / "cache")
    golden = golden.take(np.arange(2000))
    winner = np.array(golden.column("winner"))
    ties_only = golden.filter(winner == "tie")  # both right or both wrong
    assert len(ties_only) > 800
    with pytest.raises(DataError, match="every training battle is a tie"):
        MFRouter(strong_model=GPT4, weak_model=MIXTRAL, embedder=cached, **FAST).fit(ties_only)
    # Half a win each way teaches "no difference": probabilities near 0.5.
    half = MFRouter(
        strong_model=GPT4, weak_model=MIXTRAL, ties="half", embedder=cached, **FAST
    ).fit(ties_only)
    assert np.abs(half.predict_proba(ties_only.prompts[:300]) - 0.5).max() < 0.05
    # On mixed battles, ties are dropped (and counted) or trained on as half wins.
    drop = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, embedder=cached, **FAST).fit(golden)
    keep = MFRouter(
        strong_model=GPT4, weak_model=MIXTRAL, ties="half", embedder=cached, **FAST
    ).fit(golden)
    n_ties = len(ties_only)
    assert drop.training_info_["n_ties"] == keep.training_info_["n_ties"] == n_ties
    n_drop = drop.training_info_["n_train_battles"] + drop.training_info_["n_val_battles"]
    n_keep = keep.training_info_["n_train_battles"] + keep.training_info_["n_val_battles"]
    assert (n_drop, n_keep) == (len(golden) - n_ties, len(golden))
    prompts = golden.prompts[:300]
    assert np.abs(keep.predict_proba(prompts) - drop.predict_proba(prompts)).max() > 1e-3
    assert keep.get_params()["embedder"] == build_embedder("wordllama").spec()
    loaded = MFRouter.from_pretrained(keep.save_pretrained(tmp_path / "ckpt"))
    np.testing.assert_array_equal(loaded.predict_proba(prompts), keep.predict_proba(prompts))


def test_battle_weights_steer_training(alpaca_small: Battles) -> None:
    models_b = np.array(alpaca_small.column("model_b"))
    winner = np.array(alpaca_small.column("winner"))
    # Weight 0 on alpaca-7b's losses leaves only its 15 wins to learn from.
    weight = np.where((models_b == "alpaca-7b") & (winner == "model_a"), 0.0, 1.0)
    weighted = alpaca_small.with_column("weight", weight)
    plain = MFRouter(strong_model=GPT4, weak_model="alpaca-7b", use_soft_labels=False, **FAST)
    steered = MFRouter(strong_model=GPT4, weak_model="alpaca-7b", use_soft_labels=False, **FAST)
    prompts = sorted(set(alpaca_small.prompts))
    plain_mean = plain.fit(alpaca_small).predict_proba(prompts).mean()
    steered_mean = steered.fit(weighted).predict_proba(prompts).mean()
    assert plain_mean > 0.7 and steered_mean < plain_mean - 0.1


def test_unknown_models_and_bad_parameters(trained: MFRouter, alpaca_small: Battles) -> None:
    with pytest.raises(ConfigError, match="known models: .*alpaca-7b"):
        trained.pair_proba(["hi"], GPT4, "gpt-5")
    with pytest.raises(ConfigError, match="'gpt-5' does not appear in the training battles"):
        MFRouter(strong_model="gpt-5", weak_model=MIXTRAL, **FAST).fit(alpaca_small)
    with pytest.raises(ConfigError, match="'ties' parameter of MFRouter"):
        MFRouter(strong_model=GPT4, weak_model=MIXTRAL, ties="keep").fit(alpaca_small)
    with pytest.raises(ConfigError, match="'val_fraction' parameter"):
        MFRouter(strong_model=GPT4, weak_model=MIXTRAL, val_fraction=1.0).fit(alpaca_small)
    with pytest.raises(ConfigError, match="'epochs' parameter"):
        MFRouter(strong_model=GPT4, weak_model=MIXTRAL, epochs=0).fit(alpaca_small)


def test_no_validation_trains_every_epoch(alpaca_small: Battles) -> None:
    p = MFRouter(strong_model=GPT4, weak_model=MIXTRAL, val_fraction=0.0, **{**FAST, "epochs": 3})
    p.fit(alpaca_small)
    assert p.training_curve_["val_loss"] == [] and p.best_epoch_ == 3
    assert p.training_info_["n_val_battles"] == 0
