""""A checkpoint is data" for the loaders the mf / sw_bt pass left: auto (members, mode,
weights, OOF table), knn / logistic / length, the multi routers, the neural routers' saved
state, ``router.training`` / ``router.calibration``, and ``prefroute info`` output. Every
tampered value is one CheckpointError naming ``<folder>/config.json`` and the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_auto_router import SMALL_CANDIDATES as CANDIDATES
from test_auto_router import STRONG, WEAK
from trust_helpers import assert_one_line_error, copy_checkpoint, edit_config, run_cli

from prefroute.data.loaders import golden_battles
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
from prefroute.errors import CheckpointError
from prefroute.multi import load_multi_router, make_multi_router
from prefroute.multi.data import prepare_table
from prefroute.router import load_router
from prefroute.routers.auto import AutoRouter


# fixtures: small real checkpoints ---------------------------------------------------------
@pytest.fixture(scope="module")
def auto_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A stacked auto router (knn, logistic, length) on 400 GSM8K golden battles."""
    table = load_outcomes("gsm8k", data_dir)
    rows = np.sort(np.random.default_rng(0).permutation(len(table))[:400])
    battles = golden_battles(table.subset(rows), ROUTELLM_STRONG, ROUTELLM_WEAK,
                             strong_name=STRONG, weak_name=WEAK)
    auto = AutoRouter(strong_model=STRONG, weak_model=WEAK, candidates=CANDIDATES, n_folds=3,
                      combine="stack", progress=False).fit(battles)
    out = tmp_path_factory.mktemp("auto") / "auto"
    from prefroute.router import Router

    Router(auto, 0.5).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def multi_checkpoints(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Small real multi routers (mlc, sc, knn, mf) on 200 RouterBench prompts."""
    table = prepare_table(load_outcomes("routerbench", data_dir)).table
    train = table.subset(np.random.default_rng(0).permutation(len(table))[:200])
    folder = tmp_path_factory.mktemp("multi")
    params = {"mlc": {"epochs": 3}, "sc": {}, "knn": {"k": 10}, "mf": {"epochs": 3},
              "kmeans-embed": {"n_clusters": 4}}
    out = {}
    for name, kwargs in params.items():
        router = make_multi_router(name, **kwargs).fit(train.prompts, train)
        out[name] = router.save_pretrained(folder / name)
    return out


# helpers -------------------------------------------------------------------------------
def _tampered(source: Path, tmp_path: Path, edit) -> Path:
    folder = copy_checkpoint(source, tmp_path / "tampered")
    edit_config(folder, edit)
    return folder


def _set(where: str, key: str, value: object):
    return lambda config: config[where].__setitem__(key, value)


def _retensor(folder: Path, edit) -> None:
    """Rewrite model.safetensors with ``edit(tensors)`` and record its new sha256, as an
    author who tampers with both files would."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_config(folder, lambda c: c["files"].__setitem__("model.safetensors", digest))


def _refused(folder: Path, *needles: str, load=load_router) -> str:
    """Loading ``folder`` fails with a CheckpointError naming its config.json and every
    needle (never another exception)."""
    with pytest.raises(CheckpointError) as info:
        load(folder)
    message = str(info.value)
    for needle in (str(folder / "config.json"), *needles):
        assert needle in message, (needle, message)
    return message


# 1. auto: members, mode, weights, candidates, OOF table --------------------------------------
def _member(index: int, **changes: object):
    return lambda c: c["state"]["members"][index].update(changes)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_member(0, name="../../outside"), "state.members[0].name"),
        (_member(0, name="/etc/passwd"), "state.members[0].name"),
        (_member(1, name="a\nmode: select"), "state.members[1].name"),
        (_member(1, name=5), "state.members[1].name"),
        (_member(0, router=["knn"]), "state.members[0].router"),
        (_member(0, router="nope"), "state.members[0].router"),
        (_member(0, router="auto"), "state.members[0].router"),
        (_member(1, name="knn-20"), "distinct"),
        (_set("state", "mode", ["stack"]), "state.mode"),
        (_set("state", "stack_weights", [1.0, "x", 2.0]), "state.stack_weights"),
        (_set("state", "stack_weights", [1.0]), "state.stack_weights"),
        (_set("state", "stack_intercept", "0"), "state.stack_intercept"),
        (_set("state", "candidates", "knn-20"), "state.candidates"),
        (_set("state", "candidates", ["../x", "b", "c"]), "state.candidates[0]"),
        (_set("state", "oof_table", "x"), "state.oof_table"),
        (_set("state", "oof_table", [5]), "state.oof_table[0]"),
        (_set("state", "oof_table", [{"name": "k", "oof_apgr": "high"}]),
         "state.oof_table[0].oof_apgr"),
        (_set("state", "oof_table", [{"name": ["k"]}]), "state.oof_table[0].name"),
        (_set("state", "scored_on", 5), "state.scored_on"),
        (_set("state", "calibration", "platt"), "state.calibration"),
        (_set("state", "calibration", {"method": "platt", "a": 10**400, "b": 0}),
         "state.calibration.a"),
    ],
)
def test_auto_state_of_the_wrong_shape_is_refused(auto_checkpoint, tmp_path, edit, named):
    _refused(_tampered(auto_checkpoint, tmp_path, edit), named)


