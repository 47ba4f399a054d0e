"""Bad data gets one clear error naming file, true row and field, in every format; named
golden sources never relabel silently; bad numbers on the command line are refused."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trust_helpers import assert_one_line_error, run_cli

from prefroute.data import Battles, load_source
from prefroute.data.outcome_files import load_outcome_file
from prefroute.data.outcomes import load_outcomes
from prefroute.data.prompts import read_prompts
from prefroute.data.tabular import read_records
from prefroute.errors import DataError, TrainingError
from prefroute.training import load_training_battles, train_router

PAIR = ["--strong-model", "gpt-4-1106-preview", "--weak-model", "mixtral-8x7b-instruct-v0.1"]
GOOD = {"prompt": "Explain recursion.", "model_a": "x", "model_b": "y", "winner": "model_a"}


def _rows(n: int = 5) -> list[dict]:
    return [dict(GOOD, prompt=f"prompt number {i}") for i in range(n)]


def _write(path: Path, rows: list[dict], *, bom: bool = False) -> Path:
    """Rows as JSONL, CSV (optionally with a BOM) or Parquet, by the path's extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        fields = sorted({k for r in rows for k in r})
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        path.write_bytes(("\ufeff" if bom else "").encode() + buffer.getvalue().encode())
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


FORMATS = [("jsonl", False), ("csv", False), ("csv", True), ("parquet", False)]
# (field, bad value, words of the message); CSV carries the values as text
BAD_VALUES = [
    ("weight", float("nan"), "finite"),
    ("weight", float("inf"), "finite"),
    ("weight", 1e308, "must lie in"),
    ("weight", -1.0, "must lie in"),
    ("p_b_wins", float("nan"), "finite"),
    ("p_b_wins", 1e308, "must lie in"),
    ("p_b_wins", 1.5, "must lie in"),
    ("p_b_wins", "abc", "not a number|must be a number"),
]


@pytest.mark.parametrize(("suffix", "bom"), FORMATS)
@pytest.mark.parametrize(("field", "value", "words"), BAD_VALUES)
def test_bad_numbers_name_file_true_row_and_field(tmp_path, suffix, bom, field, value, words):
    rows = _rows()
    for r in rows:  # a consistent column type, so Parquet can hold the bad value
        r[field] = value if isinstance(value, str) else 0.5
    rows[2][field] = value
    path = _write(tmp_path / f"battles.{suffix}", rows, bom=bom)
    with pytest.raises(DataError, match=words) as info:
        Battles.read(path)
    row = {"jsonl": 3, "csv": 4, "parquet": 3}[suffix]  # CSV: the header is row 1
    if isinstance(value, str):
        row = {"jsonl": 1, "csv": 2, "parquet": 1}[suffix]  # the first row already fails
    assert (info.value.file, info.value.row, info.value.field) == (str(path), row, field)


def test_numbers_as_text_only_in_csv(tmp_path):
    rows = [dict(r, p_b_wins="0.25", weight="2") for r in _rows()]
    for suffix in ("jsonl", "parquet"):  # typed formats must hold numbers
        with pytest.raises(DataError, match="must be a number, got the text") as info:
            Battles.read(_write(tmp_path / f"b.{suffix}", rows))
        assert (info.value.row, info.value.field) == (1, "weight")
    battles = Battles.read(_write(tmp_path / "b.csv", rows))  # CSV cells are all text
    assert set(battles.numeric("p_b_wins")) == {0.25} and set(battles.numeric("weight")) == {2.0}


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_booleans_are_not_probabilities(tmp_path, suffix):
    rows = _rows()
    for r in rows:
        r["p_b_wins"] = False
    path = _write(tmp_path / f"b.{suffix}", rows)
    with pytest.raises(DataError, match="boolean") as info:
        Battles.read(path)
    assert (info.value.row, info.value.field) == (1, "p_b_wins")


def test_csv_with_a_bom_reads_like_one_without(tmp_path):
    plain = Battles.read(_write(tmp_path / "a.csv", _rows()))
    bom = Battles.read(_write(tmp_path / "b.csv", _rows(), bom=True))
    assert plain.prompts == bom.prompts == [r["prompt"] for r in _rows()]


def test_non_utf8_and_lone_surrogates_get_the_true_row(tmp_path):
    lines = [json.dumps(r) for r in _rows()]
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(("\n".join(lines[:2]) + "\n\n").encode() + "café\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        Battles.read(jsonl)
    assert (info.value.file, info.value.row) == (str(jsonl), 4)  # the blank line 3 counts

    surrogate = tmp_path / "surrogate.jsonl"
    bad = json.dumps(dict(GOOD, prompt="broken \ud83d text"))  # escaped as \ud83d
    surrogate.write_text("\n".join([lines[0], "", lines[1], bad]) + "\n")
    with pytest.raises(DataError, match="lone surrogate") as info:
        Battles.read(surrogate)
    assert (info.value.row, info.value.field) == (4, "prompt")

    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"prompt,model_a,model_b,winner\nok,x,y,tie\n"
                         + "caf\xe9,x,y,tie\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_records(csv_path)
    assert info.value.row == 3

    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"first\nsecond\n\xff\xfe third\n")
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_prompts(prompts)
    assert info.value.row == 3


