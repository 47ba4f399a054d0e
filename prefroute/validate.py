"""The one validation layer every input format passes through.

Readers (JSONL, JSON, CSV with or without a BOM, Parquet, hub datasets, outcome tables,
prompt files) decode bytes and check fields here, so every bad value gets the same clear
``DataError`` naming the file, the true row and the field:

- text must be valid UTF-8 without lone surrogates (``\\ud800`` escapes from badly
  encoded sources), reported with the row it sits in;
- numbers must be real numbers (not booleans, not NaN / Infinity), inside their range:
  a ``p_b_wins`` in [0, 1], a ``weight`` in [0, ``MAX_WEIGHT``].

Row numbers are what a person sees in the file: the line of a JSONL file (blank lines
counted), the row of a CSV file counting the header as row 1, the record of a Parquet file
or a data set counting from 1.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefroute.errors import DataError

# Larger weights only come from broken data: they overflow a weighted loss (1e308 * 2 = inf).
MAX_WEIGHT = 1e6


class Records(list):
    """Rows read from a file, with the true row number of each (see the module doc)."""

    def __init__(
        self,
        rows: Iterable[dict],
        row_numbers: Sequence[int] | None = None,
        *,
        text_cells: bool = False,
    ) -> None:
        super().__init__(rows)
        self.row_numbers = list(row_numbers) if row_numbers is not None else None
        # CSV cells are all text, so numbers arrive as "0.5"; typed formats must hold numbers
        self.text_cells = text_cells


def numbered(rows: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """(true row number, row) pairs: a ``Records``' own numbers, else 1, 2, 3..."""
    numbers = getattr(rows, "row_numbers", None)
    if numbers is None or len(numbers) != len(rows):
        return enumerate(rows, start=1)
    return zip(numbers, rows, strict=True)


def row_numbers_of(rows: Sequence[Any]) -> list[int] | None:
    numbers = getattr(rows, "row_numbers", None)
    return numbers if numbers is not None and len(numbers) == len(rows) else None


# text -------------------------------------------------------------------------------
def decode_utf8(data: bytes, file: str, *, tabular: bool = False) -> str:
    """Decode a whole file as UTF-8 (a leading BOM is dropped); a bad byte names its row.

    ``tabular``: count rows as CSV records (header = row 1) rather than lines.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        prefix = data[: e.start].decode("utf-8-sig", errors="replace")
        if tabular:
            row = sum(1 for _ in csv.reader(io.StringIO(prefix))) or 1
        else:
            row = prefix.count("\n") + 1
        raise DataError(
            f"is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); save the file "
            "as UTF-8",
            file=file,
            row=row,
        ) from None


def csv_rows(text: str | Iterable[str], file: str) -> Iterator[list[str]]:
    """The records of CSV ``text`` (a string, or a stream opened with ``newline=""``), the
    header first, parsed strictly: a quoted field that is never closed, or text after a
    closing quote, is a DataError naming the record (header = row 1) and the line it starts
    on. The lenient default would swallow every later record into that field, or glue the
    stray text on, without a word."""
    lines = io.StringIO(text, newline="") if isinstance(text, str) else text
    reader = csv.reader(lines, strict=True)
    row = 1
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            what = ("a quoted field is never closed" if "unexpected end of data" in str(e)
                    else f"malformed quoting ({e})")
            raise DataError(
                f"not a readable CSV file: {what} (the record starting on line {start})",
                file=file, row=row,
            ) from None
        yield record
        row += 1


def decode_line(raw: bytes, file: str, row: int) -> str:
    """One line of a text file as UTF-8 (a BOM on the first line is dropped)."""
    try:
        return raw.decode("utf-8-sig" if row == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"is not valid UTF-8 (byte {raw[e.start]:#04x} at character {e.start}); save the "
            "file as UTF-8",
            file=file,
            row=row,
        ) from None


def check_text(value: Any, *, file: str | None, row: int | None, field: str) -> str:
    """``value`` if it is a string that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__}", file=file, row=row, field=field
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"holds a lone surrogate {value[e.start]!r} at character {e.start} (badly decoded "
            "text); fix the encoding of the source",
            file=file,
            row=row,
            field=field,
        ) from None
    return value