@pytest.mark.parametrize(
    ("tensor", "value"),
    [
        ("stack_weights", np.array([1, 0, 1], dtype=np.bool_)),
        ("oof_probs", np.full((5, 3), 0.5)),
        ("oof_folds", np.array([-1, 0, 1])),
    ],
)
def test_auto_tensors_of_the_wrong_shape_are_refused(auto_checkpoint, tmp_path, tensor, value):
    folder = copy_checkpoint(auto_checkpoint, tmp_path / "t")
    _retensor(folder, lambda t: t.__setitem__(tensor, value))
    _refused(folder, tensor.split("_")[0])


def test_auto_candidate_names_must_be_plain_at_fit():
    from prefroute.errors import ConfigError

    bad = [{"name": "../x", "router": "length"}]
    with pytest.raises(ConfigError, match="plain name"):
        AutoRouter(strong_model=STRONG, weak_model=WEAK, candidates=bad)._check_params()


def test_cli_info_refuses_a_tampered_auto_state_in_one_line(auto_checkpoint, tmp_path):
    folder = _tampered(auto_checkpoint, tmp_path, _member(0, name="x\nmode: select"))
    assert_one_line_error(run_cli("info", str(folder)), "config.json", "state.members[0].name")
    folder2 = _tampered(auto_checkpoint, tmp_path / "b", _set("state", "oof_table", "x"))
    assert_one_line_error(run_cli("info", str(folder2)), "config.json", "state.oof_table")


# 2. knn / logistic / length (the auto members are real saved routers of each) --------------
def _member_folder(auto_checkpoint: Path, tmp_path: Path, index: int, edit=None) -> Path:
    folder = copy_checkpoint(auto_checkpoint / "members" / f"{index:02d}", tmp_path / "m")
    if edit is not None:
        edit_config(folder, edit)
    return folder


@pytest.mark.parametrize(
    ("index", "where", "key", "value", "named"),
    [
        (0, "state", "n_prompts", "400", "state.n_prompts"),
        (0, "state", "n_prompts", True, "state.n_prompts"),
        (0, "state", "n_prompts", 10**30, "state.n_prompts"),
        (0, "state", "embedder", 5, "state.embedder"),
        (0, "params", "embedder", [1], "params.embedder"),
        (0, "params", "embedder", {"name": "wordllama", "params": "x"}, "params.embedder"),
        (1, "params", "embedder", {"name": "wordllama", "params": {"bogus": 1}}, "embedder"),
        (1, "state", "embedder", {"name": "wordllama", "params": "x"}, "state.embedder"),
        (1, "params", "c", "x", "'c'"),
        (2, "params", "scale", "x", "params.scale"),
        (2, "params", "scale", [1, 2], "params.scale"),
        (2, "params", "scale", True, "params.scale"),
        (2, "params", "scale", 123.0, "params.scale"),
    ],
)
def test_simple_router_state_is_checked(auto_checkpoint, tmp_path, index, where, key, value,
                                        named):
    folder = _member_folder(auto_checkpoint, tmp_path, index, _set(where, key, value))
    _refused(folder, named)


@pytest.mark.parametrize(
    ("index", "tensor", "value"),
    [
        (0, "labels", np.full(3, 0.5)),
        (0, "weights", np.array(["x"], dtype=object)[:0].astype(np.float64)),
        (0, "prompt_embeddings", np.zeros((2, 2), dtype=np.float32)),
        (2, "scale", np.zeros(2)),
    ],
)
def test_simple_router_tensors_are_checked(auto_checkpoint, tmp_path, index, tensor, value):
    folder = _member_folder(auto_checkpoint, tmp_path, index)
    _retensor(folder, lambda t: t.__setitem__(tensor, value))
    _refused(folder, tensor)


