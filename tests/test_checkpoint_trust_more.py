"""More of "a checkpoint is data": the sources it records are never read by ``update``, an
embedder ``config`` is a shipped name and never a path, every state value and parameter the
mf / sw_bt loaders read is type- and range-checked, and ``--debug`` tracebacks are redacted."""

from __future__ import annotations

import json
import shutil
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from trust_helpers import (
    LocalHTTPServer,
    assert_one_line_error,
    copy_checkpoint,
    edit_config,
    run_cli,
    run_main,
    snapshot,
)

from prefroute.embed.wordllama_embedder import WordLlamaEmbedder, wordllama_package_dir
from prefroute.errors import CheckpointError, ConfigError
from prefroute.router import Router, load_router
from prefroute.training import train_router

EMBED_DIM = 256  # the wordllama vectors the checkpoints were trained on
SECRET_KEY = "sk-SECRETKEY1234567890abcdef"


@pytest.fixture(scope="module")
def subset(alpaca_battles):
    """Every 10th AlpacaEval battle (3,670 battles)."""
    return alpaca_battles.take(range(0, len(alpaca_battles), 10))


@pytest.fixture(scope="module")
def mf_checkpoint(tmp_path_factory, subset) -> Path:
    """A real mf router, one epoch on the subset."""
    out = tmp_path_factory.mktemp("mf") / "mf"
    Router(train_router("mf", subset, epochs=1, progress=False), 0.5).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sw_checkpoint(tmp_path_factory, subset) -> Path:
    """A real sw_bt router over the 20 nearest prompts with an HNSW index."""
    out = tmp_path_factory.mktemp("sw") / "sw"
    Router(train_router("sw_bt", subset, top_k=20, index="hnsw"), 0.5).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def battle_files(tmp_path_factory, alpaca_battles) -> tuple[Path, Path]:
    """(new battles, old battles in a folder outside any checkpoint), disjoint slices."""
    folder = tmp_path_factory.mktemp("battles")
    new, old = folder / "new.jsonl", folder / "other" / "b.jsonl"
    old.parent.mkdir()
    alpaca_battles.take(range(1, len(alpaca_battles), 40)).write(new)
    alpaca_battles.take(range(2, len(alpaca_battles), 40)).write(old)
    return new, old


def _set(where: str, key: str, value: object):
    return lambda config: config[where].__setitem__(key, value)


def _tampered(source: Path, tmp_path: Path, edit) -> Path:
    folder = copy_checkpoint(source, tmp_path / "tampered")
    edit_config(folder, edit)
    return folder


def _refused(folder: Path, *needles: str, file: str = "config.json") -> str:
    """Loading ``folder`` fails with a CheckpointError naming ``file`` and every needle."""
    with pytest.raises(CheckpointError) as info:
        load_router(folder)
    message = str(info.value)
    for needle in (str(folder / file), *needles):
        assert needle in message, (needle, message)
    return message


# 1. update replays only what the user names -----------------------------------------------
def _update(monkeypatch, capsys, folder: Path, new: Path, out: Path, *extra: str):
    return run_main(monkeypatch, capsys, "update", str(folder), "--data", str(new), "--out",
                    str(out), "--epochs", "1", "--no-clean", *extra)


@pytest.mark.parametrize("recorded", ["absolute", "relative"])
def test_update_never_reads_the_sources_a_checkpoint_names(
    mf_checkpoint, battle_files, tmp_path, monkeypatch, capsys, recorded
):
    new, old = battle_files
    monkeypatch.chdir(old.parent)  # a relative name would resolve here
    name = str(old) if recorded == "absolute" else old.name
    folder = _tampered(mf_checkpoint, tmp_path, lambda c: c["router"].__setitem__(
        "training", {"sources": [name]}))
    code, out, err = _update(monkeypatch, capsys, folder, new, tmp_path / "updated")
    assert code == 0, err
    assert "replayed" not in out
    assert repr(name) in err and "--replay" in err and "does not read" in err
    training = load_router(tmp_path / "updated").training
    assert training["lineage"][0]["n_replayed"] == 0
    assert training["sources"] == [name, str(new)]  # the lineage is kept, as a record

    # the same weights as an update that replays nothing
    code, _, err = _update(monkeypatch, capsys, mf_checkpoint, new, tmp_path / "plain",
                           "--no-replay")
    assert code == 0, err
    ours, plain = (load_file(str(tmp_path / d / "model.safetensors"))
                   for d in ("updated", "plain"))
    assert all(np.array_equal(ours[k], plain[k]) for k in plain)


def test_update_replays_what_the_user_passes(
    mf_checkpoint, battle_files, tmp_path, monkeypatch, capsys
):
    new, old = battle_files
    code, out, err = _update(monkeypatch, capsys, mf_checkpoint, new, tmp_path / "u",
                             "--replay", str(old), "--replay-size", "100")
    assert code == 0, err
    assert "100 replayed" in out
    assert load_router(tmp_path / "u").training["lineage"][0]["n_replayed"] == 100


