"""Outcome tables ready for N-way routing: missing results handled, seeded train/val/test splits.

Missing results (NaN scores): a model missing on more than ``max_missing`` of the prompts is
dropped (it cannot be evaluated fairly on the prompts it skipped), then prompts still missing
a result for some remaining model are dropped, so every evaluated prompt has every model's
outcome. On MMLU-Pro this drops DeepSeek-Coder-V2 (no result on 1,333 of 9,626 questions)
and the 23 questions without a Gemini result: 29 models x 9,603 questions. Both are logged.

Before that, rows that share an id and a prompt and hold complementary results (RouterBench's
ARC-Challenge has 9 items stored as two rows, one with gpt-3.5-turbo's result and one with the
others') are merged into one row: each model's score and cost come from the row that has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.data.outcomes import OutcomeTable
from prefroute.errors import CheckpointError, ConfigError, DataError, check_range
from prefroute.io import atomic_write_text

SPLIT_FILE = "split.json"


@dataclass
class PreparedTable:
    """A complete outcome table and what was removed to make it complete."""

    table: OutcomeTable
    dropped_models: list[str] = field(default_factory=list)
    dropped_rows: int = 0
    max_missing: float = 0.05


def prepare_table(table: OutcomeTable, *, max_missing: float = 0.05) -> PreparedTable:
    """Drop models missing on > ``max_missing`` of prompts, then prompts with any missing result."""
    check_range("max_missing", "prepare_table", max_missing, low=0.0, high=1.0)
    table = merge_split_rows(table)
    missing_share = np.isnan(table.scores).mean(axis=0)
    keep_models = [m for m, s in zip(table.models, missing_share, strict=True) if s <= max_missing]
    dropped = [m for m in table.models if m not in keep_models]
    if len(keep_models) < 2:
        raise DataError(
            f"{table.name}: fewer than 2 models have results on >= {1 - max_missing:.0%} of prompts"
        )
    for m in dropped:
        logger.warning(
            "%s: dropped model %s (no result on %.1f%% of prompts > max_missing=%.1f%%)",
            table.name,
            m,
            100 * missing_share[table.models.index(m)],
            100 * max_missing,
        )
    sub = table.select_models(keep_models)
    complete = sub.complete_rows()
    if sub.costs is not None:
        complete &= ~np.isnan(sub.costs).any(axis=1)
    n_dropped = int((~complete).sum())
    if n_dropped:
        logger.warning(
            "%s: dropped %d of %d prompts missing a result (or cost) for some model",
            table.name,
            n_dropped,
            len(sub),
        )
    return PreparedTable(sub.subset(np.flatnonzero(complete)), dropped, n_dropped, max_missing)


def merge_split_rows(table: OutcomeTable) -> OutcomeTable:
    """Merge rows with the same id and prompt whose known results do not overlap.

    Rows that share an id but conflict (different prompts, or two results for one model)
    are an error: splits and checkpoints refer to prompts by id.
    """
    groups: dict[str, list[int]] = {}
    for i, rid in enumerate(table.ids):
        groups.setdefault(rid, []).append(i)
    repeated = {rid: rows for rid, rows in groups.items() if len(rows) > 1}
    if not repeated:
        return table
    scores = table.scores.copy()
    costs = None if table.costs is None else table.costs.copy()
    drop: list[int] = []
    for rid, rows in repeated.items():
        first = rows[0]
        for other in rows[1:]:
            both = ~np.isnan(scores[first]) & ~np.isnan(scores[other])
            if table.prompts[other] != table.prompts[first] or both.any():
                raise DataError(
                    f"{table.name}: id {rid!r} names {len(rows)} rows that cannot be merged "
                    "(different prompts or two results for one model)",
                    row=other,
                    field="id",
                )
            take = np.isnan(scores[first]) & ~np.isnan(scores[other])
            scores[first, take] = scores[other, take]
            if costs is not None:
                costs[first, take] = costs[other, take]
            drop.append(other)
    logger.warning(
        "%s: merged %d rows into %d rows that share their id and hold complementary results",
        table.name,
        len(drop) + len(repeated),
        len(repeated),
    )
    merged = OutcomeTable(
        table.name, table.prompts, table.ids, table.models, scores, costs, table.meta
    )
    dropped = set(drop)
    return merged.subset([i for i in range(len(table)) if i not in dropped])


@dataclass
class Split:
    """Row indices of a prepared table: train (routers), val (policy fitting), test (reporting)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    test_size: float
    val_size: float


def split_rows(n: int, *, test_size: float = 0.2, val_size: float = 0.1, seed: int = 0) -> Split:
    """A seeded random split; ``val_size`` and ``test_size`` are shares of all n rows."""
    check_range(
        "test_size",
        "split_rows",
        test_size,
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    )
    check_range("val_size", "split_rows", val_size, low=0.0, high=1.0, high_inclusive=False)
    if test_size + val_size >= 1.0:
        raise ConfigError(f"test_size + val_size must be < 1; got {test_size} + {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_size * n)))
    n_val = int(round(val_size * n))
    if n - n_test - n_val < 2:
        raise DataError(f"{n} rows are too few for test_size={test_size}, val_size={val_size}")
    test = np.sort(perm[:n_test])
    val = np.sort(perm[n_test : n_test + n_val])
    train = np.sort(perm[n_test + n_val :])
    return Split(train, val, test, seed, test_size, val_size)


def write_split(directory: str | Path, prepared: PreparedTable, split: Split) -> Path:
    """Record the table, its preparation and the split (by prompt id) beside a checkpoint."""
    table = prepared.table
    ids = np.asarray(table.ids, dtype=object)
    record = {
        "table": table.name,
        "models": table.models,
        "dropped_models": prepared.dropped_models,
        "max_missing": prepared.max_missing,
        "seed": split.seed,
        "test_size": split.test_size,
        "val_size": split.val_size,
        "train_ids": ids[split.train].tolist(),
        "val_ids": ids[split.val].tolist(),
        "test_ids": ids[split.test].tolist(),
    }
    path = Path(directory) / SPLIT_FILE
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


def read_split(directory: str | Path, prepared: PreparedTable) -> Split:
    """The split written by ``write_split``, as rows of ``prepared`` (checked against it)."""
    path = Path(directory) / SPLIT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: train the router with `prefroute multi train`, "
            "which records its held-out split there"
        )
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    table = prepared.table
    if record.get("table") != table.name:
        raise ConfigError(
            f"{path}: the router was trained on table {record.get('table')!r}, not {table.name!r}"
        )
    if record.get("models") != table.models:
        raise ConfigError(
            f"{path}: the router routes among {record.get('models')}, but the prepared "
            f"{table.name} table has {table.models} (another --max-missing?)"
        )
    index = {rid: i for i, rid in enumerate(table.ids)}

    def rows(key: str) -> np.ndarray:
        missing = [r for r in record[key] if r not in index]
        if missing:
            raise DataError(
                f"{len(missing)} {key} (e.g. {missing[:3]}) are not in the {table.name} table",
                file=str(path),
                field=key,
            )
        return np.array([index[r] for r in record[key]], dtype=np.int64)

    return Split(
        rows("train_ids"),
        rows("val_ids"),
        rows("test_ids"),
        record["seed"],
        record["test_size"],
        record["val_size"],
    )