def check_strings_in(value: Any, *, file: str | None, row: int | None, field: str) -> None:
    """Every string nested in ``value`` (lists, dicts) passes ``check_text``."""
    stack = [(value, field)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            check_text(item, file=file, row=row, field=where)
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
            for key in item:
                if isinstance(key, str):
                    check_text(key, file=file, row=row, field=where or "(key)")
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))


# numbers ----------------------------------------------------------------------------
def check_number(
    value: Any,
    *,
    file: str | None,
    row: int | None,
    field: str,
    low: float | None = None,
    high: float | None = None,
    optional: bool = True,
    text_ok: bool = True,
) -> float | None:
    """A finite float from a number or (with ``text_ok``, for CSV) numeric text; None for a
    missing value.

    Missing: None, or an empty cell (CSV). Refused: booleans, NaN, +-Infinity, text that
    is not a number (any text unless ``text_ok``), values outside [low, high].
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise DataError("is missing", file=file, row=row, field=field)
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"is a boolean ({value}), not a number", file=file, row=row, field=field)
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        if not text_ok:
            raise DataError(
                f"must be a number, got the text {value!r}", file=file, row=row, field=field
            )
        try:
            number = float(value.strip())
        except ValueError:
            raise DataError(f"not a number: {value!r}", file=file, row=row, field=field) from None
    else:
        raise DataError(
            f"not a number: {type(value).__name__} {value!r}", file=file, row=row, field=field
        )
    if not math.isfinite(number):
        raise DataError(f"must be a finite number, got {value!r}", file=file, row=row, field=field)
    if (low is not None and number < low) or (high is not None and number > high):
        raise DataError(
            f"must lie in [{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}], got {value!r}",
            file=file,
            row=row,
            field=field,
        )
    return number


def check_probability(
    value: Any, *, file: str | None, row: int | None, field: str, text_ok: bool = False
) -> float | None:
    """A probability in [0, 1] (e.g. ``p_b_wins``), or None when missing."""
    return check_number(
        value, file=file, row=row, field=field, low=0.0, high=1.0, text_ok=text_ok
    )


def check_weight(
    value: Any, *, file: str | None, row: int | None, field: str, text_ok: bool = False
) -> float | None:
    """A sample weight in [0, MAX_WEIGHT], or None when missing."""
    return check_number(
        value, file=file, row=row, field=field, low=0.0, high=MAX_WEIGHT, text_ok=text_ok
    )


def check_number_array(
    values: np.ndarray,
    *,
    file: str | None,
    field: str,
    low: float | None = None,
    high: float | None = None,
    row_numbers: Sequence[int] | None = None,
    missing_ok: bool = True,
) -> None:
    """The bulk form of ``check_number`` for a float column (NaN = missing when allowed)."""
    values = np.asarray(values, dtype=np.float64)
    bad = np.isinf(values)
    if not missing_ok:
        bad |= np.isnan(values)
    with np.errstate(invalid="ignore"):
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = row_numbers[i] if row_numbers is not None else i + 1
        check_number(values[i], file=file, row=row, field=field, low=low, high=high,
                     optional=missing_ok)
        raise DataError(f"is not allowed: {values[i]!r}", file=file, row=row, field=field)


def first_bad_text(values: Sequence[Any]) -> int | None:
    """Index of the first value that is not a UTF-8-encodable string (None: all good)."""
    for i, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, str):
            return i
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return i
    return None


# ids --------------------------------------------------------------------------------
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ID_RULE = "ids are strings or integers"


def _article(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _kind_of(value: Any) -> str:
    """How a person would name ``value``'s type: a list, an object, bytes..."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return _article(type(value).__name__)