def test_bad_outcome_cell_names_its_true_row(tmp_path, data_dir):
    source = data_dir / "routellm_evals" / "gsm8k" / "gsm8k_responses.csv"
    with open(source, encoding="utf-8", newline="") as handle:
        records = list(csv.reader(handle))  # answers span several lines: rows != lines
    header = records[0]
    column = header.index("gpt-4-1106-preview")
    records[5][column] = "inf"
    target = tmp_path / "data" / "routellm_evals" / "gsm8k" / source.name
    target.parent.mkdir(parents=True)
    with open(target, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(records)
    with pytest.raises(DataError, match="expected True/False") as info:
        load_outcomes("gsm8k", tmp_path / "data")
    assert (info.value.file, info.value.row, info.value.field) == (
        str(target), 6, "gpt-4-1106-preview"
    )


def test_an_unclosed_csv_quote_is_an_error_in_battles_and_outcomes(tmp_path):
    # Python's lenient csv reader would read the rest of the file into the open field
    battles = tmp_path / "battles.csv"
    battles.write_text("prompt,model_a,model_b,winner\nExplain one.,x,y,model_a\n"
                       '"Explain two.,x,y,model_b\nExplain three.,x,y,tie\n')
    with pytest.raises(DataError, match="a quoted field is never closed") as info:
        read_records(battles)
    assert (info.value.file, info.value.row) == (str(battles), 3)
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text('prompt,strong,weak\nq1,1,0\nq2,"1,1\nq3,0,1\n')
    with pytest.raises(DataError, match="never closed") as info:
        load_outcome_file(outcomes)
    assert (info.value.file, info.value.row) == (str(outcomes), 3)
    outcomes.write_text("prompt,strong,weak\n")  # was "data_dir is needed to load benchmark None"
    with pytest.raises(DataError, match="no rows"):
        load_outcome_file(outcomes)


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path):
    source = tmp_path / "blank_lines.csv"
    source.write_text("\nprompt,model_a,model_b,winner\n\nExplain one.,x,y,model_a\n"
                      '"Explain\ntwo.",x,y,model_b\nExplain three.,x,y,tie\n')
    records = read_records(source)
    assert [r["prompt"] for r in records] == ["Explain one.", "Explain\ntwo.", "Explain three."]
    assert records.row_numbers == [4, 5, 6]


def test_golden_uses_the_requested_pairs_own_columns(data_dir):
    table = load_outcomes("routerbench", data_dir)
    strong, weak = "claude-v2", "mistralai/mistral-7b-chat"
    battles = load_training_battles(
        ["golden:routerbench"], data_dir, strong_model=strong, weak_model=weak, clean=False
    )
    s, w = table.column(strong), table.column(weak)
    known = ~(np.isnan(s) | np.isnan(w))
    expected = np.where(s > w, "model_a", np.where(s < w, "model_b", "tie"))[known]
    assert battles.column("winner") == list(expected)
    assert set(battles.column("model_a")) == {"claude-v2"}

    with pytest.raises(DataError) as info:  # MMLU-Pro has no gpt-4-1106-preview column
        load_training_battles(["golden:mmlu_pro"], data_dir, clean=False)
    message = str(info.value)
    assert "gpt-4-1106-preview" in message and "Mixtral-8x7B-Instruct-v0.1" in message
    assert "golden:mmlu_pro@STRONG,WEAK" in message

    mmlu_pro = load_outcomes("mmlu_pro", data_dir)
    stand_in = "golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1"
    relabelled = load_training_battles([stand_in], data_dir, clean=False)
    direct = load_source("golden:mmlu_pro", data_dir, golden_pair=(
        "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"))
    assert relabelled.column("winner") == direct.column("winner")
    assert set(relabelled.column("model_a")) == {"gpt-4-1106-preview"}
    assert len(mmlu_pro.models) > 2


def test_cli_golden_pair_not_in_table_and_bad_batch_size(tmp_path, data_dir):
    out = tmp_path / "never"
    done = run_cli("train", "--router", "mf", "--data", "golden:mmlu_pro", *PAIR,
                   "--out", str(out), "--data-dir", str(data_dir))
    assert_one_line_error(done, "golden:mmlu_pro", "gpt-4-1106-preview", "it has [")
    assert not out.exists()
    done = run_cli("train", "--router", "mf", "--data", "alpaca_eval", *PAIR, "--batch-size",
                   "0", "--out", str(out), "--data-dir", str(data_dir))
    assert_one_line_error(done, "--batch-size", ">= 1", "Got 0")
    assert not out.exists()


def test_cli_bad_row_in_parquet_is_one_line(tmp_path):
    rows = _rows(40)
    for r in rows:
        r["weight"] = 1.0
    rows[17]["weight"] = float("inf")
    data = _write(tmp_path / "battles.parquet", rows)
    out = tmp_path / "out"
    done = run_cli("train", "--router", "mf", "--data", str(data), "--strong-model", "x",
                   "--weak-model", "y", "--out", str(out))
    assert_one_line_error(done, str(data), "row 18", "field 'weight'")
    assert not out.exists()


def test_diverged_training_fails_loudly_and_saves_nothing(alpaca_battles, tmp_path):
    battles = alpaca_battles.take(range(0, len(alpaca_battles), 50))
    with pytest.raises(TrainingError, match="NaN or infinite"):
        train_router("mf", battles, epochs=1, lr=1e30, progress=False)
