"""Evaluation leaves a router's own training prompts out by default, for any pair or table."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from prefroute.data.loaders import golden_battles
from prefroute.data.outcome_files import load_outcome_file
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
from prefroute.errors import DataError
from prefroute.evaluate.benchmarks import evaluate_router
from prefroute.router import Router, load_router
from prefroute.routers.knn import KNNRouter

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    table = load_outcomes("gsm8k", data_dir)
    train_rows = np.arange(0, len(table), 2)  # every other question
    battles = golden_battles(table.subset(train_rows), ROUTELLM_STRONG, ROUTELLM_WEAK,
                             strong_name=STRONG, weak_name=WEAK)
    knn = KNNRouter(strong_model=STRONG, weak_model=WEAK, k=20).fit(battles)
    path = tmp_path_factory.mktemp("ckpt") / "knn"
    Router(knn).save_pretrained(path)
    return table, train_rows, knn, path


def test_evaluate_router_drops_training_prompts_by_default(trained, data_dir):
    table, train_rows, knn, path = trained
    train_prompts = {table.prompts[i] for i in train_rows}
    loaded = load_router(path)
    for router in (knn, loaded):
        result = evaluate_router(router, "gsm8k", data_dir, n_bootstrap=0)
        dropped = result.dropped["training_prompts"]
        # every eval prompt equal to a training prompt is gone, and nothing else for that reason
        kept = len(table) - result.n_dropped
        assert result.n_prompts == kept
        expected = sum(p in train_prompts for p in table.prompts)
        assert dropped == pytest.approx(expected, abs=len(table) * 0.02)
        assert dropped >= len(train_prompts) * 0.95
    honest = evaluate_router(knn, "gsm8k", data_dir, n_bootstrap=0).apgr
    leaky = evaluate_router(knn, "gsm8k", data_dir, n_bootstrap=0, decontaminate=False).apgr
    assert leaky > honest  # a kNN remembers its training labels


def test_pair_mismatch_is_reported(trained, data_dir):
    _, _, knn, _ = trained
    result = evaluate_router(knn, "mmlu_pro", data_dir, strong_model="gpt-4o-2024-05-13",
                             weak_model="Mixtral-8x7B-Instruct-v0.1", n_bootstrap=0)
    assert "gpt-4o-2024-05-13" in result.info["pair_mismatch"]
    same = evaluate_router(knn, "gsm8k", data_dir, n_bootstrap=0)
    assert "pair_mismatch" not in same.info


def test_cli_eval_outcomes_file_with_pair_flags(trained, tmp_path, monkeypatch, capsys):
    from trust_helpers import run_cli, run_main

    table, _, _, path = trained
    file = tmp_path / "mine.csv"
    with open(file, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "big", "small"])
        for i in range(300):
            writer.writerow([table.prompts[i], table.column(ROUTELLM_STRONG)[i] > 0,
                             table.column(ROUTELLM_WEAK)[i] > 0])
    args = ["eval", str(path), "--outcomes", str(file), "--strong-model", "big",
            "--weak-model", "small", "--bootstrap", "20"]
    done = run_cli(*args)  # a real process: the warning goes through the CLI's logging
    assert done.returncode == 0, done.stderr
    assert "training_prompts: 150" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "is evaluated on" in line]
    assert len(warnings) == 1 and "'big'" in warnings[0], done.stderr  # once, not 3 times
    code, _, err = run_main(monkeypatch, capsys, *args[:-1], "1000000000")
    assert code == 2 and "--bootstrap" in err and "100,000" in err


def test_outcome_file_errors_name_the_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,a,b\nhello,1,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2.*b|b.*row 2"):
        load_outcome_file(bad)
