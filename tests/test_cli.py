"""Every `prefroute` command end to end on the real data, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prefroute.cli.main import app
from prefroute.router import load_router

PAIR = ["--strong-model", "gpt-4-1106-preview", "--weak-model", "mixtral-8x7b-instruct-v0.1"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = (data_dir / "alpaca_eval" / "judge_battles.jsonl").read_text().splitlines()[:400]
    path.write_text(
        "\n".join(json.dumps({"prompt": json.loads(x)["prompt"]}) for x in lines) + "\n"
    )
    return path


@pytest.fixture(scope="module")
def mf_checkpoint(runner, tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("ckpt") / "mf"
    result = runner.invoke(
        app,
        [
            "train",
            "--router",
            "mf",
            "--data",
            "alpaca_eval",
            "--data",
            "golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1",
            "--source-weight",
            "golden=30",
            *PAIR,
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--params",
            '{"epochs": 3, "progress": false}',
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_loadable_checkpoint(mf_checkpoint):
    config = json.loads((mf_checkpoint / "config.json").read_text())
    assert config["type"] == "mf"
    assert config["router"]["training"]["sources"] == [
        "alpaca_eval", "golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1"
    ]
    router = load_router(mf_checkpoint)
    assert router.strong_model == "gpt-4-1106-preview"


def test_calibrate_then_score(runner, mf_checkpoint, prompts_file, tmp_path):
    calibrated = tmp_path / "calibrated"
    result = runner.invoke(
        app,
        [
            "calibrate",
            str(mf_checkpoint),
            "--prompts",
            str(prompts_file),
            "--strong-rate",
            "0.3",
            "--out",
            str(calibrated),
        ],
    )
    assert result.exit_code == 0, result.output
    router = load_router(calibrated)
    assert router.calibration["target_strong_rate"] == 0.3
    scores = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app, ["score", str(calibrated), "--prompts", str(prompts_file), "--out", str(scores)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in scores.read_text().splitlines()]
    inputs = [json.loads(x)["prompt"] for x in prompts_file.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == inputs  # input order kept
    strong = [r["routed_to"] == "gpt-4-1106-preview" for r in rows]
    assert abs(sum(strong) / len(rows) - 0.3) <= 0.01
    budget = runner.invoke(
        app,
        [
            "calibrate",
            str(calibrated),
            "--prompts",
            str(prompts_file),
            "--budget-fraction",
            "0.5",
            "--strong-price-per-call",
            "0.01",
            "--weak-price-per-call",
            "0.001",
        ],
    )
    assert budget.exit_code == 0, budget.output
    assert load_router(calibrated).calibration["method"] == "budget"


def test_eval_json(runner, mf_checkpoint, data_dir):
    result = runner.invoke(
        app,
        [
            "eval",
            str(mf_checkpoint),
            "--benchmark",
            "mmlu",
            "--data-dir",
            str(data_dir),
            "--json",
            "--bootstrap",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["benchmark"] == "mmlu"
    # MMLU-Pro holds thousands of MMLU questions: eval drops those near-copies of the
    # checkpoint's recorded training prompts
    assert report["dropped"]["embedding_contaminated"] >= 1000
    assert 0.0 <= report["router"]["apgr"] <= 1.5


def test_benchmark_main_job(runner, tmp_path, data_dir):
    result = runner.invoke(
        app,
        [
            "benchmark",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
            "--router",
            "random",
            "--router",
            "sw_bt",
            "--bootstrap",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sw_bt" / "config.json").exists()
    for bench in ("mt-bench", "mmlu", "gsm8k"):
        assert (tmp_path / f"{bench}.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert set(summary["routers"]) == {"random", "sw_bt"}
    assert "| mmlu | sw_bt |" in (tmp_path / "results.md").read_text()


def test_train_bert_with_training_flags(runner, tmp_path, data_dir, prompts_file):
    out = tmp_path / "bert"
    result = runner.invoke(
        app,
        [
            "train",
            "--router",
            "bert",
            "--data",
            "alpaca_eval",
            *PAIR,
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-train-battles",
            "40",
            "--params",
            '{"max_length": 64, "progress": false}',
        ],
    )
    assert result.exit_code == 0, result.output
    probs = load_router(out).strong_win_prob(["Explain recursion.", "What is 2+2?"])
    assert ((probs >= 0) & (probs <= 1)).all()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, prompts_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a fine prompt", "model_a": "x", "model_b": "y", "winner": "draw"}\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefroute.cli.main",
            "train",
            "--router",
            "mf",
            "--data",
            str(bad),
            *PAIR,
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "row 1, field 'winner'" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefroute.cli.main",
            "score",
            str(tmp_path / "missing"),
            "--prompts",
            str(prompts_file),
            "--out",
            str(tmp_path / "s.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.parametrize("weight", ["nan", "inf", "-1"])
def test_train_refuses_a_source_weight_that_is_not_a_finite_non_negative_number(
    monkeypatch, capsys, tmp_path, data_dir, weight
):
    from trust_helpers import run_main

    code, _, err = run_main(
        monkeypatch, capsys, "train", "--router", "length", "--data", "alpaca_eval",
        "--source-weight", f"alpaca={weight}", *PAIR, "--out", str(tmp_path / "x"),
        "--data-dir", str(data_dir))
    assert code == 2 and "source weight for 'alpaca'" in err, err
    assert "Traceback" not in err and not (tmp_path / "x").exists()
