"""No command destroys or half-writes: --out refuses folders it did not make (unless
--overwrite), writing a checkpoint onto itself is refused, outputs are checked before any
work and renamed into place; the judge survives any answer; any error is one line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from trust_helpers import (
    ScriptedChatServer,
    assert_one_line_error,
    chat_body,
    leftovers,
    run_cli,
    run_main,
    snapshot,
)

from data_aug.endpoints import ChatEndpoint, EndpointConfig, RetryPolicy
from data_aug.journal import read_journal
from prefroute.router import Router, load_router
from prefroute.training import train_router

PAIR = ["--strong-model", "gpt-4-1106-preview", "--weak-model", "mixtral-8x7b-instruct-v0.1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, alpaca_battles) -> Path:
    predictor = train_router(
        "mf", alpaca_battles.take(range(0, len(alpaca_battles), 10)), epochs=1, progress=False
    )
    out = tmp_path_factory.mktemp("outputs") / "mf"
    Router(predictor, 0.5).save_pretrained(out)
    return out


@pytest.fixture()
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "my-work"
    folder.mkdir()
    (folder / "notes.txt").write_text("irreplaceable")
    return folder


@pytest.fixture()
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("Prove that sqrt(2) is irrational.\nSay hi\nWrite a sonnet about rain.\n")
    return path


def test_train_refuses_a_non_empty_out_before_loading_anything(user_folder, data_dir):
    before = snapshot(user_folder)
    done = run_cli("train", "--router", "mf", "--data", "alpaca_eval", *PAIR,
                   "--out", str(user_folder), "--data-dir", str(data_dir))
    assert_one_line_error(done, f"--out {user_folder}", "not empty", "--overwrite")
    assert "training" not in done.stdout  # refused before the data was even read
    assert snapshot(user_folder) == before and not leftovers(user_folder.parent)


def test_calibrate_out_never_deletes_and_never_writes_onto_itself(
    checkpoint, user_folder, prompts, tmp_path, monkeypatch, capsys
):
    before, ckpt_before = snapshot(user_folder), snapshot(checkpoint)
    args = ["calibrate", str(checkpoint), "--prompts", str(prompts), "--strong-rate", "0.5"]
    code, _, err = run_main(monkeypatch, capsys, *args, "--out", str(user_folder))
    assert code == 2 and "not empty" in err and "Traceback" not in err
    assert snapshot(user_folder) == before  # calibrate used to rmtree this folder

    for target in (checkpoint, checkpoint / "sub"):  # onto itself, or inside itself
        code, _, err = run_main(monkeypatch, capsys, *args, "--out", str(target), "--overwrite")
        assert code == 2 and "overlaps the input" in err
    assert snapshot(checkpoint) == ckpt_before

    copy = tmp_path / "calibrated"
    code, out, err = run_main(monkeypatch, capsys, *args, "--out", str(copy))
    assert code == 0, err
    assert load_router(copy).calibration["target_strong_rate"] == 0.5
    # --overwrite replaces what prefroute wrote, never a folder of the user's files
    code, _, err = run_main(monkeypatch, capsys, *args, "--out", str(user_folder), "--overwrite")
    assert code == 2 and "not a prefroute output" in err and snapshot(user_folder) == before
    code, _, err = run_main(monkeypatch, capsys, *args, "--out", str(copy), "--overwrite")
    assert code == 0, err
    assert snapshot(checkpoint) == ckpt_before and not leftovers(tmp_path)


def test_other_writers_check_their_outputs_first(
    checkpoint, user_folder, tmp_path, data_dir, monkeypatch, capsys
):
    existing = tmp_path / "battles.jsonl"
    existing.write_text("mine\n")
    cases = [
        ["augment", "golden", "--table", "gsm8k", "--strong", "gpt-4-1106-preview",
         "--weak", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--out", str(existing),
         "--data-dir", str(data_dir)],
        ["multi", "train", "--table", "routerbench", "--router", "knn", "--out",
         str(user_folder), "--data-dir", str(data_dir)],
        ["benchmark", "--out", str(user_folder), "--data-dir", str(data_dir)],
        ["eval", str(checkpoint), "--benchmark", "gsm8k", "--plot", str(existing),
         "--data-dir", str(data_dir)],
    ]
    before = snapshot(tmp_path)
    for args in cases:
        code, out, err = run_main(monkeypatch, capsys, *args)
        assert code == 2, (args, out, err)
        assert "--overwrite" in err and "Traceback" not in err, err
        assert "training" not in out
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)

    code, _, err = run_main(monkeypatch, capsys, *cases[0][:-2], "--data-dir", str(data_dir),
                            "--overwrite")
    assert code == 0, err
    assert existing.read_text().startswith("{") and not leftovers(tmp_path)


def test_unexpected_errors_are_one_line_with_debug_for_the_traceback(
    checkpoint, tmp_path, monkeypatch, capsys
):
    bad_prompts = tmp_path / "prompts.jsonl"
    bad_prompts.write_text('{"prompt": ["a", "list"]}\n')
    args = ["calibrate", str(checkpoint), "--prompts", str(bad_prompts), "--strong-rate", "0.5"]
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "row 1, field 'prompt'" in err and "Traceback" not in err
    done = run_cli("--debug", *args)
    assert done.returncode != 0 and "Traceback" in done.stderr


MALFORMED = [
    (b"<html>502 bad gateway</html>", "text/html"),
    (b"not json at all", "application/json"),
    (b"[1, 2]", "application/json"),
    (json.dumps({"choices": "oops"}).encode(), "application/json"),
    (chat_body(content=7), "application/json"),
    (chat_body(usage=None), "application/json"),
    (chat_body(usage={"prompt_tokens": -5, "completion_tokens": 2}), "application/json"),
    (chat_body(usage={"prompt_tokens": "ten", "completion_tokens": 2}), "application/json"),
]


def test_every_malformed_200_is_a_retried_attempt():
    script = [*MALFORMED, (chat_body("[[B]]"), "application/json")]
    with ScriptedChatServer(lambda n: script[n]) as server:
        config = EndpointConfig(model="judge-m", base_url=server.base_url, timeout_s=5)
        errors: list[tuple[str, int]] = []

        async def call():
            endpoint = ChatEndpoint(config, RetryPolicy(len(script), 0.0, 0.0),
                                    semaphore=asyncio.Semaphore(1))
            try:
                return await endpoint.chat([{"role": "user", "content": "judge this"}],
                                           on_error=lambda e, a: errors.append((e, a)))
            finally:
                await endpoint.close()

        result = asyncio.run(call())
    assert result.content == "[[B]]" and result.attempts == len(script)
    assert (result.prompt_tokens, result.completion_tokens) == (10, 2)
    assert [a for _, a in errors] == list(range(1, len(MALFORMED) + 1))
    assert all(e.startswith("malformed answer") for e, _ in errors)
    assert any("negative" in e for e, _ in errors) and any("missing" in e for e, _ in errors)


def test_a_run_where_every_item_fails_exits_non_zero(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "judged.jsonl"
    negative = (chat_body(usage={"prompt_tokens": 3, "completion_tokens": -100}),
                "application/json")
    with ScriptedChatServer(lambda n: negative) as judge:
        code, stdout, err = run_main(
            monkeypatch, capsys, "augment", "judge",
            "--outputs", str(data_dir / "alpaca_eval" / "outputs.jsonl"),
            "--strong-name", "gpt4_1106_preview", "--weak-name",
            "Mixtral-8x7B-Instruct-v0.1_concise", "--judge-model", "judge-m",
            "--judge-base-url", judge.base_url, "--out", str(out), "--limit", "3",
            "--max-attempts", "2", "--backoff", "0", "--no-progress",
        )
    assert code == 2, (stdout, err)
    assert "every prompt failed" in err and "3 prompts failed" in err and "Traceback" not in err
    assert not out.exists() and not leftovers(tmp_path)
    state = read_journal(tmp_path / "judged.jsonl.journal.jsonl")
    assert len(state.finished) == 3
    assert all("negative" in e["error"] for e in state.errors)
    assert len(state.errors) == 3 * 2 * 2  # items x both answer orders x --max-attempts


def test_judge_help_documents_the_verdict_format(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "augment", "judge", "--help")
    text = " ".join(out.split())
    assert code == 0 and "[[A]]" in text and "[[B]]" in text and "[[C]]" in text
    assert "usage.prompt_tokens" in text


def test_outputs_get_the_permissions_of_a_plain_write(checkpoint, tmp_path):
    """Atomic writes go through private temp files (0600 / 0700); what lands must be readable
    as if written in place, or a shared checkpoint breaks for the rest of the team."""
    import os

    from prefroute.io import atomic_write_text, current_umask

    umask = current_umask()
    assert (os.stat(atomic_write_text(tmp_path / "table.md", "x")).st_mode & 0o777) == (
        0o666 & ~umask)
    folders = [checkpoint, *(p for p in checkpoint.rglob("*") if p.is_dir())]
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    assert files
    for folder in folders:
        assert (folder.stat().st_mode & 0o777) == 0o777 & ~umask, folder
    for file in files:
        assert (file.stat().st_mode & 0o777) == 0o666 & ~umask, file