@pytest.mark.parametrize(
    ("key", "value"),
    [("sources", 5), ("sources", "b.jsonl"), ("lineage", "x"), ("n_battles", "many")],
)
def test_update_refuses_malformed_lineage_in_one_line(
    mf_checkpoint, battle_files, tmp_path, key, value
):
    new, _ = battle_files
    folder = _tampered(mf_checkpoint, tmp_path, lambda c: c["router"].__setitem__(
        "training", {key: value}))
    done = run_cli("update", str(folder), "--data", str(new), "--out", str(tmp_path / "u"),
                   "--epochs", "1", "--no-clean")
    assert_one_line_error(done, "config.json", f"router.training.{key}")
    assert not (tmp_path / "u").exists()


# 2. a wordllama config is a shipped name, never a path --------------------------------------
@pytest.fixture()
def lookalike(tmp_path) -> str:
    """A real copy of the shipped weights and tokenizer outside the package, named like a
    config (what the package folder joined with an absolute "config" used to find)."""
    evil = tmp_path / "evil"
    evil.mkdir()
    package = wordllama_package_dir()
    for path in [*(package / "weights").glob("l2_supercat_*.safetensors"),
                 *(package / "tokenizers").glob("l2_supercat_*.json")]:
        shutil.copy(path, evil / path.name)
    return str(evil / "l2_supercat")


@pytest.mark.parametrize("config", ["LOOKALIKE", "../../x", "l2_supercat/../l2_supercat",
                                    "__class__", "", 5])
def test_wordllama_config_must_be_a_shipped_name(config, lookalike):
    config = lookalike if config == "LOOKALIKE" else config
    with pytest.raises(ConfigError, match="plain name of a configuration"):
        WordLlamaEmbedder(config=config)
    from prefroute.embed.wordllama_embedder import bundled_configs

    assert "l2_supercat" in bundled_configs()
    assert WordLlamaEmbedder(dim=64, config="l2_supercat").encode("hi").shape == (1, 64)


@pytest.mark.parametrize("where", ["params", "state"])
def test_checkpoint_embedder_config_path_is_refused(mf_checkpoint, tmp_path, lookalike, where):
    spec = {"name": "wordllama", "params": {"dim": EMBED_DIM, "config": lookalike,
                                            "max_tokens": None}}
    folder = _tampered(mf_checkpoint, tmp_path, _set(where, "embedder", spec))
    _refused(folder, f"{where}.embedder", "plain name", lookalike)


def test_nested_embedder_config_path_is_refused(mf_checkpoint, tmp_path):
    inner = {"name": "wordllama", "params": {"config": "../../x"}}
    spec = {"name": "features", "params": {"inner": inner, "feature_weight": 0.5}}
    folder = _tampered(mf_checkpoint, tmp_path, _set("params", "embedder", spec))
    _refused(folder, "params.embedder.params.inner", "'../../x'")


def test_sw_bt_embedder_config_path_is_refused(sw_checkpoint, tmp_path, lookalike):
    spec = {"name": "wordllama", "params": {"dim": EMBED_DIM, "config": lookalike,
                                            "max_tokens": None}}

    def edit(config: dict) -> None:
        config["params"]["embedder"] = spec
        config["state"]["embedder"] = spec

    _refused(_tampered(sw_checkpoint, tmp_path, edit), lookalike, "plain name")


def test_cli_refuses_an_embedder_config_path_in_one_line(mf_checkpoint, tmp_path, lookalike):
    spec = {"name": "wordllama", "params": {"config": lookalike}}
    folder = _tampered(mf_checkpoint, tmp_path, _set("params", "embedder", spec))
    before = snapshot(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\nhow are you\n")
    done = run_cli("score", str(folder), "--prompts", str(prompts), "--out",
                   str(tmp_path / "scores.jsonl"))
    assert_one_line_error(done, "config.json", "params.embedder", "plain name")
    assert snapshot(folder) == before and not (tmp_path / "scores.jsonl").exists()


# 3. every value the mf loader reads is type-checked ------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("training_curve", "x", "state.training_curve"),
        ("training_curve", [{"train_loss": 1.0}], "state.training_curve"),
        ("training_curve", {"train_loss": "x"}, "state.training_curve.train_loss"),
        ("training_curve", {"val_loss": [0.5, "low"]}, "state.training_curve.val_loss"),
        ("training_curve", {"best_epoch": "3"}, "state.training_curve.best_epoch"),
        ("training_info", "x", "state.training_info"),
        ("training_info", [1, 2], "state.training_info"),
        ("models", "x", "state.models"),
        ("models", {"gpt-4-1106-preview": 0}, "state.models"),
        ("embedder", 5, "state.embedder"),
        ("embedder", {"name": "wordllama", "params": "x"}, "state.embedder"),
        ("embedder", {"name": "wordllama", "params": {"dim": "256"}}, "state.embedder"),
    ],
)
def test_mf_state_of_the_wrong_type_is_refused(mf_checkpoint, tmp_path, key, value, named):
    _refused(_tampered(mf_checkpoint, tmp_path, _set("state", key, value)), named)


