"""Batch scoring (`prefroute score`, prefroute.scoring): formats, order, ids, memory, Ray."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from prefroute.errors import DataError, PrefrouteError
from prefroute.router import Router, load_router
from prefroute.scoring import score_file
from prefroute.training import load_training_battles, train_router

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIR = ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")


def mmlu_pro_prompts(data_dir: Path) -> list[str]:
    """Every MMLU-Pro question with its lettered options (9,626 distinct prompts)."""
    prompts = []
    with open(data_dir / "mmlu_pro" / "questions.jsonl", "rb") as f:
        for line in f:
            q = orjson.loads(line)
            options = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(q["options"]))
            prompts.append(f"{q['question']}\n{options}")
    return prompts


@pytest.fixture(scope="module")
def mf_router(tmp_path_factory, data_dir) -> tuple[Router, Path]:
    battles = load_training_battles(["alpaca_eval"], data_dir)
    predictor = train_router(
        "mf", battles, strong_model=PAIR[0], weak_model=PAIR[1], epochs=2, progress=False
    )
    router = Router(predictor, threshold=0.55)
    path = tmp_path_factory.mktemp("ckpt") / "mf"
    router.save_pretrained(path)
    return load_router(path), path


@pytest.fixture(scope="module")
def prompts(data_dir) -> list[str]:
    return mmlu_pro_prompts(data_dir)[:3000]


def _ids(n: int) -> list[str]:
    # ids that sort differently from row order, so a reordering cannot go unnoticed
    return [f"req-{(i * 7919) % 100003:06d}" for i in range(n)]


def _write_input(path: Path, prompts: list[str], ids: list[str]) -> None:
    table = pa.table({"request_id": ids, "prompt": prompts, "other": list(range(len(ids)))})
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=700)  # several row groups
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table.to_pylist()))


def _read_output(path: Path) -> list[dict]:
    if path.suffix == ".parquet" or path.is_dir():
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row["strong_win_prob"] = float(row["strong_win_prob"])
            row["threshold"] = float(row["threshold"])
        return rows
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("in_suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("out_suffix", [".jsonl", ".csv", ".parquet"])
def test_round_trip_keeps_order_ids_and_scores(mf_router, prompts, tmp_path, in_suffix, out_suffix):
    router, _ = mf_router
    ids = _ids(len(prompts))
    source = tmp_path / f"in{in_suffix}"
    _write_input(source, prompts, ids)
    out = tmp_path / f"scores{out_suffix}"
    summary = score_file(
        router, source, out, id_field="request_id", with_decision=True, batch_size=512,
        workers=1, progress=False,
    )
    rows = _read_output(out)
    assert summary.rows == len(rows) == len(prompts)
    assert [r["request_id"] for r in rows] == ids
    assert [r["prompt"] for r in rows] == prompts
    expected = router.strong_win_prob(prompts)
    got = np.array([r["strong_win_prob"] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    strong = expected >= 0.55
    assert 0 < strong.sum() < len(prompts)  # both sides occur, so the decision is tested
    assert [r["side"] for r in rows] == ["strong" if s else "weak" for s in strong]
    assert [r["routed_to"] for r in rows] == [PAIR[0] if s else PAIR[1] for s in strong]
    assert {r["threshold"] for r in rows} == {0.55}


@pytest.mark.parametrize("suffix,batch_size,parallel,expected", [
    (".parquet", 256, {"workers": 2}, (2, 1)),  # processes
    (".jsonl", 1500, {"threads": 3}, (1, 3)),  # threads sharing one tokenizer cache
])
def test_parallel_scoring_gives_the_same_rows_in_the_same_order(
        mf_router, prompts, tmp_path, suffix, batch_size, parallel, expected):
    router, _ = mf_router
    source = tmp_path / f"in{suffix}"
    _write_input(source, prompts, _ids(len(prompts)))
    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    score_file(router, source, one, id_field="request_id", batch_size=batch_size, workers=1,
               threads=1, progress=False)
    summary = score_file(router, source, many, id_field="request_id", batch_size=batch_size,
                         progress=False, **parallel)
    assert (summary.workers, summary.threads) == expected
    assert pq.read_table(one).equals(pq.read_table(many))


def test_a_prompts_score_does_not_depend_on_the_batch_it_is_in(
        mf_router, data_dir, prompts, tmp_path):
    """mf and logistic scores are bitwise the same however the prompts are batched, so every
    engine and option (batch size, threads, workers, Ray's batches) writes identical scores."""
    router, _ = mf_router
    battles = load_training_battles(["alpaca_eval"], data_dir)
    logistic = train_router("logistic", battles, strong_model=PAIR[0], weak_model=PAIR[1])
    for predictor in (router.predictor, logistic):
        whole = predictor.predict_proba(prompts, batch_size=4096)
        for size in (1000, 333, 7):
            np.testing.assert_array_equal(predictor.predict_proba(prompts, batch_size=size), whole)
        one_by_one = np.concatenate([predictor.predict_proba(p) for p in prompts[:41]])
        np.testing.assert_array_equal(one_by_one, whole[:41])
    source = tmp_path / "in.jsonl"
    _write_input(source, prompts, _ids(len(prompts)))
    outputs = []
    for i, options in enumerate(({}, {"batch_size": 333, "threads": 1},
                                 {"batch_size": 257, "workers": 2})):
        outputs.append(tmp_path / f"out{i}.parquet")
        score_file(router, source, outputs[-1], id_field="request_id", progress=False, **options)
    first = pq.read_table(outputs[0])
    assert all(pq.read_table(out).equals(first) for out in outputs[1:])


def test_threads_are_refused_for_a_router_that_is_not_thread_safe(data_dir, prompts, tmp_path):
    from prefroute.errors import ConfigError

    battles = load_training_battles(["alpaca_eval"], data_dir)
    router = Router(train_router("length", battles, strong_model=PAIR[0], weak_model=PAIR[1]))
    source = tmp_path / "in.jsonl"
    _write_input(source, prompts[:50], _ids(50))
    with pytest.raises(ConfigError, match="'threads' parameter must be 1"):
        score_file(router, source, tmp_path / "out.jsonl", threads=2, progress=False)
    assert not (tmp_path / "out.jsonl").exists()
    summary = score_file(router, source, tmp_path / "out.jsonl", progress=False)
    assert summary.threads == 1


def _run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefroute.cli.main", "score", *args],
        capture_output=True, text=True, cwd=cwd,
    )