def check_id(value: Any, *, file: str | None, row: int | None, field: str) -> str:
    """The kind ("integer" or "string") of a valid id; anything else is a DataError.

    An id is a non-empty string or an integer that fits int64: never null, a boolean, a
    decimal number, or a list or object.
    """
    def fail(message: str) -> DataError:
        return DataError(message, file=file, row=row, field=field)

    if value is None:
        raise fail("id is null")
    if isinstance(value, (bool, np.bool_)):
        raise fail(f"id {str(bool(value)).lower()} is a boolean; {_ID_RULE}")
    if isinstance(value, (int, np.integer)):
        if not INT64_MIN <= int(value) <= INT64_MAX:
            raise fail(f"id {value} does not fit a 64-bit integer; write it as a string")
        return "integer"
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer():
            raise fail(f"id {value!r} is a decimal number, not an integer; {_ID_RULE}")
        raise fail(f"id {value!r} is a number that is not an integer; {_ID_RULE}")
    if isinstance(value, str):
        if not value:
            raise fail("id is empty")
        check_text(value, file=file, row=row, field=field)
        return "string"
    raise fail(f"id is {_kind_of(value)}; {_ID_RULE}")


class IdKinds:
    """Holds every id of one input to the kind of its first id (all integers or all strings)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.file: str | None = None
        self.row: int | None = None

    def check(self, kind: str, *, file: str | None, row: int | None, field: str) -> None:
        if self.kind is None:
            self.kind, self.file, self.row = kind, file, row
            return
        if kind != self.kind:
            first = f"row {self.row}" + ("" if self.file == file else f" of {self.file}")
            raise DataError(
                f"ids of mixed types: {first} has {_article(self.kind)}, row {row} "
                f"{_article(kind)}; use one type",
                file=file,
                row=row,
                field=field,
            )


def is_text_type(kind: pa.DataType) -> bool:
    """Text as Arrow stores it: string, large_string, string_view, or a dictionary of those
    (pandas categoricals, Spark's dictionary-encoded columns)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind))


def plain_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A text column (``is_text_type``) as one plain ``string`` array, so that every input
    gives one output schema."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values if values.type == pa.string() else values.cast(pa.string())


def check_id_column(
    ids: pa.Array | pa.ChunkedArray,
    *,
    file: str | None,
    first_row: int | None,
    field: str,
    kinds: IdKinds | None = None,
) -> pa.Array:
    """A column of ids as ``int64`` or ``string``, checked as ``check_id`` checks one id.

    ``first_row``: the true row of the first value (None when unknown). Refused: nulls, empty
    strings, integers beyond int64, and columns of any other type (floats, booleans, nested).
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if is_text_type(ids.type):  # large, view: plain string
        ids = plain_text(ids)

    def row_of(index: int) -> int | None:
        return None if first_row is None else first_row + index

    def first(mask: pa.Array) -> int | None:
        return int(pc.index(mask, True).as_py()) if pc.any(mask).as_py() else None

    if ids.null_count:
        i = first(pc.is_null(ids))
        raise DataError("id is null", file=file, row=row_of(i), field=field)
    if pa.types.is_integer(ids.type):
        kind = "integer"
        if ids.type == pa.uint64() and len(ids):
            i = first(pc.greater(ids, pa.scalar(INT64_MAX, pa.uint64())))
            if i is not None:
                check_id(ids[i].as_py(), file=file, row=row_of(i), field=field)
        ids = ids.cast(pa.int64())
    elif ids.type == pa.string():
        kind = "string"
        i = first(pc.equal(pc.utf8_length(ids), 0))
        if i is not None:
            raise DataError("id is empty", file=file, row=row_of(i), field=field)
    else:
        if len(ids):  # the first value's own message: "id 2.5 is a number that is not..."
            check_id(ids[0].as_py(), file=file, row=row_of(0), field=field)
        raise DataError(
            f"the id column holds {ids.type} values; {_ID_RULE}", file=file, row=row_of(0),
            field=field,
        )
    if kinds is not None and len(ids):
        kinds.check(kind, file=file, row=row_of(0), field=field)
    return ids
