"""Score tables and the files they go to (JSON Lines, CSV, Parquet), written atomically."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from prefroute.errors import ConfigError
from prefroute.io import OutputError, atomic_write
from prefroute.validate import check_id_column

OUTPUT_FORMATS = ("jsonl", "csv", "parquet")
SCORE_COLUMNS = ("prompt", "strong_win_prob", "routed_to", "side", "threshold")


@dataclass(frozen=True)
class Decision:
    """What a row of output holds beyond the score: the router's pair and threshold."""

    strong_model: str
    weak_model: str
    threshold: float
    id_field: str | None = None
    with_decision: bool = False
    with_prompt: bool = True

    def __post_init__(self) -> None:
        if self.id_field in SCORE_COLUMNS[1:]:
            raise ConfigError(
                f"--id-field {self.id_field!r} clashes with an output column; "
                f"output columns are {list(SCORE_COLUMNS)}"
            )


def score_table(
    prompts: pa.Array, ids: pa.Array | None, probs: np.ndarray, decision: Decision
) -> pa.Table:
    """One output row per prompt: [id], [prompt], strong_win_prob, routed_to, [side, threshold].

    Ids are written as int64 or text, so every output format holds them exactly as read; any
    other id type (a float, a null) is a DataError rather than a changed id.
    """
    strong = probs >= decision.threshold
    columns: dict[str, pa.Array] = {}
    if ids is not None and decision.id_field is not None:
        field = decision.id_field
        columns[field] = check_id_column(ids, file=None, first_row=None, field=field)
    if decision.with_prompt and decision.id_field != "prompt":
        columns["prompt"] = prompts
    columns["strong_win_prob"] = pa.array(probs, pa.float64())
    names = pa.array([decision.weak_model, decision.strong_model], pa.string())
    side_index = pa.array(strong.astype(np.int8))
    columns["routed_to"] = pa.DictionaryArray.from_arrays(side_index, names).cast(pa.string())
    if decision.with_decision:
        sides = pa.array(["weak", "strong"], pa.string())
        columns["side"] = pa.DictionaryArray.from_arrays(side_index, sides).cast(pa.string())
        columns["threshold"] = pa.array(np.full(len(probs), decision.threshold), pa.float64())
    return pa.table(columns)


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    raise ConfigError(
        f"--out {path}: unknown output type {suffix!r}; use a .jsonl, .csv or .parquet file"
    )


def check_output_file(path: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work, an output that is a folder, an input, or exists (no --overwrite)."""
    output_format(path)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; give a file path")
    for source in inputs:
        if path.resolve() == Path(source).resolve():
            raise OutputError(f"--out {path} is the input file; write the scores elsewhere")
    if path.exists() and not overwrite:
        raise OutputError(f"--out {path} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def open_score_writer(path: Path) -> Iterator[Callable[[pa.Table], None]]:
    """Yield ``write(table)``; the file appears at ``path`` only when the block ends cleanly."""
    fmt = output_format(path)
    with atomic_write(path, "wb", encoding=None) as handle:
        if fmt == "jsonl":
            yield lambda table: _write_jsonl(handle, table)
            return
        writer: pq.ParquetWriter | pacsv.CSVWriter | None = None

        def write(table: pa.Table) -> None:
            nonlocal writer
            if writer is None:
                writer = (
                    pq.ParquetWriter(handle, table.schema)
                    if fmt == "parquet"
                    else pacsv.CSVWriter(handle, table.schema)
                )
            writer.write_table(table)

        try:
            yield write
        finally:
            if writer is not None:
                writer.close()


def _write_jsonl(handle, table: pa.Table) -> None:
    handle.write(b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist()))
