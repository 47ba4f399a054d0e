"""The neural win predictors (bert, causal_llm) on their real offline backbones.

Each router trains once (module-scoped fixtures, through the shared contract suite) on 300
real battles: 200 AlpacaEval judge battles and 100 MMLU-Pro golden battles. Budgets are tiny
(a dozen optimizer steps, short max_length, only the top layers trained) because the CI
machine is a shared 2-core CPU; the code paths are the same as for a full run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefroute.data import ModelAliases, apply_aliases, load_source
from prefroute.data.battles import Battles
from prefroute.data.outcomes import load_outcomes
from prefroute.errors import CheckpointError, ConfigError, DataError
from prefroute.router import load_router
from prefroute.routers.bert import BertRouter
from prefroute.routers.causal_llm import CausalLLMRouter
from prefroute.routers.checks import check_router
from prefroute.routers.neural_common import LABELS, STRONG, TIE, WEAK, win_targets

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mixtral-8x7b-instruct-v0.1"

BERT_PARAMS = {
    "max_length": 32,
    "batch_size": 4,
    "grad_accum_steps": 2,
    "max_steps": 12,
    "lr": 3e-4,
    "warmup_ratio": 0.0,
    "train_last_layers": 3,
    "max_train_battles": 240,
    "eval_every": 6,
    "device": "cpu",
    "torch_threads": 1,
    "progress": False,
}
CAUSAL_PARAMS = {
    "instruction": "Reply A if a strong LLM beats a weak LLM on this request, B if tie, C if not.",
    "max_length": 64,
    "batch_size": 4,
    "grad_accum_steps": 2,
    "max_steps": 8,
    "lr": 2e-3,
    "warmup_ratio": 0.0,
    "lora_r": 4,
    "train_last_layers": 2,
    "max_train_battles": 120,
    "eval_every": 4,
    "device": "cpu",
    "torch_threads": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def battles(data_dir) -> Battles:
    rng = np.random.default_rng(0)
    alpaca = apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())
    golden = load_source("golden:mmlu_pro", data_dir, golden_as=(STRONG_MODEL, WEAK_MODEL))
    return Battles.concat([
        alpaca.take(rng.choice(len(alpaca), 200, replace=False)),
        golden.take(rng.choice(len(golden), 100, replace=False)),
    ])


@pytest.fixture(scope="module")
def long_prompt(data_dir) -> str:
    """Over 20,000 characters of real GSM8K questions."""
    text, prompts = "", load_outcomes("gsm8k", data_dir).prompts
    for p in prompts:
        text += p + "\n\n"
        if len(text) > 20_000:
            return text
    raise AssertionError("not enough GSM8K text")


@pytest.fixture(scope="module")
def prompts(data_dir, long_prompt) -> list[str]:
    mt = load_outcomes("mt-bench", data_dir).prompts
    gsm = load_outcomes("gsm8k", data_dir).prompts
    return [mt[0], gsm[0], mt[5], gsm[7], long_prompt, "Hi"]


@pytest.fixture(scope="module")
def bert(battles, prompts) -> BertRouter:
    return check_router(BertRouter, battles, prompts, strong_model=STRONG_MODEL,
                        weak_model=WEAK_MODEL, params=BERT_PARAMS, atol=1e-6)


@pytest.fixture(scope="module")
def causal(battles, prompts) -> CausalLLMRouter:
    return check_router(CausalLLMRouter, battles, prompts, strong_model=STRONG_MODEL,
                        weak_model=WEAK_MODEL, params=CAUSAL_PARAMS, atol=1e-6)


def assert_training_recorded(predictor, max_steps: int) -> None:
    curve = predictor.training_
    losses = curve["train_loss"]
    assert curve["step"] == list(range(1, max_steps + 1))
    assert len(losses) == max_steps and np.isfinite(losses).all()
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first, f"training loss did not fall: first steps {first:.4f}, last {last:.4f}"
    assert curve["evals"], "no validation step was recorded"
    for e in curve["evals"]:
        assert np.isfinite(e["val_loss"]) and 0.0 <= e["val_accuracy"] <= 1.0
    assert curve["best_val_loss"] == min(e["val_loss"] for e in curve["evals"])


# labels (no model) --------------------------------------------------------------------
def test_targets_orient_the_pair_and_count_what_they_skip(battles):
    data = win_targets(battles, STRONG_MODEL, WEAK_MODEL)
    np.testing.assert_allclose(data.targets.sum(1), 1.0, atol=1e-6)
    assert data.counts["used"] == len(data)
    assert data.counts["strong_vs_weak"] + data.counts["strong_vs_other"] == len(data)
    assert data.counts["used"] + data.counts["skipped_excluded_stand_ins"] == len(battles)
    # swapping sides of every battle changes nothing: the strong model is found on either side
    swapped = win_targets(battles.swap_sides(np.ones(len(battles), dtype=bool)), STRONG_MODEL,
                          WEAK_MODEL)
    np.testing.assert_allclose(swapped.targets, data.targets, atol=1e-6)
    # golden ties go to the tie label; judge battles carry soft labels without tie mass
    golden = battles.filter(np.array([s == "golden:mmlu_pro" for s in battles.column("source")]))
    g = win_targets(golden, STRONG_MODEL, WEAK_MODEL)
    ties = np.array([w == "tie" for w in golden.column("winner")])
    assert (g.targets[ties, TIE] == 1).all() and (g.targets[~ties, TIE] == 0).all()
    alpaca = battles.filter(np.array([s != "golden:mmlu_pro" for s in battles.column("source")]))
    a = win_targets(alpaca, STRONG_MODEL, WEAK_MODEL)
    assert (a.targets[:, TIE] == 0).all()
    assert ((a.targets[:, STRONG] > 0) & (a.targets[:, STRONG] < 1)).any(), "no soft label"
    hard = win_targets(alpaca, STRONG_MODEL, WEAK_MODEL, use_soft_labels=False)
    assert set(np.unique(hard.targets[:, STRONG])) <= {0.0, 1.0}


def test_targets_stand_ins_follow_the_rules(battles):
    exact_only = win_targets(battles, STRONG_MODEL, WEAK_MODEL, use_all_opponents=False)
    assert exact_only.counts["strong_vs_other"] == 0
    assert exact_only.counts["skipped_other_opponents"] > 0
    # weak model vs another model: the other model plays the strong one, and only if it
    # beats the weak model on average
    other = battles.filter(np.array([b == WEAK_MODEL for b in battles.column("model_b")]))
    renamed = other.rename_models({STRONG_MODEL: "some-other-model"})
    data = win_targets(renamed, STRONG_MODEL, WEAK_MODEL)
    assert data.counts["weak_vs_other"] == len(renamed)
    np.testing.assert_allclose(data.targets, win_targets(other, STRONG_MODEL, WEAK_MODEL).targets)
    with pytest.raises(DataError, match="no battle involves"):
        win_targets(battles, "nobody-a", "nobody-b")


# bert ---------------------------------------------------------------------------------
def test_bert_trains_and_records_its_curve(bert):
    assert_training_recorded(bert, BERT_PARAMS["max_steps"])
    counts = bert.training_["counts"]
    assert counts["after_subsampling"] == BERT_PARAMS["max_train_battles"]
    assert counts["train"] + counts["validation"] == BERT_PARAMS["max_train_battles"]
    assert bert.format_ == "full"


def test_bert_probability_is_the_expected_score(bert, prompts):
    classes = bert.class_probs(prompts)
    np.testing.assert_allclose(classes.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(bert.predict_proba(prompts),
                               classes[:, STRONG] + 0.5 * classes[:, TIE], atol=1e-9)
    bert.tie_credit = 0.0
    try:
        np.testing.assert_allclose(bert.predict_proba(prompts), classes[:, STRONG], atol=1e-9)
    finally:
        bert.tie_credit = 0.5
    assert classes[:, WEAK].min() >= 0 and len(LABELS) == 3


def test_bert_truncates_overlong_prompts_in_the_middle(bert, long_prompt):
    assert len(long_prompt) > 20_000
    tokens = bert.tokenizer_(long_prompt, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(tokens) > 10 * BERT_PARAMS["max_length"]
    batch = bert._encode([long_prompt])
    assert batch["input_ids"].shape[1] == BERT_PARAMS["max_length"]
    # the beginning and the end of the prompt (where the question is) are both kept
    kept = bert._query_ids([long_prompt])[0]
    head = len(kept) // 2
    assert kept == tokens[:head] + tokens[len(tokens) - (len(kept) - head):]
    assert bert.predict_proba(long_prompt).shape == (1,)


def test_bert_checkpoint_layout(bert, prompts, tmp_path):
    bert.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["params"]["backbone"] == "bundled:all-MiniLM-L6-v2"
    assert config["state"]["format"] == "full"
    assert config["state"]["training"]["train_loss"] == bert.training_["train_loss"]
    model_dir = tmp_path / "ckpt" / "hf_model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    # a checkpoint trained on a GPU loads on a machine without one
    config["params"]["device"] = "cuda"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    on_cpu = BertRouter.from_pretrained(tmp_path / "ckpt")
    assert on_cpu.device_ in ("cpu", "cuda", "mps")
    np.testing.assert_allclose(on_cpu.predict_proba(prompts), bert.predict_proba(prompts),
                               atol=1e-5, rtol=0)
    assert on_cpu.to("cpu") is on_cpu and on_cpu.device_ == "cpu"
    # tampered state: one CheckpointError naming the key, not a TypeError
    for key, value in (("training", "x"), ("labels", 5)):
        bad = json.loads(json.dumps(config))
        bad["state"][key] = value
        (tmp_path / "ckpt" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=f"state.{key}"):
            BertRouter.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError):
        BertRouter.from_pretrained(tmp_path / "ckpt")


def test_bert_lora_adapter_round_trip(battles, prompts, tmp_path):
    params = {**BERT_PARAMS, "lora_r": 4, "max_steps": 3, "eval_every": None,
              "max_train_battles": 60}
    router = BertRouter(strong_model=STRONG_MODEL, weak_model=WEAK_MODEL, **params).fit(battles)
    assert router.format_ == "adapter"
    probs = router.predict_proba(prompts)
    router.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "lora" / "hf_model").exists()
    np.testing.assert_allclose(load_router(tmp_path / "lora").strong_win_prob(prompts), probs,
                               atol=1e-6, rtol=0)


def test_bad_parameters_fail_before_training(battles):
    for params, match in [
        ({"tie_credit": 1.5}, "tie_credit"),
        ({"device": "gpu"}, "device"),
        ({"lora_r": -1}, "lora_r"),
        ({"max_steps": 0}, "max_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"max_length": 4096}, "max_length"),
    ]:
        with pytest.raises(ConfigError, match=match):
            BertRouter(strong_model=STRONG_MODEL, weak_model=WEAK_MODEL, progress=False,
                       **params).fit(battles.take(np.arange(20)))


# causal_llm ---------------------------------------------------------------------------
@pytest.mark.slow
def test_causal_llm_trains_and_records_its_curve(causal):
    assert_training_recorded(causal, CAUSAL_PARAMS["max_steps"])
    assert causal.format_ == "adapter"
    assert causal.label_words_ == ["A", "B", "C"]
    assert causal.prompt_suffix_.endswith("assistant\n")


@pytest.mark.slow
def test_causal_llm_truncates_overlong_prompts_in_the_middle(causal, long_prompt):
    tokens = causal.tokenizer_(long_prompt, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(tokens) > 10 * CAUSAL_PARAMS["max_length"]
    batch = causal._encode([long_prompt])
    assert batch["input_ids"].shape[1] == CAUSAL_PARAMS["max_length"]
    # the instruction's end (the answer cue) survives truncation
    assert batch["input_ids"][0, -len(causal.suffix_ids_):].tolist() == causal.suffix_ids_
    # and so do the prompt's beginning and its end (the question)
    kept = causal._query_ids([long_prompt])[0]
    head = len(kept) // 2
    assert kept == tokens[:head] + tokens[len(tokens) - (len(kept) - head):]
    assert np.isfinite(causal.predict_proba(long_prompt)).all()


@pytest.mark.slow
def test_causal_llm_exports_adapter_and_merged_weights(causal, prompts, tmp_path):
    probs = causal.predict_proba(prompts)
    causal.save_pretrained(tmp_path / "adapter")
    adapter = tmp_path / "adapter" / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file() and (tmp_path / "adapter" / "adapter" / "tokenizer.json").is_file()
    causal.merge_adapter = True
    try:
        causal.save_pretrained(tmp_path / "merged")
    finally:
        causal.merge_adapter = False
    assert causal.format_ == "adapter", "saving merged weights must not merge the live model"
    merged = tmp_path / "merged" / "hf_model" / "model.safetensors"
    assert merged.is_file() and (tmp_path / "merged" / "hf_model" / "tokenizer.json").is_file()
    assert adapter.stat().st_size * 20 < merged.stat().st_size
    loaded = CausalLLMRouter.from_pretrained(tmp_path / "merged")
    assert loaded.format_ == "merged" and not hasattr(loaded.model_, "peft_config")
    np.testing.assert_allclose(loaded.predict_proba(prompts), probs, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_causal_llm_rejects_a_max_length_without_room_for_the_prompt(battles):
    with pytest.raises(ConfigError, match="max_length"):
        CausalLLMRouter(strong_model=STRONG_MODEL, weak_model=WEAK_MODEL, max_length=40,
                        progress=False).fit(battles.take(np.arange(20)))
