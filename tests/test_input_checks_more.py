"""Input checks through the real CLI: ids kept exact or refused with file, row and field;
a BOM never reaches a prompt; empty model names refused; every dropped battle reported
without -v; folders of JSONL / CSV / text prompt files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trust_helpers import assert_one_line_error, run_cli

from prefroute.data import Battles
from prefroute.errors import DataError
from prefroute.router import Router
from prefroute.training import train_router

PAIR = ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
BIG = 9007199254740993  # 2**53 + 1: a float64 would turn it into ...992


@pytest.fixture(scope="module")
def checkpoint(alpaca_battles, tmp_path_factory) -> Path:
    """A length router trained on real AlpacaEval battles (fast to train and to load)."""
    battles = alpaca_battles.take(np.arange(0, len(alpaca_battles), 10))
    predictor = train_router("length", battles, strong_model=PAIR[0], weak_model=PAIR[1])
    path = tmp_path_factory.mktemp("ckpt") / "length"
    Router(predictor, threshold=0.5).save_pretrained(path)
    return path


def _jsonl(path: Path, rows: list[dict], *, prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _score(checkpoint: Path, prompts: Path, out: Path, *extra: str):
    return run_cli("score", str(checkpoint), "--prompts", str(prompts), "--out", str(out),
                   "--workers", "1", *extra)


def _read_out(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---- 1. ids ----------------------------------------------------------------------------
BAD_JSONL_IDS = [
    ([BIG, None], 2, "id is null"),
    ([1, 2.5], 2, "id 2.5 is a number that is not an integer; ids are strings or integers"),
    ([1, 3.0], 2, "id 3.0 is a decimal number"),
    ([1, 12345678901234567890123], 2, "id 12345678901234567890123 does not fit a 64-bit"),
    ([-(2**63) - 1], 1, "does not fit a 64-bit integer"),
    (["a", [1, 2]], 2, "id is a list"),
    (["a", {"k": 1}], 2, "id is an object"),
    ([True], 1, "id true is a boolean"),
    ([""], 1, "id is empty"),
    ([1, "x"], 2, "ids of mixed types: row 1 has an integer, row 2 a string"),
]


@pytest.mark.parametrize(("ids", "row", "words"), BAD_JSONL_IDS)
def test_bad_jsonl_ids_are_refused(checkpoint, tmp_path, ids, row, words):
    rows = [{"id": value, "prompt": f"Explain topic {i} in detail."} for i, value in enumerate(ids)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json: big ints exact
    out = tmp_path / "out.parquet"
    done = _score(checkpoint, source, out, "--id-field", "id")
    assert_one_line_error(done, f"file {source}", f"row {row}", "field 'id'", words)
    assert not out.exists()


def test_mixed_id_types_are_named_across_batches(checkpoint, tmp_path):
    rows = [{"id": i, "prompt": f"Explain topic {i} in detail."} for i in range(7)]
    rows[5]["id"] = "five"
    source = _jsonl(tmp_path / "in.jsonl", rows)
    done = _score(checkpoint, source, tmp_path / "o.jsonl", "--id-field", "id",
                  "--batch-size", "2")
    assert_one_line_error(done, "row 6", "ids of mixed types: row 1 has an integer, row 6 a")


@pytest.mark.parametrize("out_suffix", ["parquet", "jsonl", "csv"])
def test_ids_are_byte_exact_in_every_output(checkpoint, tmp_path, out_suffix):
    ints = [BIG, -(2**63), 2**63 - 1, 0]
    jsonl = tmp_path / "jsonl"  # a folder of two files: the ids of both are one int64 column
    jsonl.mkdir()
    for name, part in (("1.jsonl", ints[:2]), ("2.jsonl", ints[2:])):
        (jsonl / name).write_text("".join(
            json.dumps({"id": v, "prompt": f"Explain topic {v} in detail."}) + "\n"
            for v in part
        ))
    parquet = tmp_path / "parquet"  # int32 ids in one file, uint64 in the next
    parquet.mkdir()
    pq.write_table(pa.table({"id": pa.array([0, -5], pa.int32()),
                             "prompt": ["Explain a.", "Explain b."]}), parquet / "1.parquet")
    pq.write_table(pa.table({"id": pa.array([BIG], pa.uint64()), "prompt": ["Explain c."]}),
                   parquet / "2.parquet")
    texts = tmp_path / "texts.csv"  # CSV ids stay the text they are: "007", "1.50"
    texts.write_text("id,prompt\n007,Explain topic one.\n1.50,Explain topic two.\n")
    cases = [(jsonl, ints), (parquet, [0, -5, BIG]), (texts, ["007", "1.50"])]
    for source, expected in cases:
        out = tmp_path / f"{source.stem}_out.{out_suffix}"
        done = _score(checkpoint, source, out, "--id-field", "id", "--batch-size", "2")
        assert done.returncode == 0, done.stderr
        ids = [r["id"] for r in _read_out(out)]
        assert ids == (expected if out_suffix != "csv" else [str(v) for v in expected])
        if out_suffix == "parquet":
            kind = pa.string() if source is texts else pa.int64()
            assert pq.read_schema(out).field("id").type == kind
        else:
            assert str(expected[0]).encode() in out.read_bytes()


PARQUET_IDS = [
    (pa.array([BIG, None]), 2, "id is null"),
    (pa.array([1.0, 2.0]), 1, "id 1.0 is a decimal number"),
    (pa.array([[1], [2]]), 1, "id is a list"),
    (pa.array([True, False]), 1, "id true is a boolean"),
    (pa.array([1, 2**64 - 1], pa.uint64()), 2, "does not fit a 64-bit integer"),
    (pa.array(["a", None]), 2, "id is null"),
]


@pytest.mark.parametrize(("ids", "row", "words"), PARQUET_IDS)
def test_bad_parquet_id_columns_are_refused(checkpoint, tmp_path, ids, row, words):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids, "prompt": ["Explain one.", "Explain two."]}), source)
    done = _score(checkpoint, source, tmp_path / "o.jsonl", "--id-field", "id")
    assert_one_line_error(done, f"file {source}", f"row {row}", "field 'id'", words)


def test_parquet_ids_exact_and_csv_empty_id_refused(checkpoint, tmp_path):
    source = tmp_path / "in.parquet"
    ids = pa.array([BIG, 7], pa.uint64())
    pq.write_table(pa.table({"id": ids, "prompt": ["Explain one.", "Explain two."]}), source)
    out = tmp_path / "o.jsonl"
    assert _score(checkpoint, source, out, "--id-field", "id").returncode == 0
    assert out.read_bytes().startswith(b'{"id":9007199254740993,')

    empty = tmp_path / "in.csv"
    empty.write_text("id,prompt\na,Explain one.\n,Explain two.\n")
    done = _score(checkpoint, empty, tmp_path / "o2.jsonl", "--id-field", "id")
    assert_one_line_error(done, f"file {empty}", "row 3", "field 'id'", "id is empty")


# ---- 2. a byte-order mark --------------------------------------------------------------
def test_a_bom_never_reaches_the_first_prompt(checkpoint, tmp_path):
    lines = b"Explain recursion with an example.\nWhat is 2+2?\n"
    outs = {}
    for name, data in (("plain.txt", lines), ("bom.txt", b"\xef\xbb\xbf" + lines)):
        out = tmp_path / f"{name}.jsonl"
        source = tmp_path / name
        source.write_bytes(data)
        assert _score(checkpoint, source, out).returncode == 0
        outs[name] = _read_out(out)
    assert outs["bom.txt"] == outs["plain.txt"]
    assert outs["bom.txt"][0]["prompt"] == "Explain recursion with an example."

    rows = [{"id": "r1", "prompt": "Explain recursion with an example."}]
    for name, prefix in (("plain.jsonl", b""), ("bom.jsonl", b"\xef\xbb\xbf")):
        out = tmp_path / f"{name}.out.jsonl"
        done = _score(checkpoint, _jsonl(tmp_path / name, rows, prefix=prefix), out,
                      "--id-field", "id")
        assert done.returncode == 0, done.stderr
        outs[name] = _read_out(out)
    assert outs["bom.jsonl"] == outs["plain.jsonl"]


# ---- 3. empty model names --------------------------------------------------------------
GOOD = {"prompt": "Explain recursion in detail.", "model_a": "x", "model_b": "y",
        "winner": "model_a"}


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize(("field", "name"), [("model_b", ""), ("model_a", "   ")])
def test_train_refuses_empty_model_names(tmp_path, suffix, field, name):
    rows = [dict(GOOD, prompt=f"Explain topic {i} in detail.") for i in range(4)]
    rows[2][field] = name
    path = tmp_path / f"battles.{suffix}"
    if suffix == "jsonl":
        _jsonl(path, rows)
    elif suffix == "csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(GOOD))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "never"
    done = run_cli("train", "--router", "length", "--data", str(path), "--strong-model", "x",
                   "--weak-model", "y", "--out", str(out))
    row = {"jsonl": 3, "csv": 4, "parquet": 3}[suffix]
    assert_one_line_error(done, f"file {path}", f"row {row}", f"field '{field}'",
                          "empty model name")
    assert not out.exists()


def test_bulk_battle_columns_refuse_empty_model_names():
    with pytest.raises(DataError, match="empty model name") as info:
        Battles.from_columns(["Explain recursion.", "Explain sorting."], ["x", "x"],
                             ["y", " "], ["model_a", "tie"], file="f.jsonl",
                             row_numbers=[3, 5])
    assert (info.value.file, info.value.row, info.value.field) == ("f.jsonl", 5, "model_b")


# ---- 4. dropped rows are reported without -v ------------------------------------------
def test_train_reports_every_dropped_row_without_verbose(tmp_path):
    path = tmp_path / "battles.csv"
    path.write_text(
        "prompt,model_a,model_b,winner\n"
        "Explain recursion in detail.,x,y,model_a\n"
        "Explain sorting in detail.,x,x,model_a\n"  # row 3: a self-battle
        "NaN,x,y,model_b\n"  # row 4: too short
        "Explain graphs in detail.,y,x,model_b\n"
        "Explain recursion in detail.,x,y,model_a\n"  # row 6: a duplicate of row 2
        "Explain heaps in detail.,y,y,tie\n"  # row 7: a self-battle
    )
    out = tmp_path / "ckpt"
    done = run_cli("train", "--router", "length", "--data", str(path), "--strong-model", "x",
                   "--weak-model", "y", "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()

    def line_with(text: str) -> str:
        found = [line for line in lines if text in line]
        assert len(found) == 1, done.stderr
        return found[0]

    assert line_with("shorter than 8 characters").endswith(
        f"removed 1 of 6 battles (file {path}, row 4)")
    assert line_with("against itself").endswith(
        f"removed 2 of 5 battles (file {path}, rows 3, 7)")
    assert line_with("duplicate battles").endswith(f"removed 1 of 3 battles (file {path}, row 6)")
    assert "training length on 2 battles" in done.stdout


# ---- 5. folders ------------------------------------------------------------------------
def test_folders_of_jsonl_csv_and_text_are_read_in_name_order(checkpoint, tmp_path):
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    _jsonl(jsonl / "b.jsonl", [{"id": "b1", "prompt": "Explain topic b1."}])
    _jsonl(jsonl / "a.jsonl", [{"id": "a1", "prompt": "Explain topic a1."},
                               {"id": "a2", "prompt": "Explain topic a2."}])
    (jsonl / "_SUCCESS").write_text("")
    (jsonl / ".hidden").write_text("not a prompt file")
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "2.txt").write_text("Explain topic two.\n")
    (texts / "1.txt").write_text("Explain topic one.\n\nExplain topic one again.\n")
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    (csvs / "1.csv").write_text("id,prompt\nc1,Explain topic c1.\n")
    (csvs / "2.csv").write_text("id,prompt\nc2,Explain topic c2.\n")
    cases = [(jsonl, ["a1", "a2", "b1"]), (csvs, ["c1", "c2"]),
             (texts, ["Explain topic one.", "Explain topic one again.", "Explain topic two."])]
    for folder, expected in cases:
        out = tmp_path / f"{folder.name}.jsonl"
        extra = ("--id-field", "id") if folder is not texts else ()
        done = _score(checkpoint, folder, out, *extra)
        assert done.returncode == 0, done.stderr
        key = "prompt" if folder is texts else "id"
        assert [r[key] for r in _read_out(out)] == expected


def test_folder_errors_name_the_file_and_its_own_row(checkpoint, tmp_path):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", [{"prompt": "Explain topic a1."}] * 3)
    (folder / "b.jsonl").write_text('{"prompt": "Explain b1."}\n{"prompt": "  "}\n')
    done = _score(checkpoint, folder, tmp_path / "o.jsonl")
    assert_one_line_error(done, f"file {folder / 'b.jsonl'}", "row 2", "field 'prompt'")

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "prompt": ["Explain a.", "Explain b."]}),
                   parquet / "p1.parquet")
    pq.write_table(pa.table({"id": ["x", "y"], "prompt": ["Explain c.", "Explain d."]}),
                   parquet / "p2.parquet")
    done = _score(checkpoint, parquet, tmp_path / "o.jsonl", "--id-field", "id")
    assert_one_line_error(done, f"file {parquet / 'p2.parquet'}", "row 1", "field 'id'",
                          f"row 1 of {parquet / 'p1.parquet'} has an integer, row 1 a string")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _jsonl(mixed / "a.jsonl", [{"prompt": "Explain a."}])
    (mixed / "b.csv").write_text("prompt\nExplain b.\n")
    done = _score(checkpoint, mixed, tmp_path / "o.jsonl")
    assert_one_line_error(done, f"file {mixed}", "mixes file types", "a.jsonl", "b.csv")

    empty = tmp_path / "empty"
    empty.mkdir()
    done = _score(checkpoint, empty, tmp_path / "o.jsonl")
    assert_one_line_error(done, f"file {empty}", "holds no input files")
    assert not (tmp_path / "o.jsonl").exists()


# Each CSV is (text, row, words of the error); a well-formed line follows the bad one, so a
# reader that swallows the rest of the file into one field would score too few rows instead.
MALFORMED_CSV = [
    ('id,prompt\nq1,Explain a.\nq2,"Explain b.\nq3,Explain c.\n', 3,
     "a quoted field is never closed (the record starting on line 3)"),
    # an odd number of quotes sends the file through the strict reader, which names the
    # first bad record
    ('id,prompt\nq1,"Explain\nacross lines."\nq2,"Explain b."x\nq3,"Explain c.\n', 3,
     "malformed quoting"),
    ('id,prompt,prompt\nq1,Explain a.,b\n', 1, "the header names column 'prompt' more than once"),
    ('id,prompt\nq1,Explain a.,extra\nq2,Explain b.\n', 2, "expected 2 fields, got 3"),
]


@pytest.mark.parametrize(("text", "row", "words"), MALFORMED_CSV)
def test_malformed_csv_is_one_error_naming_its_record(checkpoint, tmp_path, text, row, words):
    source = tmp_path / "in.csv"
    source.write_text(text)
    done = _score(checkpoint, source, tmp_path / "o.jsonl", "--id-field", "id")
    assert_one_line_error(done, f"file {source}", f"row {row}", words)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_quote_inside_an_unquoted_csv_field_is_text(checkpoint, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('id,prompt\nq1,He said "hi\nq2,"Quoted, with ""escaped"" quotes"\n')
    done = _score(checkpoint, source, tmp_path / "o.jsonl", "--id-field", "id")
    assert done.returncode == 0, done.stderr
    assert [(r["id"], r["prompt"]) for r in _read_out(tmp_path / "o.jsonl")] == [
        ("q1", 'He said "hi'), ("q2", 'Quoted, with "escaped" quotes')]
