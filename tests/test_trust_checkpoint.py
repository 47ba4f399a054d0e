"""A checkpoint is data: whatever its files say, loading it opens no socket it names, reads
no environment variable it names, touches no path outside its folder, and refuses
tampered, non-finite, linked, FIFO, huge or deeply nested content with one clear error."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from trust_helpers import (
    EmbeddingServer,
    RecordingEnviron,
    assert_one_line_error,
    copy_checkpoint,
    edit_config,
    run_cli,
    snapshot,
)

from prefroute.checkpoint import MAX_CONFIG_BYTES, file_digests
from prefroute.errors import CheckpointError
from prefroute.router import Router, load_router
from prefroute.training import train_router

SECRET_VAR = "PREFROUTE_TRUST_TEST_STOLEN_SECRET"
EMBED_DIM = 256  # the wordllama vectors the checkpoint was trained on


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, alpaca_battles) -> Path:
    """A real mf router trained on every 10th AlpacaEval battle."""
    battles = alpaca_battles.take(range(0, len(alpaca_battles), 10))
    predictor = train_router("mf", battles, epochs=1, progress=False)
    out = tmp_path_factory.mktemp("trust") / "mf"
    Router(predictor, 0.5).save_pretrained(out)
    return out


def _openai_spec(base_url: str) -> dict:
    return {
        "name": "openai",
        "params": {
            "model": "text-embedding-3-small",
            "base_url": base_url,
            "api_key_env": SECRET_VAR,
            "batch_size": 64,
            "max_retries": 0,
            "timeout": 10.0,
            "dimensions": EMBED_DIM,
            "initial_backoff": 0.0,
        },
    }


def _point_embedder_at(folder: Path, base_url: str) -> None:
    def edit(config: dict) -> None:
        config["params"]["embedder"] = _openai_spec(base_url)
        config["state"]["embedder"] = _openai_spec(base_url)

    edit_config(folder, edit)


@pytest.fixture()
def watched(monkeypatch):
    """Record every socket connect and every environment lookup of this process."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    environ = RecordingEnviron(os.environ)
    environ[SECRET_VAR] = "sk-stolen-if-you-see-this"
    environ["OPENAI_API_KEY"] = "sk-the-users-own-key"
    monkeypatch.setattr(os, "environ", environ)
    return attempts, environ


def test_tampered_endpoint_opens_no_socket_and_reads_no_env(checkpoint, tmp_path, watched):
    attempts, environ = watched
    with EmbeddingServer(EMBED_DIM) as evil, EmbeddingServer(EMBED_DIM) as trusted:
        folder = copy_checkpoint(checkpoint, tmp_path / "tampered")
        _point_embedder_at(folder, evil.base_url)

        # the endpoint is the author's choice, not ours: refused, naming the field
        with pytest.raises(CheckpointError, match=r"config\.json: .*base_url.*may not choose"):
            load_router(folder)

        # with the user's own endpoint it loads and predicts; the author's server sees nothing
        router = load_router(folder, embedder_base_url=trusted.base_url)
        probs = router.strong_win_prob(["Prove that sqrt(2) is irrational.", "Say hi"])
        assert ((probs >= 0) & (probs <= 1)).all()
        assert evil.connections == 0 and not evil.requests
        assert not [a for a in attempts if isinstance(a, tuple) and a[1] == evil.port]
        assert [r["authorization"] for r in trusted.requests] == [
            "Bearer sk-the-users-own-key"
        ] * len(trusted.requests)
        assert trusted.requests
        assert SECRET_VAR not in environ.read


def test_trusting_the_author_is_explicit(checkpoint, tmp_path, watched):
    _, environ = watched
    with EmbeddingServer(EMBED_DIM) as author:
        folder = copy_checkpoint(checkpoint, tmp_path / "trusted")
        _point_embedder_at(folder, author.base_url)
        router = load_router(folder, trust_checkpoint_endpoints=True)
        router.strong_win_prob(["hello"])
        assert author.requests[0]["authorization"] == "Bearer sk-stolen-if-you-see-this"
        assert SECRET_VAR in environ.read


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("state", "index_file", "/etc/passwd", "outside the checkpoint"),
        ("state", "index_file", "../../outside.index", "outside the checkpoint"),
        ("state", "vocab_path", "../x.json", "outside the checkpoint"),
        ("params", "backbone", "/etc", "neither a bundled model nor an existing folder inside"),
        ("params", "backbone", "someorg/downloaded-model", "neither a bundled model"),
        ("state", "proxy_url", "http://127.0.0.1:9/", "names a network address"),
        ("state", "token_env", "AWS_SECRET_ACCESS_KEY", "environment variable"),
    ],
)
def test_config_may_not_name_paths_urls_or_env(checkpoint, tmp_path, where, key, value, message):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    edit_config(folder, lambda c: c[where].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=message) as info:
        load_router(folder)
    assert f"{folder / 'config.json'}" in str(info.value) and key in str(info.value)


