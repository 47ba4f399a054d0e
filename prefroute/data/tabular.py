"""Reading record files (JSON, JSONL, CSV, Parquet) with errors that name the file and row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefroute.errors import DataError

csv.field_size_limit(1 << 30)

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file.

    A missing file, a line that is not JSON, or one that is not an object is a DataError
    naming the file and the line.
    """
    name = str(path)
    if not Path(path).exists():
        raise DataError("file not found", file=name)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", file=name, row=i) from None
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", file=name, row=i)
            yield i, row


def read_records(path: str | Path) -> list[dict]:
    """Rows of a local JSON (list of objects), JSONL, CSV or Parquet file.

    The extension picks the reader; content that does not match it is a DataError.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError("file not found", file=name)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [row for _, row in iter_jsonl(path)]
    if suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON ({e})", file=name) from None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            # column-oriented JSON, as pandas' to_json(orient="list") writes it
            keys = list(data)
            n = len(data[keys[0]]) if keys else 0
            return [{k: data[k][i] for k in keys} for i in range(n)]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError("expected a list of JSON objects", file=name)
        return data
    if suffix == ".csv":
        try:
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"not a readable CSV file ({e})", file=name) from None
    if suffix == ".parquet":
        try:
            return pq.read_table(name).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"not a readable Parquet file ({e})", file=name) from None
    raise DataError(
        f"unsupported file type {suffix!r}; use one of {list(RECORD_SUFFIXES)}", file=name
    )