# 3. router.training / router.calibration ---------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("training", "x", "router.training"),
        ("training", [1, 2], "router.training"),
        ("training", {"sources": "a.jsonl"}, "router.training.sources"),
        ("training", {"n_battles": "many"}, "router.training.n_battles"),
        ("training", {"lineage": [1]}, "router.training.lineage"),
        ("calibration", "strong_rate", "router.calibration"),
        ("calibration", [0.5], "router.calibration"),
        ("calibration", {"method": 5}, "router.calibration.method"),
        ("calibration", {"method": "strong_rate", "n_prompts": "10"},
         "router.calibration.n_prompts"),
        ("calibration", {"method": "strong_rate", "score_range": "ab"},
         "router.calibration.score_range"),
        ("calibration", {"method": "strong_rate", "rate_thresholds": ["x", 1]},
         "router.calibration.rate_thresholds"),
        ("calibration", {"method": "strong_rate", "budget": "cheap"},
         "router.calibration.budget"),
    ],
)
def test_router_section_of_the_wrong_shape_is_refused(auto_checkpoint, tmp_path, key, value,
                                                      named):
    # a member is a real checkpoint without a router section: give the length one a section
    folder = copy_checkpoint(auto_checkpoint / "members" / "02", tmp_path / "r")
    edit_config(folder, lambda c: c.__setitem__("router", {"threshold": 0.5, key: value}))
    _refused(folder, named)
    done = run_cli("info", str(folder))
    assert_one_line_error(done, "config.json", named)


# 4. info and the model card escape strings from the checkpoint ------------------------------
def test_info_escapes_control_characters(auto_checkpoint, tmp_path):
    fake = "a.jsonl\nstrong model:     evil-model\x1b[2J"

    def edit(config: dict) -> None:
        config["router"]["strong_model"] = STRONG + "\nweak model:       fake"
        config["router"]["training"] = {"sources": [fake]}
        config["state"]["oof_table"][0]["status"] = "ok\n| fake | row |"
        config["state"]["scored_on"] = "all\u202e"

    folder = _tampered(auto_checkpoint, tmp_path, edit)
    done = run_cli("info", str(folder))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("weak model:") for line in lines) == 1
    assert sum(line.startswith("strong model:") for line in lines) == 1
    assert not any(line.startswith("| fake") for line in lines)
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
    assert "\\n" in done.stdout and "\\x1b" in done.stdout and "\\u202e" in done.stdout

    from prefroute.checkpoint import read_config
    from prefroute.model_card import render_model_card

    card = render_model_card(read_config(folder))
    assert "\x1b" not in card and "\nweak model:       fake" not in card


# 5. multi routers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key", "value", "named"),
    [
        ("mlc", "n_layers", 10**12, "state.n_layers"),
        ("mlc", "n_layers", "2", "state.n_layers"),
        ("mlc", "best_epoch", "3", "state.best_epoch"),
        ("mlc", "models", ["a", "a", "b"], "state.models"),
        ("mlc", "embedding_dim", "256", "state.embedding_dim"),
        ("mlc", "embedder_spec", {"name": "wordllama", "params": "x"}, "state.embedder_spec"),
        ("mlc", "embedder_spec", {"name": "wordllama", "params": {"bogus": 1}},
         "state.embedder_spec"),
        ("sc", "models", ["a", "b"], "coef"),
        ("knn", "models", ["a", "b"], "train_labels"),
        ("mf", "models", ["a", "b"], "'P'"),
        ("mf", "best_epoch", -1, "state.best_epoch"),
        ("kmeans-embed", "models", ["a", "b"], "cluster_scores"),
    ],
)
def test_multi_state_is_checked(multi_checkpoints, tmp_path, name, key, value, named):
    folder = _tampered(multi_checkpoints[name], tmp_path, _set("state", key, value))
    _refused(folder, named, load=load_multi_router)


@pytest.mark.parametrize(("name", "key", "value"),
                         [("knn", "k", "10"), ("mf", "objective", 5), ("sc", "C", "x")])
def test_multi_params_are_checked(multi_checkpoints, tmp_path, name, key, value):
    folder = _tampered(multi_checkpoints[name], tmp_path, _set("params", key, value))
    _refused(folder, f"'{key}'", load=load_multi_router)


def test_multi_tensors_are_checked(multi_checkpoints, tmp_path):
    folder = copy_checkpoint(multi_checkpoints["sc"], tmp_path / "sc")
    _retensor(folder, lambda t: t.__setitem__("intercept", np.zeros(2)))
    _refused(folder, "intercept", load=load_multi_router)


def test_cli_refuses_huge_n_layers_in_one_line(multi_checkpoints, tmp_path):
    folder = _tampered(multi_checkpoints["mlc"], tmp_path, _set("state", "n_layers", 10**12))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    done = run_cli("info", str(folder))  # info reads config.json only
    assert done.returncode == 0, done.stderr
    loaded = pytest.raises(CheckpointError, load_multi_router, folder)
    assert "state.n_layers" in str(loaded.value)


