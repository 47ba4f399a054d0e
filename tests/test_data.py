"""The data layer on the real reference data: complete loads, schemas, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefroute.data import (
    Battles,
    ModelAliases,
    apply_aliases,
    clean_battles,
    decontaminate,
    golden_battles,
    load_arena,
    load_contaminated_prompts,
    load_outcomes,
    load_source,
)
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK
from prefroute.data.prompts import read_prompts
from prefroute.errors import DataError


# ---- every data set loads completely -------------------------------------------------
def test_alpaca_eval_judge_battles_load_completely(data_dir):
    b = load_source("alpaca_eval", data_dir)
    assert len(b) == 36_700
    assert len(set(b.prompts)) == 644
    assert set(b.column("model_a")) == {"gpt4_1106_preview"}
    assert len(set(b.column("model_b"))) == 57
    p = b.numeric("p_b_wins")
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    # the hard winner agrees with the soft label
    winner = np.array(b.column("winner"))
    assert ((p > 0.5) == (winner == "model_b")).mean() > 0.99


@pytest.mark.parametrize("name,rows", [("mt_bench_human", 1751), ("mt_bench_gpt4", 1240)])
def test_mt_bench_votes_load_completely(data_dir, name, rows):
    b = load_source(name, data_dir)
    assert len(b) == rows
    assert b.models() == sorted(
        ["gpt-4", "claude-v1", "gpt-3.5-turbo", "vicuna-13b-v1.2", "alpaca-13b", "llama-13b"]
    )
    assert set(b.column("winner")) <= {"model_a", "model_b", "tie"}


def test_outcome_tables_load_completely(data_dir):
    mmlu = load_outcomes("mmlu", data_dir)
    assert len(mmlu) == 14_042 and len(set(mmlu.meta["subject"])) == 57
    assert mmlu.column(ROUTELLM_WEAK).mean() == pytest.approx(0.681, abs=5e-4)
    assert mmlu.column(ROUTELLM_STRONG).mean() == pytest.approx(0.806, abs=5e-4)
    gsm8k = load_outcomes("gsm8k", data_dir)
    assert len(gsm8k) == 1_319
    assert gsm8k.column(ROUTELLM_WEAK).mean() == pytest.approx(0.638, abs=5e-4)
    assert gsm8k.column(ROUTELLM_STRONG).mean() == pytest.approx(0.857, abs=5e-4)
    mt = load_outcomes("mt-bench", data_dir)
    assert len(mt) == 80
    assert mt.column(ROUTELLM_WEAK).mean() == pytest.approx(8.34, abs=0.01)
    assert mt.column(ROUTELLM_STRONG).mean() == pytest.approx(9.23, abs=0.01)
    pro = load_outcomes("mmlu_pro", data_dir)
    assert len(pro) == 9_626 and len(pro.models) == 30
    assert np.isnan(pro.scores).any()  # empty cells are "no result", not wrong
    rb = load_outcomes("routerbench", data_dir)
    assert len(rb) == 2_544 and len(rb.models) == 11
    assert rb.costs is not None and (np.nan_to_num(rb.costs) >= 0).all()
    from collections import Counter

    assert Counter(rb.meta["eval_name"]) == {"arc-challenge": 1188, "winogrande": 1014, "mbpp": 342}


def test_contaminated_prompt_lists(data_dir):
    assert len(load_contaminated_prompts(data_dir, "gsm8k")) == 12
    assert len(load_contaminated_prompts(data_dir, "mmlu")) == 5
    mmlu = load_outcomes("mmlu", data_dir)
    assert load_contaminated_prompts(data_dir, "mmlu") <= set(mmlu.prompts)


def test_golden_battles_mmlu_pro_gpt4o_vs_mixtral(data_dir):
    pro = load_outcomes("mmlu_pro", data_dir)
    strong, weak = "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"
    b = golden_battles(pro, strong, weak)
    s, w = pro.column(strong), pro.column(weak)
    both = ~np.isnan(s) & ~np.isnan(w)
    assert len(b) == int(both.sum())
    winners = np.array(b.column("winner"))
    assert (winners == "model_a").sum() == int(((s == 1) & (w == 0)).sum())
    assert (winners == "model_b").sum() == int(((s == 0) & (w == 1)).sum())
    assert (winners == "tie").sum() == int(((s == w) & both).sum())
    assert set(b.column("model_a")) == {strong}
    dropped = golden_battles(pro, strong, weak, ties="drop")
    assert len(dropped) == len(b) - (winners == "tie").sum()
    renamed = load_source("golden:mmlu_pro", data_dir, golden_as=("strong-x", "weak-y"))
    assert renamed.models() == ["strong-x", "weak-y"] and len(renamed) == len(b)


def test_golden_sources_for_every_table(data_dir):
    for name in ("golden:mmlu", "golden:gsm8k", "golden:routerbench"):
        b = load_source(name, data_dir)
        assert len(b) > 1000
        assert set(b.column("winner")) == {"model_a", "model_b", "tie"}


# ---- both public Chatbot Arena schemas, from local files --------------------------------
def _arena_55k_rows():
    return [
        {
            "id": 1,
            "model_a": "gpt-4-0613",
            "model_b": "llama-2-13b-chat",
            "prompt": json.dumps(["Explain quantum tunnelling simply.", "Now shorter."]),
            "response_a": json.dumps(["A", "B"]),
            "response_b": json.dumps(["C", "D"]),
            "winner_model_a": 1,
            "winner_model_b": 0,
            "winner_tie": 0,
        },
        {
            "id": 2,
            "model_a": "claude-2.1",
            "model_b": "gpt-4-0613",
            "prompt": json.dumps(["Write a haiku about routers."]),
            "response_a": json.dumps(["x"]),
            "response_b": json.dumps(["y"]),
            "winner_model_a": 0,
            "winner_model_b": 0,
            "winner_tie": 1,
        },
    ]


def _arena_conversation_rows():
    conv = [
        {"content": "What is the capital of Australia?", "role": "user"},
        {"content": "Canberra.", "role": "assistant"},
    ]
    return [
        {
            "question_id": "q1",
            "model_a": "vicuna-13b",
            "model_b": "koala-13b",
            "winner": "model_b",
            "judge": "arena_user_1",
            "conversation_a": conv,
            "conversation_b": conv,
            "turn": 1,
            "anony": True,
            "language": "English",
            "tstamp": 1.0,
        },
        {
            "question_id": "q2",
            "model_a": "gpt-4",
            "model_b": "vicuna-13b",
            "winner": "tie (bothbad)",
            "judge": "arena_user_2",
            "conversation_a": conv,
            "conversation_b": conv,
            "turn": 1,
            "anony": True,
            "language": "German",
            "tstamp": 2.0,
        },
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_load_arena_55k_schema(tmp_path, suffix):
    rows = _arena_55k_rows()
    path = tmp_path / f"arena55k{suffix}"
    _write(path, rows)
    b = load_arena(path)
    assert len(b) == 2
    assert b.prompts == ["Explain quantum tunnelling simply.", "Write a haiku about routers."]
    assert b.column("winner") == ["model_a", "tie"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_load_arena_conversations_schema(tmp_path, suffix):
    path = tmp_path / f"conversations{suffix}"
    _write(path, _arena_conversation_rows())
    b = load_arena(path)
    assert b.prompts == ["What is the capital of Australia?"] * 2
    assert b.column("winner") == ["model_b", "tie (bothbad)"]
    assert len(load_arena(path, language="English")) == 1


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


# ---- bad input names file, row and field -----------------------------------------------
def test_unknown_winner_names_file_row_field(tmp_path):
    rows = [
        {"prompt": "hello there", "model_a": "a", "model_b": "b", "winner": "model_a"},
        {"prompt": "second prompt", "model_a": "a", "model_b": "b", "winner": "draw"},
    ]
    path = tmp_path / "b.jsonl"
    _write(path, rows)
    with pytest.raises(DataError) as e:
        Battles.read(path)
    msg = str(e.value)
    assert str(path) in msg and "row 2" in msg and "'winner'" in msg and "draw" in msg


def test_missing_column_and_empty_prompt(tmp_path):
    path = tmp_path / "b.jsonl"
    _write(path, [{"prompt": "fine prompt", "model_a": "a", "winner": "model_a"}])
    with pytest.raises(DataError, match=r"row 1, field 'model_b'"):
        Battles.read(path)
    _write(
        path,
        [
            {"prompt": "ok prompt", "model_a": "a", "model_b": "b", "winner": "tie"},
            {"prompt": "   ", "model_a": "a", "model_b": "b", "winner": "tie"},
        ],
    )
    with pytest.raises(DataError, match=r"row 2, field 'prompt'.*empty"):
        Battles.read(path)
    parquet = tmp_path / "b.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "x y z", "model_a": "a", "winner": "tie"}]), parquet
    )
    with pytest.raises(DataError, match=r"field 'model_b'"):
        Battles.read(parquet)


def test_file_that_is_not_what_its_extension_says(tmp_path):
    fake = tmp_path / "battles.parquet"
    fake.write_text('{"prompt": "this is JSON, not Parquet"}\n')
    with pytest.raises(DataError, match="battles.parquet.*not a readable Parquet"):
        Battles.read(fake)
    notjson = tmp_path / "battles.jsonl"
    notjson.write_bytes(b"PAR1\x00\x01binary")
    with pytest.raises(DataError, match=r"battles.jsonl, row 1.*not valid JSON"):
        load_arena(notjson)
    with pytest.raises(DataError, match="unsupported"):
        Battles.read(tmp_path / "battles.xlsx")


def test_bad_outcome_cell_names_file_row_column(tmp_path):
    folder = tmp_path / "routellm_evals" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "gsm8k_responses.csv").write_text(
        f"prompt,{ROUTELLM_WEAK},{ROUTELLM_STRONG}\nq1,True,False\nq2,maybe,True\n"
    )
    with pytest.raises(DataError) as e:
        load_outcomes("gsm8k", tmp_path)
    assert "row 3" in str(e.value) and ROUTELLM_WEAK in str(e.value) and "maybe" in str(e.value)


def test_strict_aliases_reject_unknown_model(data_dir):
    b = load_source("mt_bench_human", data_dir)
    aliases = ModelAliases({"gpt-4": ["gpt4"]}, strict=True)
    with pytest.raises(DataError, match=r"row 1, field 'model_a'.*not in the alias table"):
        apply_aliases(b, aliases, file="human.jsonl")


def test_aliases_canonicalise_across_sources(alpaca_battles, data_dir):
    assert "gpt-4-1106-preview" in alpaca_battles.models()
    assert "mixtral-8x7b-instruct-v0.1" in alpaca_battles.models()
    aliases = ModelAliases()
    assert aliases.same("gpt4_1106_preview", ROUTELLM_STRONG)
    assert aliases.same("Mixtral-8x7B-Instruct-v0.1_concise", ROUTELLM_WEAK)
    assert aliases.canonical("some-new-model") == "some-new-model"


# ---- table operations -------------------------------------------------------------------
def test_roundtrip_jsonl_parquet_and_split(alpaca_battles, tmp_path):
    part = alpaca_battles.take(np.arange(0, 36_700, 97))
    part.write(tmp_path / "b.jsonl")
    part.write(tmp_path / "b.parquet")
    for path in (tmp_path / "b.jsonl", tmp_path / "b.parquet"):
        again = Battles.read(path)
        assert again.to_records() == part.to_records()
    train, test = part.split(0.25, seed=1)
    assert len(train) + len(test) == len(part) and abs(len(test) - 0.25 * len(part)) <= 1
    swapped = part.swap_sides(np.ones(len(part), dtype=bool))
    assert swapped.column("model_b") == part.column("model_a")
    np.testing.assert_allclose(swapped.numeric("p_b_wins"), 1 - part.numeric("p_b_wins"))
    both = Battles.concat([train, test])
    assert len(both) == len(part)


def test_cleaning_logs_every_removal(caplog):
    rows = [
        {"prompt": "short", "model_a": "a", "model_b": "b", "winner": "model_a"},
        {"prompt": "a long enough prompt", "model_a": "a", "model_b": "b", "winner": "model_a"},
        {"prompt": "a long enough prompt", "model_a": "a", "model_b": "b", "winner": "model_a"},
        {"prompt": "a self battle prompt", "model_a": "a", "model_b": "a", "winner": "tie"},
    ]
    with caplog.at_level(logging.INFO, logger="prefroute"):
        cleaned = clean_battles(Battles.from_records(rows))
    assert len(cleaned) == 1
    text = caplog.text
    assert "shorter than 8 characters: removed 1 of 4" in text
    assert "against itself: removed 1 of 3" in text
    assert "duplicate battles: removed 1 of 2" in text


def test_decontamination_removes_near_copies(alpaca_battles, data_dir):
    gsm8k = load_outcomes("gsm8k", data_dir)
    eval_prompts = gsm8k.prompts[:200]
    golden = load_source("golden:gsm8k", data_dir)
    mixed = Battles.concat([alpaca_battles.take(np.arange(300)), golden.take(np.arange(50))])
    kept, report = decontaminate(mixed, eval_prompts, threshold=0.95)
    # the 50 GSM8K test prompts used as training rows are exact copies of eval prompts
    assert len(report) >= 50
    assert set(range(300, 350)) <= set(report.train_rows.tolist())
    assert (report.similarity >= 0.95).all()
    assert len(kept) == len(mixed) - len(report)
    assert not set(kept.prompts) & set(eval_prompts)


def test_read_prompts_jsonl_and_text(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second prompt"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"row 2, field 'prompt'"):
        read_prompts(tmp_path / "p.jsonl")


def test_read_prompts_reads_csv_and_parquet_as_tables_not_text(tmp_path):
    """calibrate --prompts once read a CSV's raw lines (header included) as prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = ["What is 2 + 2?", 'A "quoted", comma prompt\nover two lines', "Say hi"]
    (tmp_path / "p.csv").write_text("id,prompt\n" + "".join(
        f'{i},"{p.replace(chr(34), chr(34) * 2)}"\n' for i, p in enumerate(prompts)))
    pq.write_table(pa.table({"prompt": prompts, "n": [1, 2, 3]}), tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.csv") == prompts
    assert read_prompts(tmp_path / "p.parquet") == prompts
    (tmp_path / "header_only.csv").write_text("prompt\n")
    with pytest.raises(DataError, match="no prompts"):
        read_prompts(tmp_path / "header_only.csv")
    pq.write_table(pa.table({"text": prompts}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="prompt"):
        read_prompts(tmp_path / "other.parquet")
