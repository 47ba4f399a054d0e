"""No command deletes what it did not create or writes over its own inputs: --overwrite
replaces only a folder prefroute wrote (never one holding an input, the current folder or a
user's files), --plot is a .png outside every input, and `augment select` asks before
replacing its outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import test_trust_outputs
from trust_helpers import assert_one_line_error, leftovers, run_cli, run_main, snapshot

from prefroute.io import OUTPUT_MARKER, OutputError, staged_output_dir
from prefroute.router import load_router

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


# the fixtures of test_trust_outputs.py: a small mf checkpoint, a folder of the user's files
checkpoint = test_trust_outputs.checkpoint
user_folder = test_trust_outputs.user_folder


def _prompts(path: Path, data_dir: Path, n: int = 40) -> Path:
    lines = (data_dir / "alpaca_eval" / "judge_battles.jsonl").read_text().splitlines()[:n]
    path.write_text("".join(json.dumps({"prompt": json.loads(x)["prompt"]}) + "\n"
                            for x in lines))
    return path


def _outcomes(path: Path, data_dir: Path, n: int = 60) -> Path:
    """A small correctness CSV cut from the stored GSM8K outcomes."""
    source = data_dir / "routellm_evals" / "gsm8k" / "gsm8k_responses.csv"
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", STRONG, WEAK])
        writer.writerows([r["prompt"], r[STRONG], r[WEAK]] for r in rows)
    return path


def _refused(monkeypatch, capsys, *args: str) -> str:
    """Run the real entry point; it must fail with one clear error line, no traceback."""
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, (args, out, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# 1. calibrate / update --overwrite never delete their inputs --------------------------


def test_calibrate_overwrite_never_deletes_its_prompts(checkpoint, data_dir, tmp_path,
                                                       monkeypatch, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    prompts = _prompts(victim / "cal.jsonl", data_dir)
    before = snapshot(victim)
    error = _refused(monkeypatch, capsys, "calibrate", str(checkpoint), "--prompts",
                     str(prompts), "--strong-rate", "0.3", "--out", str(victim), "--overwrite")
    assert f"--out {victim}" in error and "overlaps the input" in error
    assert str(prompts) in error
    assert snapshot(victim) == before and not leftovers(tmp_path)


def test_update_overwrite_never_deletes_its_data_or_replay(checkpoint, alpaca_battles,
                                                          tmp_path, monkeypatch, capsys):
    for flag in ("--data", "--replay"):
        victim = tmp_path / f"victim{flag}"
        victim.mkdir()
        battles = victim / "battles.jsonl"
        alpaca_battles.take(range(0, 600, 5)).write(battles)
        data = ["--data", str(battles)] if flag == "--data" else [
            "--data", str(tmp_path / "new.jsonl"), "--replay", str(battles)]
        if flag == "--replay":
            alpaca_battles.take(range(1, 600, 5)).write(tmp_path / "new.jsonl")
        before = snapshot(victim)
        error = _refused(monkeypatch, capsys, "update", str(checkpoint), *data, "--epochs",
                         "1", "--no-clean", "--out", str(victim), "--overwrite")
        assert "overlaps the input" in error and str(battles) in error, error
        assert snapshot(victim) == before


# 2. eval --plot: a .png outside every input -------------------------------------------


def test_eval_plot_never_overwrites_an_input(checkpoint, data_dir, tmp_path, monkeypatch,
                                             capsys):
    outcomes = _outcomes(tmp_path / "outcomes.csv", data_dir)
    ckpt = shutil.copytree(checkpoint, tmp_path / "ckpt")
    before, ckpt_before = snapshot(tmp_path), snapshot(ckpt)
    base = ["eval", str(ckpt), "--strong-model", STRONG, "--weak-model", WEAK,
            "--bootstrap", "10", "--no-decontaminate", "--overwrite"]
    error = _refused(monkeypatch, capsys, *base, "--outcomes", str(outcomes),
                     "--plot", str(outcomes))
    assert f"--plot {outcomes} is also an input" in error
    for plot in (ckpt / "config.json", ckpt / "curve.png"):
        error = _refused(monkeypatch, capsys, *base, "--outcomes", str(outcomes),
                         "--plot", str(plot))
        assert f"--plot {plot} lies inside the input {ckpt}" in error
    error = _refused(monkeypatch, capsys, *base, "--outcomes", str(outcomes),
                     "--plot", str(tmp_path / "curve.pdf"))
    assert f"--plot {tmp_path / 'curve.pdf'}" in error and "ending in .png" in error
    as_png = shutil.copy(outcomes, tmp_path / "outcomes.png")  # an input, whatever its name
    error = _refused(monkeypatch, capsys, *base, "--outcomes", str(as_png),
                     "--plot", str(as_png))
    assert f"--plot {as_png} is also an input" in error
    (tmp_path / "outcomes.png").unlink()
    assert snapshot(tmp_path) == before and snapshot(ckpt) == ckpt_before

    curve = tmp_path / "curve.png"
    code, _, err = run_main(monkeypatch, capsys, *base, "--outcomes", str(outcomes),
                            "--plot", str(curve))
    assert code == 0, err
    assert curve.read_bytes().startswith(b"\x89PNG") and snapshot(ckpt) == ckpt_before
    load_router(ckpt)  # still verifies: nothing was added to or changed in the checkpoint


# 3. augment select: --overwrite, two distinct outputs, never an input ------------------


def test_select_asks_before_replacing_and_never_writes_an_input(
    alpaca_battles, data_dir, tmp_path, monkeypatch, capsys
):
    labelled = tmp_path / "labelled.jsonl"
    alpaca_battles.take(range(0, 300, 3)).write(labelled)
    picks, ids = tmp_path / "picks.jsonl", tmp_path / "ids.txt"
    picks.write_text("mine\n")
    ids.write_text("mine too\n")
    pool = tmp_path / "pool.txt"
    pool.write_text("What is 2 + 2?\nName a prime above 10.\nSpell 'cat'.\n")
    base = ["augment", "select", "--table", "gsm8k", "--data-dir", str(data_dir),
            "--budget", "10"]
    before = snapshot(tmp_path)
    error = _refused(monkeypatch, capsys, *base, "--out", str(picks))
    assert f"--out {picks} exists" in error and "--overwrite" in error
    error = _refused(monkeypatch, capsys, *base, "--out", str(tmp_path / "new.jsonl"),
                     "--ids-out", str(ids))
    assert f"--ids-out {ids} exists" in error and "--overwrite" in error
    error = _refused(monkeypatch, capsys, *base, "--out", str(picks), "--ids-out",
                     str(picks), "--overwrite")
    assert f"--ids-out {picks} is also --out" in error
    error = _refused(monkeypatch, capsys, *base, "--labelled", str(labelled), "--out",
                     str(labelled), "--overwrite")
    assert f"--out {labelled} is also an input" in error
    error = _refused(monkeypatch, capsys, "augment", "select", "--pool", str(pool),
                     "--budget", "2", "--out", str(tmp_path / "p.jsonl"), "--ids-out",
                     str(pool), "--overwrite")
    assert f"--ids-out {pool} is also an input" in error
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)

    code, _, err = run_main(monkeypatch, capsys, *base, "--out", str(picks), "--ids-out",
                            str(ids), "--overwrite")
    assert code == 0, err
    rows = [json.loads(line) for line in picks.read_text().splitlines()]
    assert len(rows) == 10 and ids.read_text().split("\n")[:-1] == [r["prompt_id"] for r in rows]


# 5. augment select --pool FILE works end to end ---------------------------------------


def test_select_from_a_real_pool_file(data_dir, tmp_path, monkeypatch, capsys):
    pool = data_dir / "alpaca_eval" / "outputs.jsonl"  # prompt_id + prompt, one row a model
    known = {}
    for line in pool.read_text().splitlines():
        row = json.loads(line)
        known[row["prompt_id"]] = row["prompt"]
    picks, ids = tmp_path / "picks.jsonl", tmp_path / "ids.txt"
    code, out, err = run_main(monkeypatch, capsys, "augment", "select", "--pool", str(pool),
                              "--budget", "30", "--out", str(picks), "--ids-out", str(ids),
                              "--seed", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in picks.read_text().splitlines()]
    assert len(rows) == 30 and len({r["prompt_id"] for r in rows}) == 30
    assert all(known[r["prompt_id"]] == r["prompt"] for r in rows)
    assert ids.read_text().split() == [r["prompt_id"] for r in rows]
    assert f"picked 30 of {len(known)} prompts" in out


# 4. --overwrite replaces only a folder prefroute wrote ----------------------------------


def test_overwrite_never_replaces_a_users_folder(checkpoint, data_dir, user_folder,
                                                 tmp_path, monkeypatch, capsys):
    prompts = _prompts(tmp_path / "prompts.jsonl", data_dir)
    before = snapshot(user_folder)
    error = _refused(monkeypatch, capsys, "calibrate", str(checkpoint), "--prompts",
                     str(prompts), "--strong-rate", "0.5", "--out", str(user_folder),
                     "--overwrite")
    assert f"--out {user_folder} is not a prefroute output" in error
    nest = user_folder / "nest"  # the sweep's case: train ... --out /tmp/x/nest --overwrite
    nest.mkdir()
    (nest / "data.csv").write_text("a,b\n")
    done = run_cli("train", "--router", "mf", "--data", "alpaca_eval", "--strong-model",
                   STRONG, "--weak-model", WEAK, "--out", str(nest), "--overwrite",
                   "--data-dir", str(data_dir))
    assert_one_line_error(done, f"--out {nest}", "not a prefroute output")
    assert "training" not in done.stdout
    assert (user_folder / "notes.txt").read_text() == "irreplaceable"
    assert (nest / "data.csv").read_text() == "a,b\n"
    assert before.items() <= snapshot(user_folder).items() and not leftovers(user_folder)


def test_overwrite_never_replaces_the_folder_holding_the_current_one(
    checkpoint, data_dir, tmp_path, monkeypatch, capsys
):
    prompts = _prompts(tmp_path / "prompts.jsonl", data_dir)
    outer = tmp_path / "outer"
    shutil.copytree(checkpoint, outer)  # a real checkpoint, which --overwrite may replace...
    work = outer / "work"  # ...but not while the user is working inside it
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (outer, work):
        error = _refused(monkeypatch, capsys, "calibrate", str(checkpoint), "--prompts",
                         str(prompts), "--strong-rate", "0.5", "--out", str(target),
                         "--overwrite")
        assert f"--out {target} is" in error and "the current folder" in error
    assert work.is_dir() and snapshot(outer) == snapshot(checkpoint)


def test_overwrite_replaces_a_checkpoint_but_not_files_added_to_it(
    checkpoint, data_dir, tmp_path, monkeypatch, capsys
):
    prompts = _prompts(tmp_path / "prompts.jsonl", data_dir)
    args = ["calibrate", str(checkpoint), "--prompts", str(prompts)]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main(monkeypatch, capsys, *args, "--strong-rate", "0.5", "--out",
                            str(empty))
    assert code == 0, err  # an empty folder is fine, even without --overwrite
    code, _, err = run_main(monkeypatch, capsys, *args, "--strong-rate", "0.3", "--out",
                            str(empty), "--overwrite")
    assert code == 0, err  # a checkpoint prefroute wrote may be replaced
    assert load_router(empty).calibration["target_strong_rate"] == 0.3
    assert not (empty / OUTPUT_MARKER).exists()  # a checkpoint records its files itself

    (empty / "my-eval-notes.md").write_text("mine")
    error = _refused(monkeypatch, capsys, *args, "--strong-rate", "0.4", "--out",
                     str(empty), "--overwrite")
    assert "holds 1 files prefroute did not write (my-eval-notes.md)" in error
    assert (empty / "my-eval-notes.md").read_text() == "mine"
    (empty / "my-eval-notes.md").unlink()  # the checkpoint itself was left as it was
    assert load_router(empty).calibration["target_strong_rate"] == 0.3
    assert not leftovers(tmp_path)


def test_other_folder_outputs_are_marked_and_only_then_replaceable(tmp_path):
    """Folders that are not checkpoints (benchmark results, Ray score parts) list their
    files in a marker; --overwrite replaces them only while they hold nothing else."""
    out = tmp_path / "results"
    with staged_output_dir(out) as stage:
        (stage / "results.md").write_text("table")
        (stage / "plots").mkdir()
        (stage / "plots" / "gsm8k.png").write_bytes(b"png")
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["files"] == ["plots/gsm8k.png", "results.md"]
    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "results.md").write_text("new table")
    assert (out / "results.md").read_text() == "new table"
    (out / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds 1 files prefroute did not write \(mine.txt\)"):
        with staged_output_dir(out, overwrite=True) as stage:
            (stage / "results.md").write_text("newer")
    assert (out / "mine.txt").read_text() == "mine" and not leftovers(tmp_path)