@pytest.mark.parametrize("encoder_dir", [5, ["encoder"], "../../outside", "/etc"])
def test_encoder_dir_stays_inside_the_folder(tmp_path, encoder_dir):
    from prefroute.multi.encoder_mlc import EncoderMLCRouter

    folder = tmp_path / "enc"
    (folder / "encoder").mkdir(parents=True)
    router = EncoderMLCRouter()
    router.models_ = ["a", "b"]
    with pytest.raises(CheckpointError, match="state.encoder_dir"):
        router._load_state({"label_prior": np.full(2, 0.5)}, {"encoder_dir": encoder_dir},
                           folder)


def test_encoder_device_from_a_checkpoint_is_checked(tmp_path):
    from prefroute.multi.encoder_mlc import EncoderMLCRouter

    with pytest.raises(Exception, match="device"):
        EncoderMLCRouter(device="tpu:evil")._check_loaded_params()


# 6. neural routers' saved state --------------------------------------------------------------
@pytest.mark.parametrize("words", ["ABC", 5, ["A", "A", "B"], ["A", "", "C"], ["A", "B"]])
def test_causal_llm_label_words_are_checked(words):
    from prefroute.routers.causal_llm import CausalLLMRouter

    router = CausalLLMRouter(strong_model=STRONG, weak_model=WEAK)
    with pytest.raises(CheckpointError, match="label_words"):
        router._load_extra_state({"label_token_ids": np.arange(3)},
                                 {"prompt_prefix": "", "prompt_suffix": "", "label_words": words})


@pytest.mark.parametrize("key", ["prompt_prefix", "prompt_suffix"])
def test_causal_llm_prompt_parts_must_be_strings(key):
    from prefroute.routers.causal_llm import CausalLLMRouter

    extra = {"prompt_prefix": "", "prompt_suffix": "", "label_words": ["A", "B", "C"], key: [1]}
    with pytest.raises(CheckpointError, match=key):
        CausalLLMRouter(strong_model=STRONG, weak_model=WEAK)._load_extra_state(
            {"label_token_ids": np.arange(3)}, extra)


def _neural_folder(tmp_path: Path, tokenizer_config: dict | None = None) -> Path:
    folder = tmp_path / "neural"
    (folder / "hf_model").mkdir(parents=True)
    if tokenizer_config is not None:
        (folder / "hf_model" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.parametrize("router_type", ["bert", "causal_llm"])
@pytest.mark.parametrize(("key", "value"), [("max_length", "x"), ("epochs", 10**-3),
                                            ("device", "tpu:evil"), ("tie_credit", 5.0)])
def test_neural_params_are_checked_before_loading(tmp_path, router_type, key, value):
    from prefroute.routers.base import router_class

    router = router_class(router_type)(strong_model=STRONG, weak_model=WEAK, **{key: value})
    extra = {"format": "merged", "labels": ["strong_wins", "tie", "weak_wins"]}
    folder = _neural_folder(tmp_path)
    with pytest.raises(CheckpointError, match=f"params: .*'{key}'") as info:
        router._load_state({"class_order": np.arange(3)}, extra, folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("router_type", ["bert", "causal_llm"])
@pytest.mark.parametrize("value", ["/etc/passwd", "../../../tokenizer.json"])
def test_saved_tokenizer_may_not_name_outside_files(tmp_path, router_type, value):
    from prefroute.routers.base import router_class

    router = router_class(router_type)(strong_model=STRONG, weak_model=WEAK)
    folder = _neural_folder(tmp_path, {"tokenizer_file": value})
    extra = {"format": "merged", "labels": ["strong_wins", "tie", "weak_wins"]}
    with pytest.raises(CheckpointError, match="tokenizer_file"):
        router._load_state({"class_order": np.arange(3)}, extra, folder)


@pytest.mark.parametrize("a", [True, 10**400, float("nan"), "1.0", None])
def test_probability_calibrator_state_needs_finite_real_numbers(a):
    from prefroute.prob_calibration import ProbabilityCalibrator

    with pytest.raises(CheckpointError, match="calibration a/b must be finite numbers"):
        ProbabilityCalibrator.from_state({}, {"method": "platt", "a": a, "b": 0.0}, "x.json")
    loaded = ProbabilityCalibrator.from_state({}, {"method": "platt", "a": 2, "b": -0.5}, "x")
    assert (loaded.a_, loaded.b_) == (2.0, -0.5)
