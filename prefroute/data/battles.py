"""The battle table: one row per pairwise comparison, kept columnar in pyarrow."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prefroute._logging import logger
from prefroute.data.tabular import iter_jsonl
from prefroute.errors import DataError
from prefroute.validate import (
    MAX_WEIGHT,
    check_number,
    check_number_array,
    check_probability,
    check_strings_in,
    check_text,
    check_weight,
    first_bad_text,
    numbered,
    row_numbers_of,
)

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
REQUIRED_COLUMNS = ("prompt", "model_a", "model_b", "winner")
OPTIONAL_COLUMNS = ("weight", "p_b_wins", "source", "conversation")

SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("winner", pa.string()),
        ("weight", pa.float64()),
        ("p_b_wins", pa.float64()),
        ("source", pa.string()),
        # Conversations are stored JSON-encoded: nested lists of dicts vary too much
        # between sources to share one Arrow struct type.
        ("conversation", pa.string()),
    ]
)


MODEL_COLUMNS = ("model_a", "model_b")
# rows of a dropped group named in the warning; the count covers the rest
SHOWN_ROWS = 5


@dataclass(frozen=True)
class Origin:
    """Where each battle was read: its file (None when unknown) and its true row there."""

    files: np.ndarray  # object: one file name (or None) per battle
    rows: np.ndarray  # int64

    @classmethod
    def of(cls, n: int, file: str | None = None, rows: Sequence[int] | None = None) -> Origin:
        numbers = np.arange(1, n + 1) if rows is None else np.asarray(rows, dtype=np.int64)
        return cls(np.full(n, file, dtype=object), numbers)

    def take(self, indices: np.ndarray) -> Origin:
        return Origin(self.files[indices], self.rows[indices])

    @staticmethod
    def concat(parts: Sequence[Origin]) -> Origin:
        return Origin(
            np.concatenate([p.files for p in parts]), np.concatenate([p.rows for p in parts])
        )

    def describe(self, indices: np.ndarray) -> str:
        """The first ``SHOWN_ROWS`` of ``indices``: "file a.csv, rows 4, 17; file b.csv, row 3"."""
        groups: list[tuple[str | None, list[int]]] = []
        for i in indices[:SHOWN_ROWS]:
            file, row = self.files[i], int(self.rows[i])
            if groups and groups[-1][0] == file:
                groups[-1][1].append(row)
            else:
                groups.append((file, [row]))
        text = "; ".join(
            ("" if file is None else f"file {file}, ")
            + ("row " if len(rows) == 1 else "rows ") + ", ".join(map(str, rows))
            for file, rows in groups
        )
        return text + (", ..." if len(indices) > SHOWN_ROWS else "")


def _validate_row(row: Mapping, index: int, file: str | None, text_ok: bool = False) -> dict:
    out = {}
    for field in REQUIRED_COLUMNS:
        if field not in row or row[field] is None:
            raise DataError("missing required field", file=file, row=index, field=field)
        out[field] = check_text(row[field], file=file, row=index, field=field)
    if not out["prompt"].strip():
        raise DataError("empty prompt", file=file, row=index, field="prompt")
    for field in MODEL_COLUMNS:
        if not out[field].strip():
            raise DataError("empty model name", file=file, row=index, field=field)
    if out["winner"] not in WINNERS:
        raise DataError(
            f"unknown winner {out['winner']!r}; allowed: {list(WINNERS)}",
            file=file,
            row=index,
            field="winner",
        )
    out["weight"] = check_weight(
        row.get("weight"), file=file, row=index, field="weight", text_ok=text_ok
    )
    out["p_b_wins"] = check_probability(
        row.get("p_b_wins"), file=file, row=index, field="p_b_wins", text_ok=text_ok
    )
    source = row.get("source")
    out["source"] = None if source is None else check_text(
        str(source), file=file, row=index, field="source"
    )
    conversation = row.get("conversation")
    if conversation is not None:
        check_strings_in(conversation, file=file, row=index, field="conversation")
        if not isinstance(conversation, str):
            conversation = json.dumps(conversation, ensure_ascii=False, allow_nan=False)
    out["conversation"] = conversation
    return out


class Battles:
    """A columnar table of pairwise battles.

    Columns: ``prompt`` (the routing text: the first user turn), ``model_a``, ``model_b``,
    ``winner`` in ``model_a | model_b | tie | tie (bothbad)``, and the optional ``weight``,
    ``p_b_wins`` (a judge's probability that model_b is better), ``source`` and
    ``conversation`` (JSON text). Every constructor validates its rows.

    Examples
    --------
    >>> b = Battles.from_records([{"prompt": "hi", "model_a": "x", "model_b": "y",
    ...                            "winner": "model_a"}])
    >>> len(b)
    1
    """

    def __init__(self, table: pa.Table, origin: Origin | None = None) -> None:
        missing = [c for c in SCHEMA.names if c not in table.column_names]
        if missing:
            raise DataError(f"battle table lacks columns {missing}")
        self.table = table.select(SCHEMA.names).cast(SCHEMA)
        # the file and row of each battle, for reports of dropped rows (None: not known)
        self.origin = origin if origin is not None and len(origin.rows) == len(table) else None

    # construction -------------------------------------------------------------------
    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping],
        *,
        file: str | None = None,
        row_numbers: Sequence[int] | None = None,
    ) -> Battles:
        """Validate and build from dict rows; errors give ``row_numbers`` (default: the
        records' own, see ``prefroute.validate.Records``, else 1, 2, 3...)."""
        records = list(records) if not isinstance(records, Sequence) else records
        numbers = row_numbers if row_numbers is not None else row_numbers_of(records)
        pairs = zip(numbers, records, strict=True) if numbers is not None else numbered(records)
        text_ok = getattr(records, "text_cells", False)
        rows, seen = [], []
        for i, r in pairs:
            rows.append(_validate_row(r, i, file, text_ok))
            seen.append(i)
        return cls(pa.Table.from_pylist(rows, schema=SCHEMA), Origin.of(len(rows), file, seen))

    @classmethod
    def from_columns(
        cls,
        prompt: Sequence[str],
        model_a: Sequence[str],
        model_b: Sequence[str],
        winner: Sequence[str],
        *,
        file: str | None = None,
        row_numbers: Sequence[int] | None = None,
        **optional: Sequence | None,
    ) -> Battles:
        """Build from equal-length columns, validated in bulk (fast path for loaders).

        ``row_numbers``: the true row of each value in ``file``, for error messages.
        """
        n = len(prompt)
        cols = {"prompt": prompt, "model_a": model_a, "model_b": model_b, "winner": winner}
        for name in OPTIONAL_COLUMNS:
            cols[name] = optional.get(name)
        unknown = set(optional) - set(OPTIONAL_COLUMNS)
        if unknown:
            raise DataError(f"unknown battle columns {sorted(unknown)}")
        arrays = []
        for field in SCHEMA:
            values = cols[field.name]
            if values is None:
                arrays.append(pa.nulls(n, type=field.type))
            else:
                if len(values) != n:
                    raise DataError(
                        f"column has {len(values)} values, expected {n}", field=field.name
                    )
                try:
                    arrays.append(pa.array(values, type=field.type, from_pandas=True))
                except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                    bad = first_bad_text(values) if field.type == pa.string() else None
                    i = bad if bad is not None else 0
                    row = row_numbers[i] if row_numbers is not None else i + 1
                    if field.type == pa.string():
                        check_text(values[i], file=file, row=row, field=field.name)
                    for j, value in enumerate(values):  # a number column: name the bad one
                        check_number(value, file=file, field=field.name,
                                     row=row_numbers[j] if row_numbers is not None else j + 1)
                    raise DataError("cannot be stored", file=file, row=row,
                                    field=field.name) from None
        table = pa.Table.from_arrays(arrays, schema=SCHEMA)
        battles = cls(table, Origin.of(n, file, row_numbers))
        battles.validate(file=file, row_numbers=row_numbers)
        return battles

    def validate(
        self, *, file: str | None = None, row_numbers: Sequence[int] | None = None
    ) -> None:
        """Check every row; raise DataError naming the first bad row and field."""
        t = self.table
        for name, high in (("weight", MAX_WEIGHT), ("p_b_wins", 1.0)):
            check_number_array(
                t[name].to_numpy(zero_copy_only=False).astype(np.float64),
                file=file, field=name, low=0.0, high=high, row_numbers=row_numbers,
            )

        def true_row(index: int) -> int:
            return row_numbers[index] if row_numbers is not None else index + 1

        for field in REQUIRED_COLUMNS:
            nulls = pc.is_null(t[field])
            if pc.any(nulls).as_py():
                row = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
                raise DataError(
                    "missing required field", file=file, row=true_row(row), field=field
                )
        for field, problem in (("prompt", "empty prompt"), *(
            (name, "empty model name") for name in MODEL_COLUMNS
        )):
            empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(t[field])), 0)
            if pc.any(empty).as_py():
                row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
                raise DataError(problem, file=file, row=true_row(row), field=field)
        bad = pc.invert(pc.is_in(t["winner"], value_set=pa.array(WINNERS)))
        if pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"unknown winner {t['winner'][row].as_py()!r}; allowed: {list(WINNERS)}",
                file=file,
                row=true_row(row),
                field="winner",
            )

    # I/O ------------------------------------------------------------------------------
    @classmethod
    def read_jsonl(cls, path: str | Path) -> Battles:
        """Read a battles JSONL file (one object per line); errors name the true line."""
        numbered_rows = list(iter_jsonl(path))
        return cls.from_records(
            [record for _, record in numbered_rows],
            file=str(path),
            row_numbers=[i for i, _ in numbered_rows],
        )

    def to_jsonl(self, path: str | Path) -> None:
        from prefroute.io import atomic_write

        with atomic_write(path) as f:
            for row in self.table.to_pylist():
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")

    @classmethod
    def read_parquet(cls, path: str | Path) -> Battles:
        path = str(path)
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"not a readable Parquet file ({e})", file=path) from None
        for name in REQUIRED_COLUMNS:
            if name not in table.column_names:
                raise DataError("missing required column", file=path, field=name)
        # row by row, exactly as JSONL: a bool p_b_wins or a NaN weight is refused, not cast
        return cls.from_records(table.to_pylist(), file=path)

    def to_parquet(self, path: str | Path) -> None:
        from prefroute.io import atomic_write

        with atomic_write(path, "wb", encoding=None) as f:
            pq.write_table(self.table, f)

    @classmethod
    def read(cls, path: str | Path) -> Battles:
        """Read a battles file by extension: .jsonl/.json, .csv (with or without a BOM) or
        .parquet; every format gets the same row validation (``prefroute.validate``)."""
        suffix = Path(path).suffix.lower()
        if suffix in (".jsonl", ".json"):
            return cls.read_jsonl(path)
        if suffix == ".parquet":
            return cls.read_parquet(path)
        if suffix == ".csv":
            from prefroute.data.tabular import read_records

            return cls.from_records(read_records(path), file=str(path))
        raise DataError(
            f"unsupported battles file type {suffix!r} (use .jsonl, .csv or .parquet)",
            file=str(path),
        )

    def write(self, path: str | Path) -> None:
        suffix = Path(path).suffix.lower()
        if suffix == ".parquet":
            self.to_parquet(path)
        else:
            self.to_jsonl(path)

    # table operations ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Battles(n={len(self)}, models={len(self.models())})"

    def column(self, name: str) -> list:
        return self.table[name].to_pylist()

    @property
    def prompts(self) -> list[str]:
        return self.column("prompt")

    def numeric(self, name: str) -> np.ndarray:
        """A float column as a numpy array, nulls as NaN."""
        return self.table[name].to_numpy(zero_copy_only=False).astype(np.float64)

    def models(self) -> list[str]:
        both = pa.concat_arrays(
            [self.table["model_a"].combine_chunks(), self.table["model_b"].combine_chunks()]
        )
        return sorted(pc.unique(both).to_pylist())

    def filter(self, mask: np.ndarray | pa.Array) -> Battles:
        mask = np.asarray(mask, dtype=bool)
        return Battles(self.table.filter(pa.array(mask)), self._origin_of(np.flatnonzero(mask)))

    def take(self, indices: Sequence[int] | np.ndarray) -> Battles:
        indices = np.asarray(indices, dtype=np.int64)
        return Battles(self.table.take(pa.array(indices)), self._origin_of(indices))

    def _origin_of(self, indices: np.ndarray) -> Origin | None:
        return None if self.origin is None else self.origin.take(indices)

    @staticmethod
    def concat(parts: Sequence[Battles]) -> Battles:
        if not parts:
            raise DataError("nothing to concatenate")
        origin = Origin.concat([p.origin or Origin.of(len(p)) for p in parts])
        return Battles(pa.concat_tables([p.table for p in parts]).combine_chunks(), origin)

    def split(self, test_size: float = 0.1, *, seed: int = 0) -> tuple[Battles, Battles]:
        """Random (train, test) split by row."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self))
        n_test = int(round(test_size * len(self)))
        return self.take(np.sort(order[n_test:])), self.take(np.sort(order[:n_test]))

    def with_column(self, name: str, values: Sequence) -> Battles:
        index = self.table.column_names.index(name)
        array = pa.array(values, type=SCHEMA.field(name).type, from_pandas=True)
        return Battles(self.table.set_column(index, name, array), self.origin)

    def rename_models(self, mapping: Mapping[str, str]) -> Battles:
        """Replace model names (e.g. aliases to canonical names)."""
        t = self.table
        for col in ("model_a", "model_b"):
            values = [mapping.get(m, m) for m in t[col].to_pylist()]
            t = t.set_column(t.column_names.index(col), col, pa.array(values, pa.string()))
        return Battles(t, self.origin)

    def swap_sides(self, mask: np.ndarray) -> Battles:
        """Swap model_a and model_b (winner and p_b_wins follow) where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        a = np.array(self.column("model_a"), dtype=object)
        b = np.array(self.column("model_b"), dtype=object)
        w = np.array(self.column("winner"), dtype=object)
        p = self.numeric("p_b_wins")
        a2, b2 = np.where(mask, b, a), np.where(mask, a, b)
        flip = {"model_a": "model_b", "model_b": "model_a"}
        w2 = np.array([flip.get(x, x) if m else x for x, m in zip(w, mask)], dtype=object)
        p2 = np.where(mask, 1.0 - p, p)
        out = self.with_column("model_a", list(a2)).with_column("model_b", list(b2))
        return out.with_column("winner", list(w2)).with_column("p_b_wins", p2)

    def to_records(self) -> list[dict]:
        return self.table.to_pylist()

    def log_filter(self, mask: np.ndarray, reason: str, *, level: int = logging.INFO) -> Battles:
        """Keep rows where ``mask`` is true; log the count removed, why, and the first rows:
        "REASON: removed 3 of 40 battles (file b.csv, rows 4, 17, 52)". ``level`` applies
        when rows are removed (a WARNING is shown without -v); removing none is INFO."""
        dropped = np.flatnonzero(~np.asarray(mask, dtype=bool))
        if len(dropped):
            where = (self.origin or Origin.of(len(self))).describe(dropped)
            logger.log(level, "%s: removed %d of %d battles (%s)", reason, len(dropped),
                       len(self), where)
        else:
            logger.info("%s: removed 0 of %d battles", reason, len(self))
        return self.filter(mask)