def test_nested_embedder_model_path_outside_is_refused(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    spec = {"name": "minilm", "params": {"model_path": str(tmp_path)}}
    edit_config(folder, lambda c: c["state"].__setitem__("embedder", spec))
    with pytest.raises(CheckpointError, match="state.embedder.params.model_path"):
        load_router(folder)


def test_changed_tensor_file_fails_its_sha256(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["w"] = tensors["w"] + 1.0
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 does not match"):
        load_router(folder)


def test_non_finite_tensor_is_refused_even_with_a_matching_sha256(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["W"][0, 0] = np.nan
    save_file(tensors, str(folder / "model.safetensors"))
    edit_config(folder, lambda c: c.__setitem__("files", file_digests(folder)))
    with pytest.raises(CheckpointError, match="tensor 'W' holds NaN or infinite"):
        load_router(folder)


def test_extra_or_missing_files_and_links_are_refused(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "extra")
    (folder / "surprise.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not recorded \['surprise.bin'\]"):
        load_router(folder)
    folder = copy_checkpoint(checkpoint, tmp_path / "link")
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="link or special file"):
        load_router(folder)
    folder = copy_checkpoint(checkpoint, tmp_path / "nochecksums")
    edit_config(folder, lambda c: c.pop("files"))
    with pytest.raises(CheckpointError, match="'files'.*missing"):
        load_router(folder)


def test_fifo_huge_and_deep_configs_are_clear_errors(checkpoint, tmp_path):
    fifo = copy_checkpoint(checkpoint, tmp_path / "fifo")
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")  # a plain open() would block here forever
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_router(fifo)
    huge = copy_checkpoint(checkpoint, tmp_path / "huge")
    with open(huge / "config.json", "r+b") as handle:  # sparse: no disk used
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(CheckpointError, match="a checkpoint config is at most"):
        load_router(huge)
    deep = copy_checkpoint(checkpoint, tmp_path / "deep")
    (deep / "config.json").write_text('{"type": "mf", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested more than"):
        load_router(deep)


def test_bad_threshold_in_router_section(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    edit_config(folder, lambda c: c["router"].__setitem__("threshold", float("nan")))
    with pytest.raises(CheckpointError, match=r"router\.threshold must be a number in \[0, 1\]"):
        load_router(folder)


@pytest.mark.parametrize("value", [["mf"], {"name": "mf"}, 3, None])
def test_a_router_type_that_is_not_a_name_is_refused(checkpoint, tmp_path, value):
    folder = copy_checkpoint(checkpoint, tmp_path / "c")
    edit_config(folder, lambda c: c.__setitem__("type", value))
    # was TypeError: unhashable type, exit code 1
    with pytest.raises(CheckpointError, match="'type' must be a router name"):
        load_router(folder)


def test_cli_refuses_a_tampered_checkpoint_in_one_line(checkpoint, tmp_path, data_dir):
    folder = copy_checkpoint(checkpoint, tmp_path / "tampered")
    _point_embedder_at(folder, "http://127.0.0.1:9/v1")
    before = snapshot(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\nhow are you\n")
    done = run_cli("calibrate", str(folder), "--prompts", str(prompts), "--strong-rate", "0.5",
                   env={SECRET_VAR: "sk-stolen"})
    assert_one_line_error(done, "config.json", "base_url")
    assert snapshot(folder) == before


def test_save_is_atomic_and_replaces_only_checkpoints(checkpoint, tmp_path):
    router = load_router(checkpoint)
    user_folder = tmp_path / "notes"
    user_folder.mkdir()
    (user_folder / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="exists and is not empty"):
        router.save_pretrained(user_folder)
    assert (user_folder / "thesis.tex").read_text() == "years of work"

    target = tmp_path / "ckpt"
    router.save_pretrained(target)
    router.save_pretrained(target)  # an earlier checkpoint may be replaced
    before = snapshot(target)

    def boom(directory: Path) -> None:
        (directory / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    router.predictor._save_files = boom
    with pytest.raises(RuntimeError, match="disk full"):
        router.save_pretrained(target)
    assert snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert json.loads((target / "config.json").read_text())["files"]


def test_multi_router_checkpoints_follow_the_same_rules(
    tmp_path, data_dir, monkeypatch, capsys, watched
):
    from trust_helpers import run_main

    from prefroute.multi.base import load_multi_router

    attempts, environ = watched
    out = tmp_path / "knn"
    code, _, err = run_main(monkeypatch, capsys, "multi", "train", "--table", "routerbench",
                            "--router", "knn", "--out", str(out), "--data-dir", str(data_dir))
    assert code == 0, err
    assert "split.json" in " ".join(json.loads((out / "config.json").read_text())["files"])
    assert load_multi_router(out).models_  # the split file is recorded, so this loads

    with EmbeddingServer(EMBED_DIM) as evil:
        tampered = copy_checkpoint(out, tmp_path / "tampered")
        edit_config(tampered, lambda c: c["state"].__setitem__(
            "embedder_spec", _openai_spec(evil.base_url)))
        with pytest.raises(CheckpointError, match=r"embedder_spec\.params\.base_url"):
            load_multi_router(tampered)
        before = snapshot(tampered)
        code, _, err = run_main(monkeypatch, capsys, "multi", "eval", str(tampered), "--table",
                                "routerbench", "--data-dir", str(data_dir))
        assert code == 2 and "config.json" in err and "Traceback" not in err
        assert evil.connections == 0 and snapshot(tampered) == before
    assert SECRET_VAR not in environ.read
    assert not [a for a in attempts if isinstance(a, tuple) and a[0] == "127.0.0.1"]
