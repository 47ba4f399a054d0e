"""A user's own outcome table: a correctness CSV or JSONL with one column per model.

CSV: a ``prompt`` column (optional ``id``) and one column per model holding True/False,
0/1 or a number (a judge score); an empty cell is "no result". JSONL: one object per line
with ``prompt`` (optional ``id``) and the models' scores as fields (bool or number; null or
missing: no result). Errors name the file, row and field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefroute.data.outcomes import OutcomeTable, _bool_cell, _float_cell, _read_csv
from prefroute.data.tabular import iter_jsonl
from prefroute.errors import DataError

_NOT_MODELS = {"prompt", "id", "prompt_id", "question_id"}


def _cell(value: str, path: str, row: int, field: str) -> float:
    try:
        return _bool_cell(value, path, row, field)
    except DataError:
        return _float_cell(value, path, row, field)


def load_outcome_file(path: str | Path) -> OutcomeTable:
    """An ``OutcomeTable`` from a correctness CSV or JSONL file (see the module docstring)."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError("file not found", file=where)
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = list(iter_jsonl(path))
        if not rows:
            raise DataError("no rows", file=where)
        models = list(dict.fromkeys(k for _, r in rows for k in r if k not in _NOT_MODELS))
        scores = np.full((len(rows), len(models)), np.nan)
        prompts, ids = [], []
        for n, (line, r) in enumerate(rows):
            prompt = r.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError("missing or empty prompt", file=where, row=line, field="prompt")
            prompts.append(prompt)
            ids.append(str(r.get("id", r.get("prompt_id", n))))
            for j, m in enumerate(models):
                v = r.get(m)
                if v is None:
                    continue
                if isinstance(v, bool) or isinstance(v, (int, float)):
                    if not np.isfinite(float(v)):
                        raise DataError("not a finite number", file=where, row=line, field=m)
                    scores[n, j] = float(v)
                else:
                    raise DataError(f"expected a bool or a number, got {v!r}", file=where,
                                    row=line, field=m)
    else:
        header, body = _read_csv(path, ["prompt"])
        models = [h for h in header if h not in _NOT_MODELS and not h.endswith("_response")
                  and "|" not in h]
        p_col = header.index("prompt")
        id_col = header.index("id") if "id" in header else None
        prompts, ids = [], []
        scores = np.full((len(body), len(models)), np.nan)
        for n, r in enumerate(body):
            line = n + 2
            if not r[p_col].strip():
                raise DataError("empty prompt", file=where, row=line, field="prompt")
            prompts.append(r[p_col])
            ids.append(r[id_col] if id_col is not None else str(n))
            for j, m in enumerate(models):
                scores[n, j] = _cell(r[header.index(m)], where, line, m)
    if len(models) < 2:
        raise DataError(f"needs at least two model columns, found {models}", file=where)
    return OutcomeTable(path.stem, prompts, ids, models, scores)