def test_mf_duplicate_model_names_are_refused(mf_checkpoint, tmp_path):
    def edit(config: dict) -> None:
        models = config["state"]["models"]
        models[-1] = models[0]

    _refused(_tampered(mf_checkpoint, tmp_path, edit), "state.models", "distinct")


def test_cli_refuses_a_mistyped_training_curve_in_one_line(
    mf_checkpoint, battle_files, tmp_path
):
    folder = _tampered(mf_checkpoint, tmp_path, _set("state", "training_curve", "x"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    done = run_cli("score", str(folder), "--prompts", str(prompts), "--out",
                   str(tmp_path / "s.jsonl"))
    assert_one_line_error(done, "config.json", "state.training_curve")
    done = run_cli("update", str(folder), "--data", str(battle_files[0]), "--out",
                   str(tmp_path / "u"), "--epochs", "1")
    assert_one_line_error(done, "config.json", "state.training_curve")


# 5. absurd parameters are refused at load ---------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dim", -4), ("dim", 10**9), ("dim", 1e9),
        ("torch_threads", 10**6), ("torch_threads", 0),
        ("batch_size", 1e18), ("batch_size", 10**18),
        ("epochs", 10**12), ("patience", 0), ("seed", -1), ("seed", "0"),
        ("lr", float("inf")), ("lr", "fast"), ("weight_decay", 1e300),
        ("embedding_noise", float("nan")), ("progress", "yes"),
    ],
)
def test_mf_params_out_of_range_are_refused(mf_checkpoint, tmp_path, key, value):
    _refused(_tampered(mf_checkpoint, tmp_path, _set("params", key, value)), "params",
             f"'{key}'")


def test_mf_dim_must_match_the_saved_tensors(mf_checkpoint, tmp_path):
    _refused(_tampered(mf_checkpoint, tmp_path, _set("params", "dim", 64)), "dim 64", file="")


@pytest.mark.parametrize(
    ("where", "key", "value", "named"),
    [
        ("state", "n_groups", 10**9, "n_groups"),
        ("state", "n_groups", True, "n_groups"),
        ("state", "n_prompts", True, "n_prompts"),
        ("params", "top_k", 10**18, "top_k"),
        ("params", "top_k", 2**40, "top_k"),
        ("params", "index_params", {"ef_search": 10**12}, "ef_search"),
        ("params", "batch_size", 10**18, "batch_size"),
        ("state", "tiers", "x", "state.tiers"),
        ("state", "ratings", [1], "state.ratings"),
        ("state", "index_file", 5, "index_file"),
    ],
)
def test_sw_bt_sizes_and_state_are_checked(sw_checkpoint, tmp_path, where, key, value, named):
    folder = _tampered(sw_checkpoint, tmp_path, _set(where, key, value))
    with pytest.raises(CheckpointError, match=named) as info:
        load_router(folder)
    assert str(folder) in str(info.value)


def test_untampered_checkpoints_still_load_and_score(mf_checkpoint, sw_checkpoint):
    for folder in (mf_checkpoint, sw_checkpoint):
        probs = load_router(folder).strong_win_prob(["Prove that sqrt(2) is irrational."])
        assert ((probs >= 0) & (probs <= 1)).all()


# 4. --debug tracebacks are redacted ------------------------------------------------------
class RejectingServer(LocalHTTPServer):
    """A real embeddings server on 127.0.0.1 that answers 401 and echoes the key it got
    (as some proxies do), plus an Authorization header line."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                message = (f"Incorrect API key provided: {key}. "
                           "Sent headers: Authorization: Bearer xyz")
                body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                             "code": "invalid_api_key"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def _openai_checkpoint(source: Path, tmp_path: Path) -> Path:
    spec = {"name": "openai", "params": {
        "model": "text-embedding-3-small", "base_url": None, "api_key_env": "OPENAI_API_KEY",
        "batch_size": 64, "max_retries": 0, "timeout": 10.0, "dimensions": EMBED_DIM,
        "initial_backoff": 0.0}}

    def edit(config: dict) -> None:
        config["params"]["embedder"] = spec
        config["state"]["embedder"] = spec

    return _tampered(source, tmp_path, edit)


def test_debug_traceback_is_redacted(mf_checkpoint, tmp_path):
    folder = _openai_checkpoint(mf_checkpoint, tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    args = ["score", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "s.jsonl")]
    with RejectingServer() as server:
        env = {"OPENAI_API_KEY": SECRET_KEY, "PREFROUTE_EMBEDDER_BASE_URL": server.base_url}
        debug = run_cli("--debug", *args, env=env)
        plain = run_cli(*args, env=env)
    assert debug.returncode == 1, debug.stderr
    assert "Traceback" in debug.stderr and "AuthenticationError" in debug.stderr
    assert "Incorrect API key provided" in debug.stderr
    for done in (debug, plain):
        assert "SECRETKEY" not in done.stderr + done.stdout, done.stderr
        assert "Bearer xyz" not in done.stderr + done.stdout, done.stderr
    assert_one_line_error(plain, "AuthenticationError", code=1)