def test_cli_errors_name_file_row_and_field_and_keep_existing_output(mf_router, tmp_path):
    _, checkpoint = mf_router
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": 7}\n')
    out = tmp_path / "scores.jsonl"
    done = _run_cli(str(checkpoint), "--prompts", str(bad), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert f"file {bad}, row 3, field 'prompt'" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temporary file left behind

    csv_file = tmp_path / "bad.csv"
    csv_file.write_bytes("\ufeffid,prompt\na,hello\nb,  \n".encode())
    done = _run_cli(str(checkpoint), "--prompts", str(csv_file), "--out", str(out),
                    "--id-field", "id")
    assert done.returncode == 2 and "row 3, field 'prompt': empty prompt" in done.stderr

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Prove Fermat\'s little theorem."}\n')
    out.write_text("precious\n")
    done = _run_cli(str(checkpoint), "--prompts", str(good), "--out", str(out))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert out.read_text() == "precious\n"
    for option in ("--batch-size", "--limit"):
        done = _run_cli(str(checkpoint), "--prompts", str(good), "--out", str(out),
                        "--overwrite", option, "0")
        assert done.returncode == 2 and option.lstrip("-").replace("-", "_") in done.stderr
        assert "Traceback" not in done.stderr and out.read_text() == "precious\n"
    done = _run_cli(str(checkpoint), "--prompts", str(good), "--out", str(out), "--overwrite",
                    "--with-decision")
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())
    assert set(row) == {"prompt", "strong_win_prob", "routed_to", "side", "threshold"}


