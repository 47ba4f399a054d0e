"""Prompt files read as a stream of record batches, so memory follows the batch size.

JSON Lines, CSV, Parquet and plain text (one prompt per line), each as a file or as a folder
of files of one type (read in sorted path order; names starting with ``.`` or ``_`` are
skipped, as Parquet datasets skip ``_SUCCESS``). CSV and Parquet go through ``pyarrow``.
JSON Lines is parsed line by line with orjson: pyarrow's JSON reader infers one type per
column from the first block and reports row numbers relative to a block, and a bad line
should be named by its true line number. A leading UTF-8 BOM is dropped in every text format.

Ids (``id_field``) pass ``prefroute.validate.check_id``: a string or an int64 integer, of one
kind in the whole input, copied byte for byte to the output.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prefroute.errors import DataError
from prefroute.validate import (
    IdKinds,
    check_id,
    check_id_column,
    csv_rows,
    decode_line,
    is_text_type,
    plain_text,
)

logger = logging.getLogger("prefroute.scoring")

FORMATS = ("jsonl", "csv", "parquet", "text")


@dataclass
class PromptBatch:
    """Consecutive input records: their prompts, their ids (or None) and row numbers.

    ``rows`` are the numbers an error names, counted as ``prefroute.validate`` does: the line
    for JSON Lines and text, the CSV row with the header as row 1, the 1-based Parquet record;
    in a folder, within each file.
    """

    prompts: pa.Array
    ids: pa.Array | None
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)


def file_format(path: Path) -> str:
    """The reader a file gets, from its suffix (anything unknown is plain text)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    return "text"


def input_files(path: Path) -> list[Path]:
    """``path`` itself, or the files of a folder in sorted order (hidden and ``_`` names
    skipped); an empty folder is a DataError."""
    if not path.is_dir():
        return [path]
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part[0] in "._" for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError("the folder holds no input files", file=str(path))
    return files


def input_format(path: Path) -> str:
    """The reader a path gets: from its suffix, or for a folder from its files' one suffix."""
    files = input_files(path)
    formats = {file_format(f): f for f in files}
    if len(formats) > 1:
        examples = ", ".join(f.name for f in formats.values())
        raise DataError(
            f"the folder mixes file types ({examples}); give a folder of one type "
            "(JSONL, CSV, Parquet or text)",
            file=str(path),
        )
    return next(iter(formats))


