"""Reading record files (JSON, JSONL, CSV, Parquet) with errors that name the file and row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefroute.errors import DataError
from prefroute.validate import Records, check_strings_in, csv_rows, decode_line, decode_utf8

csv.field_size_limit(1 << 30)

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file.

    A missing file, bytes that are not UTF-8, a line that is not JSON, one that is not an
    object, or text with lone surrogates is a DataError naming the file and the line.
    """
    name = str(path)
    if not Path(path).is_file():
        raise DataError("file not found" if not Path(path).exists() else "not a file", file=name)
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            line = decode_line(raw, name, i)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", file=name, row=i) from None
            except RecursionError:
                raise DataError("JSON nested too deeply", file=name, row=i) from None
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", file=name, row=i)
            if "\\u" in line:  # only \u escapes can make lone surrogates from valid UTF-8
                check_strings_in(row, file=name, row=i, field="")
            yield i, row


def _csv_records(text: str, name: str) -> Records:
    """CSV rows as dicts keyed by the header, as ``csv.DictReader`` makes them (blank lines
    skipped, missing cells None, extra cells in a list under None), parsed strictly
    (``prefroute.validate.csv_rows``); the header is row 1, as a spreadsheet shows it."""
    header: list[str] | None = None
    rows, numbers = [], []
    for row_no, record in enumerate(csv_rows(text, name), start=1):
        if not record:
            continue
        if header is None:
            header = record
            continue
        row: dict = dict(zip(header, record))
        if len(record) > len(header):
            row[None] = record[len(header):]
        for key in header[len(record):]:
            row[key] = None
        rows.append(row)
        numbers.append(row_no)
    return Records(rows, numbers, text_cells=True)


def read_records(path: str | Path) -> Records:
    """Rows of a local JSON (list of objects), JSONL, CSV or Parquet file.

    The extension picks the reader; content that does not match it is a DataError. The
    result remembers each row's true row number (``prefroute.validate.numbered``).
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError("file not found", file=name)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        numbers, rows = [], []
        for i, row in iter_jsonl(path):
            numbers.append(i)
            rows.append(row)
        return Records(rows, numbers)
    if suffix == ".json":
        try:
            data = json.loads(decode_utf8(path.read_bytes(), name))
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e})", file=name) from None
        except RecursionError:
            raise DataError("JSON nested too deeply", file=name) from None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            # column-oriented JSON, as pandas' to_json(orient="list") writes it
            keys = list(data)
            n = len(data[keys[0]]) if keys else 0
            if any(len(data[k]) != n for k in keys):
                raise DataError("column-oriented JSON with columns of unequal length", file=name)
            data = [{k: data[k][i] for k in keys} for i in range(n)]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError("expected a list of JSON objects", file=name)
        for i, row in enumerate(data, start=1):
            check_strings_in(row, file=name, row=i, field="")
        return Records(data)
    if suffix == ".csv":
        return _csv_records(decode_utf8(path.read_bytes(), name, tabular=True), name)
    if suffix == ".parquet":
        try:
            return Records(pq.read_table(name).to_pylist())
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"not a readable Parquet file ({e})", file=name) from None
    raise DataError(
        f"unsupported file type {suffix!r}; use one of {list(RECORD_SUFFIXES)}", file=name
    )