def _cycled_prompts(base: list[str], n: int) -> pa.Array:
    """n distinct prompts: real MMLU-Pro questions cycled, each with its row number."""
    rows = np.arange(n)
    texts = pa.array(base * (n // len(base) + 1))[:n]
    suffix = pa.compute.binary_join_element_wise(
        pa.array(np.full(n, " (row ", dtype=object)), pa.array(rows.astype(str)), ""
    )
    return pa.compute.binary_join_element_wise(texts, suffix, pa.scalar(")"), "")


def _peak_rss_of(cmd: list[str], tmp_path: Path) -> tuple[int, subprocess.CompletedProcess]:
    """The kernel's exact peak resident memory (bytes) of a one-process command, read by
    /usr/bin/time. (This process's own wait4 rusage would not do: a child's high-water mark
    starts from the forking process's, and pytest here holds the million-row table.)"""
    report = tmp_path / "time.txt"
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd],
                          capture_output=True, text=True)
    return int(report.read_text().split()[-1]) * 1024, done


@pytest.mark.slow
def test_a_million_row_file_streams_in_bounded_memory(mf_router, data_dir, tmp_path):
    _, checkpoint = mf_router
    base = sorted(mmlu_pro_prompts(data_dir)[:2000], key=len)[:500]  # short: a fast test
    peaks, sizes = {}, {}
    for n in (10_000, 1_000_000):
        source = tmp_path / f"log_{n}.parquet"
        # the same 500 questions over and over: the row data grows 100x while the tokenizer's
        # segment cache stays the same size, so the growth measured is what the streaming
        # itself holds
        table = pa.table({"id": pa.array(np.arange(n)),
                          "prompt": pa.array(base * (n // len(base) + 1))[:n]})
        # stored as written (no dictionary, no compression), so a reader that kept what it
        # read would hold about the file's size
        pq.write_table(table, source, row_group_size=8192, use_dictionary=False,
                       compression="none")
        sizes[n] = table.nbytes
        del table
        out = tmp_path / f"scores_{n}.parquet"
        cmd = [sys.executable, "-m", "prefroute.cli.main", "score", str(checkpoint), "--prompts",
               str(source), "--out", str(out), "--id-field", "id", "--workers", "1",
               "--no-prompt"]
        peaks[n], done = _peak_rss_of(cmd, tmp_path)
        assert done.returncode == 0, done.stderr
        result = pq.read_table(out)
        assert result.column("id").to_numpy().tolist() == list(range(n))
        assert result.column_names == ["id", "strong_win_prob", "routed_to"]
    # 100x the rows: reading the whole file would add at least its in-memory size (and the
    # Python strings of a list, several times more); pyarrow's default pre-buffering of the
    # Parquet reader alone kept ~0.3 GB per million rows
    growth = peaks[1_000_000] - peaks[10_000]
    assert sizes[1_000_000] > 120e6
    assert growth < 0.25 * sizes[1_000_000], (
        f"peak RSS grew {growth / 1e6:.0f} MB from 10k to 1M rows "
        f"({sizes[1_000_000] / 1e6:.0f} MB of prompts; peaks {peaks})"
    )


CRASH_MARKER = "<crash the router here>"
REFUSED_ON_WORKERS = "random"  # a router type the workers below cannot load


def crash_on_marker_hook():
    """A Ray worker set-up hook under which scoring a batch that holds CRASH_MARKER raises,
    and loading a REFUSED_ON_WORKERS checkpoint raises (as on a worker with another prefroute
    version). Defined inside a function so Ray pickles it by value: workers cannot import
    this module."""
    marker, refused_type = CRASH_MARKER, REFUSED_ON_WORKERS

    def hook() -> None:
        import json
        import pathlib

        import prefroute.router
        import prefroute.scoring.ray_engine as engine
        from prefroute.errors import CheckpointError

        score, load = engine.score_prompts, prefroute.router.load_router

        def crashing(router, prompts, batch_size):
            if any(marker in p for p in prompts.to_pylist()):
                raise ZeroDivisionError(f"{marker} in a batch")
            return score(router, prompts, batch_size)

        def refusing(folder, *args, **kwargs):
            config = json.loads((pathlib.Path(folder) / "config.json").read_text())
            if config["type"] == refused_type:
                raise CheckpointError(f"{refused_type} routers are refused on this worker")
            return load(folder, *args, **kwargs)

        engine.score_prompts = crashing
        prefroute.router.load_router = refusing

    return hook


@pytest.mark.slow  # starts a Ray cluster: ~20 s on a quiet machine
def test_ray_scores_equal_the_local_path(mf_router, data_dir, prompts, tmp_path):
    ray = pytest.importorskip("ray")
    from prefroute.scoring.ray_engine import init_ray, score_with_ray

    router, checkpoint = mf_router
    n = 2000
    source = tmp_path / "in.parquet"
    _write_input(source, prompts[:n], _ids(n))
    local = tmp_path / "local.parquet"
    score_file(router, source, local, id_field="request_id", with_decision=True, workers=1,
               batch_size=300, progress=False)
    # bad inputs for the same cluster: a null prompt deep in the file, a blank one, a null
    # id; a dictionary-encoded prompt column (pandas categoricals) is text like any other
    bad_prompts = list(prompts[:n])
    bad_prompts[1234] = None
    _write_input(tmp_path / "null.parquet", bad_prompts, _ids(n))
    bad_prompts[1234] = prompts[1234]
    bad_prompts[77] = "  \n"
    _write_input(tmp_path / "blank.parquet", bad_prompts, _ids(n))
    bad_ids = pa.array([*_ids(n)[:500], None, *_ids(n)[501:]])
    _write_input(tmp_path / "null_id.parquet", prompts[:n], bad_ids)
    categorical = tmp_path / "categorical.parquet"
    pq.write_table(pa.table({"request_id": _ids(n),
                             "prompt": pa.array(prompts[:n]).dictionary_encode()}), categorical)
    # a prompt that passes every check but crashes the router inside an actor (a bug, a
    # worker out of memory): the workers' scoring fails on the marker, nowhere else
    crashing = list(prompts[:n])
    crashing[1500] += " " + CRASH_MARKER
    _write_input(tmp_path / "crash.parquet", crashing, _ids(n))
    # a checkpoint the driver loads but the workers cannot
    refused = tmp_path / "refused_ckpt"
    battles = load_training_battles(["alpaca_eval"], data_dir)
    Router(train_router(REFUSED_ON_WORKERS, battles, strong_model=PAIR[0], weak_model=PAIR[1]),
           threshold=0.5).save_pretrained(refused)
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": crash_on_marker_hook()})
    try:
        rows = score_with_ray(checkpoint, source, tmp_path / "ray_out", id_field="request_id",
                              with_decision=True, batch_size=100)
        errors = {}
        for name in ("null", "blank", "null_id"):
            with pytest.raises(DataError) as caught:
                score_with_ray(checkpoint, tmp_path / f"{name}.parquet", tmp_path / f"{name}_out",
                               id_field="request_id", batch_size=100)
            errors[name] = caught.value
            assert not (tmp_path / f"{name}_out").exists()
        score_with_ray(checkpoint, categorical, tmp_path / "categorical_out",
                       id_field="request_id", batch_size=100)
        # the failure comes back as one error, and no output, instead of a hang or a traceback
        with pytest.raises(PrefrouteError) as crashed:
            score_with_ray(checkpoint, tmp_path / "crash.parquet", tmp_path / "crash_out",
                           id_field="request_id", batch_size=100)
        assert not (tmp_path / "crash_out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crash_out")]
        with pytest.raises(PrefrouteError) as not_loaded:
            score_with_ray(refused, source, tmp_path / "refused_out", batch_size=100)
        assert not (tmp_path / "refused_out").exists()
    finally:
        ray.shutdown()
    assert str(not_loaded.value) == (
        f"scoring failed on a Ray worker: {REFUSED_ON_WORKERS} routers are refused on this worker")
    assert str(crashed.value) == (
        f"scoring failed on a Ray worker: ZeroDivisionError: {CRASH_MARKER} in a batch")
    assert "Traceback" in "".join(crashed.value.__notes__)  # the worker's, for --debug
    # one clear error naming the file, the true row (1-based Parquet record) and the field
    assert (errors["null"].row, errors["null"].field) == (1235, "prompt")
    assert (errors["blank"].row, errors["blank"].field) == (78, "prompt")
    assert (errors["null_id"].row, errors["null_id"].field) == (501, "request_id")
    assert all(e.file.endswith(".parquet") and "Traceback" not in str(e) and len(str(e)) < 200
               for e in errors.values())
    categorical_scores = pa.concat_tables(
        [pq.read_table(p) for p in sorted((tmp_path / "categorical_out").glob("*.parquet"))])
    assert rows == n
    parts = sorted((tmp_path / "ray_out").glob("*.parquet"))
    distributed = pa.concat_tables([pq.read_table(p) for p in parts])
    expected = pq.read_table(local)
    assert distributed.column("request_id").to_pylist() == expected.column("request_id").to_pylist()
    np.testing.assert_array_equal(
        distributed.column("strong_win_prob").to_numpy(),
        expected.column("strong_win_prob").to_numpy(),
    )
    assert distributed.select(expected.column_names).equals(expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ray_out")]  # stage renamed
    np.testing.assert_array_equal(categorical_scores.column("strong_win_prob").to_numpy(),
                                  expected.column("strong_win_prob").to_numpy())


def test_a_prefroute_error_is_unwrapped_from_a_task_error_chain():
    pytest.importorskip("ray")
    from prefroute.scoring.ray_engine import _prefroute_error_inside

    class TaskError(RuntimeError):  # as Ray wraps a task's error: the original as the cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last): ...")
            self.cause = cause

    original = DataError("empty prompt", field="prompt")
    try:
        try:
            raise TaskError(original)
        except TaskError as wrapped:
            raise RuntimeError("Dataset execution failed") from wrapped
    except RuntimeError as outer:
        assert _prefroute_error_inside(outer) is original
    assert _prefroute_error_inside(RuntimeError("no prefroute error here")) is None


def test_every_arrow_text_type_is_read_as_text(mf_router, prompts, tmp_path):
    """Parquet stores text as string, large_string, string_view or a dictionary of those
    (pandas categoricals): each scores as plain text, with the same output schema."""
    router, _ = mf_router
    texts, ids = prompts[:300], _ids(300)
    types = {"string": lambda a: a, "large": lambda a: a.cast(pa.large_string()),
             "dictionary": lambda a: a.dictionary_encode()}
    if hasattr(pa, "string_view"):
        types["view"] = lambda a: a.cast(pa.string_view())
    outputs = {}
    for name, convert in types.items():
        source = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"request_id": convert(pa.array(ids)),
                                 "prompt": convert(pa.array(texts))}), source)
        out = tmp_path / f"{name}_scores.parquet"
        score_file(router, source, out, id_field="request_id", workers=1, progress=False)
        outputs[name] = pq.read_table(out)
    for name, table in outputs.items():
        assert table.equals(outputs["string"]), name
    assert outputs["string"].schema.field("prompt").type == pa.string()


def test_the_cli_default_batch_size_is_the_engines():
    from prefroute.cli import score as score_cli
    from prefroute.scoring import DEFAULT_BATCH_SIZE

    assert score_cli.DEFAULT_BATCH_SIZE == DEFAULT_BATCH_SIZE