def iter_prompt_batches(
    path: str | Path,
    *,
    batch_size: int,
    prompt_field: str = "prompt",
    id_field: str | None = None,
    limit: int | None = None,
) -> Iterator[PromptBatch]:
    """Batches of at most ``batch_size`` checked prompts from ``path``, in file order.

    A missing field, a prompt that is null, not text or blank, or a bad id (see
    ``prefroute.validate.check_id``) is a DataError naming the file, the row and the field.
    ``limit`` stops after that many prompts.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    fmt = input_format(path)
    if fmt == "text" and id_field is not None:
        raise DataError(
            "a plain-text prompt file has no fields; --id-field needs JSONL, CSV or Parquet",
            file=str(path),
        )
    kinds = IdKinds()
    batches = (
        batch
        for file in input_files(path)
        for batch in _file_batches(file, fmt, batch_size, prompt_field, id_field, kinds)
    )
    seen = 0
    for batch in batches:
        if limit is not None and seen + len(batch) >= limit:
            keep = limit - seen
            yield PromptBatch(
                batch.prompts[:keep],
                None if batch.ids is None else batch.ids[:keep],
                batch.rows[:keep],
            )
            return
        seen += len(batch)
        yield batch
    if seen == 0:
        raise DataError("no prompts found", file=str(path))


def _file_batches(
    path: Path, fmt: str, batch_size: int, prompt_field: str, id_field: str | None,
    kinds: IdKinds,
) -> Iterator[PromptBatch]:
    if fmt == "jsonl":
        return _jsonl_batches(path, batch_size, prompt_field, id_field, kinds)
    if fmt == "text":
        return _text_batches(path, batch_size)
    return _arrow_batches(path, fmt, batch_size, prompt_field, id_field, kinds)


def count_rows(path: Path) -> int | None:
    """Rows of a Parquet input from its metadata (None for formats that need a full read)."""
    try:
        if input_format(path) != "parquet":
            return None
        return ds.dataset(path, format="parquet").count_rows()
    except (pa.ArrowInvalid, OSError, DataError):
        return None


def _bad_prompt(value: object) -> str | None:
    if value is None:
        return "missing (null) prompt"
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    if not value.strip():
        return "empty prompt"
    return None


def _jsonl_batches(
    path: Path, batch_size: int, prompt_field: str, id_field: str | None, kinds: IdKinds
) -> Iterator[PromptBatch]:
    name = str(path)
    prompts: list[str] = []
    ids: list[int | str] = []
    rows: list[int] = []

    def flush() -> PromptBatch:
        id_array = None
        if id_field is not None:
            id_array = pa.array(ids, pa.int64() if kinds.kind == "integer" else pa.string())
        batch = PromptBatch(pa.array(prompts, pa.string()), id_array, np.array(rows))
        prompts.clear(), ids.clear(), rows.clear()
        return batch

    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e})", file=name, row=line_no) from None
            if not isinstance(record, dict):
                raise DataError("expected a JSON object", file=name, row=line_no)
            if prompt_field not in record:
                raise DataError("missing field", file=name, row=line_no, field=prompt_field)
            prompt = record[prompt_field]
            problem = _bad_prompt(prompt)
            if problem:
                raise DataError(problem, file=name, row=line_no, field=prompt_field)
            if id_field is not None:
                ids.append(_jsonl_id(record, line, id_field, kinds, name, line_no))
            prompts.append(prompt)
            rows.append(line_no)
            if len(prompts) == batch_size:
                yield flush()
    if prompts:
        yield flush()


def _jsonl_id(
    record: dict, line: bytes, field: str, kinds: IdKinds, file: str, row: int
) -> int | str:
    """The checked id of one JSON Lines record."""
    if field not in record:
        raise DataError("missing field", file=file, row=row, field=field)
    value = record[field]
    if isinstance(value, float):
        # orjson reads integers beyond 64 bits as floats: name the number as written
        value = json.loads(line)[field]
    kinds.check(check_id(value, file=file, row=row, field=field), file=file, row=row,
                field=field)
    return value


def _text_batches(path: Path, batch_size: int) -> Iterator[PromptBatch]:
    prompts: list[str] = []
    rows: list[int] = []
    blank = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = decode_line(raw, str(path), line_no).rstrip("\r\n")
            if not line.strip():
                blank += 1
                continue
            prompts.append(line)
            rows.append(line_no)
            if len(prompts) == batch_size:
                yield PromptBatch(pa.array(prompts, pa.string()), None, np.array(rows))
                prompts, rows = [], []
    if prompts:
        yield PromptBatch(pa.array(prompts, pa.string()), None, np.array(rows))
    if blank:
        logger.info("%s: skipped %d blank lines", path, blank)


def _arrow_batches(
    path: Path, fmt: str, batch_size: int, prompt_field: str, id_field: str | None,
    kinds: IdKinds,
) -> Iterator[PromptBatch]:
    name = str(path)
    columns = [prompt_field] + ([id_field] if id_field and id_field != prompt_field else [])
    if fmt == "csv":
        # prompts and ids stay text exactly as written (no number or null guessing)
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, strings_can_be_null=False
        )
        # prompts often span lines: quoted newlines must not split a record
        parse = pacsv.ParseOptions(newlines_in_values=True)
        file_format = ds.CsvFileFormat(parse_options=parse, convert_options=convert)
    else:
        file_format = ds.ParquetFileFormat()
    if fmt == "csv" and _odd_quote_count(path):
        # pyarrow reads a quoted field that is never closed to the end of the file, taking
        # every later record into it; only an odd number of quotes can leave one open. (Text
        # after a closing quote, "ab"cd, is read as abcd, as pandas reads it: checking for it
        # would take a full Python parse, ~2.5x pyarrow's time.)
        _locate_csv_error(path)
    try:
        dataset = ds.dataset(path, format=file_format)
        missing = [c for c in columns if c not in dataset.schema.names]
    except (pa.ArrowInvalid, OSError) as e:
        if fmt == "csv":
            _locate_csv_error(path)
        raise DataError(f"not a readable {fmt.upper()} file ({e})", file=name) from None
    if missing:
        raise DataError(
            f"missing column; the file has {dataset.schema.names}", file=name, field=missing[0]
        )
    _check_text_type(dataset.schema.field(prompt_field).type, name, prompt_field)
    start = 2 if fmt == "csv" else 1  # as prefroute.validate counts: a CSV header is row 1
    if fmt == "csv":
        scanner = dataset.to_batches(
            columns=columns, batch_size=batch_size, batch_readahead=1, fragment_readahead=1
        )
    else:
        # the dataset scanner decodes a Parquet file's row groups ahead of the consumer (peak
        # RSS grew ~0.3 GB per million rows); ParquetFile.iter_batches holds one at a time
        scanner = _parquet_batches(path, columns, batch_size)
    while True:
        try:
            record_batch = next(scanner)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as e:
            if fmt == "csv":
                _locate_csv_error(path)
            raise DataError(f"not a readable {fmt.upper()} file ({e})", file=name) from None
        if record_batch.num_rows == 0:
            continue
        prompts = checked_prompt_column(record_batch.column(prompt_field), name, start,
                                        prompt_field)
        ids = None
        if id_field:
            ids = check_id_column(
                record_batch.column(id_field), file=name, first_row=start, field=id_field,
                kinds=kinds,
            )
        rows = np.arange(start, start + record_batch.num_rows)
        start += record_batch.num_rows
        yield PromptBatch(prompts, ids, rows)


def _parquet_batches(
    path: Path, columns: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    # pre_buffer (pyarrow's default) keeps every row group's read cache until the file is
    # closed: Arrow memory grew 0.32 GB per million 500-character prompts. Plain buffered
    # reads hold one 1 MiB buffer and one row group at a time.
    with pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20) as parquet:
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns)


def _check_text_type(kind: pa.DataType, name: str | None, field: str) -> None:
    if not is_text_type(kind):
        raise DataError(f"expected a text column, got {kind}", file=name, field=field)


def checked_prompt_column(
    column: pa.Array | pa.ChunkedArray, name: str | None, start: int | None, field: str
) -> pa.Array:
    """``column`` as one plain string array (one output schema for every input); a
    DataError for a column that is not text or at its first null or blank prompt, whose row
    counts from ``start`` (None when unknown)."""
    _check_text_type(column.type, name, field)
    prompts = plain_text(column)
    blank = pc.or_kleene(
        pc.is_null(prompts), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(prompts)), 0)
    )
    if pc.any(blank).as_py():
        first = int(pc.index(blank, True).as_py())
        problem = _bad_prompt(prompts[first].as_py())
        row = None if start is None else start + first
        raise DataError(problem or "empty prompt", file=name, row=row, field=field)
    return prompts


def _odd_quote_count(path: Path) -> bool:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b'"')
    return count % 2 == 1


def _locate_csv_error(path: Path) -> None:
    """Find the first CSV record pyarrow could not read, or would misread, and raise a
    DataError naming it: bad quoting (``prefroute.validate.csv_rows``), a repeated column
    name, a record with the wrong number of fields, text that is not UTF-8."""
    name = str(path)
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        records = csv_rows(text, name)
        header = next(records, [])
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise DataError(f"the header names column {repeated[0]!r} more than once",
                            file=name, row=1)
        for row_no, record in enumerate(records, start=2):
            if len(record) != len(header):
                raise DataError(
                    f"expected {len(header)} fields, got {len(record)}", file=name, row=row_no
                )
            for column, value in zip(header, record):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(
                        "not valid UTF-8", file=name, row=row_no, field=column
                    ) from None
