"""Golden-label battles: who was right on questions with a known answer.

Two entry points: from a stored correctness table (any ``OutcomeTable``), or from raw
model answers plus gold answers (extract the final answer, grade it, build the table).
Both end in :func:`prefroute.data.loaders.golden_battles`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_aug.extract import DEFAULT_LETTERS, KINDS, grade
from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.data.loaders import golden_battles
from prefroute.data.outcomes import OutcomeTable
from prefroute.data.tabular import read_records
from prefroute.errors import ConfigError, DataError, check_choice
from prefroute.validate import numbered


def select_rows(table: OutcomeTable, rows: Sequence[int] | np.ndarray | None = None, *,
                ids: Sequence[str] | None = None, meta: Mapping[str, Sequence] | None = None,
                ) -> OutcomeTable:
    """Restrict a table to some items: row indices / a boolean mask, item ids, meta values.

    ``meta={"category": ["math", "physics"]}`` keeps items whose ``category`` is listed.
    Filters combine with AND. An id that is not in the table is an error (a typo would
    otherwise silently shrink the data).
    """
    keep = np.ones(len(table), dtype=bool)
    if rows is not None:
        rows = np.asarray(rows)
        mask = np.zeros(len(table), dtype=bool)
        if rows.dtype == bool:
            if len(rows) != len(table):
                raise ConfigError(f"row mask has {len(rows)} entries, the table has "
                                  f"{len(table)} rows")
            mask = rows
        else:
            if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
                raise ConfigError(f"row indices must lie in [0, {len(table) - 1}]")
            mask[rows.astype(np.int64)] = True
        keep &= mask
    if ids is not None:
        wanted = {str(i) for i in ids}
        unknown = wanted - set(table.ids)
        if unknown:
            raise DataError(f"{len(unknown)} ids not in table {table.name!r}, e.g. "
                            f"{sorted(unknown)[:3]}")
        keep &= np.array([i in wanted for i in table.ids])
    for field, values in (meta or {}).items():
        if field not in table.meta:
            raise ConfigError(f"table {table.name!r} has no per-item field {field!r}; "
                              f"it has {sorted(table.meta)}")
        allowed = set(values)
        keep &= np.array([v in allowed for v in table.meta[field]])
    if not keep.all():
        logger.info("golden %s: kept %d of %d items after row selection", table.name,
                    int(keep.sum()), len(table))
    return table.subset(np.flatnonzero(keep))


def golden_from_table(
    table: OutcomeTable,
    strong: str,
    weak: str,
    *,
    ties: str = "keep",
    strong_name: str | None = None,
    weak_name: str | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    meta: Mapping[str, Sequence] | None = None,
) -> Battles:
    """Battles for a (strong, weak) pair from a correctness table.

    ``strong`` is ``model_a``. ``ties="drop"`` removes items both got equally right or
    wrong; ``strong_name``/``weak_name`` rename the pair in the battles (e.g. MMLU-Pro's
    gpt-4o as the router's "gpt-4-1106-preview"); ``rows``/``ids``/``meta`` restrict the
    items first (see :func:`select_rows`). Scores that are not 0/1 (MT-Bench's 1-10) are
    compared as numbers: the higher score wins.
    """
    check_choice("ties", "golden_from_table", ties, ("keep", "drop"))
    table.model_index(strong)
    table.model_index(weak)
    if strong == weak:
        raise ConfigError(f"strong and weak model are both {strong!r}")
    if rows is not None or ids is not None or meta:
        table = select_rows(table, rows, ids=ids, meta=meta)
    return golden_battles(table, strong, weak, ties=ties, strong_name=strong_name,
                          weak_name=weak_name)


def outcomes_from_answers(
    name: str,
    prompts: Sequence[str],
    answers: Mapping[str, Sequence[str | None]],
    gold: Sequence[str],
    kind: str,
    *,
    ids: Sequence[str] | None = None,
    letters: str = DEFAULT_LETTERS,
) -> OutcomeTable:
    """Grade raw answers of several models into an ``OutcomeTable`` of 0/1 scores.

    ``answers`` maps model -> one free-text answer per prompt (``None`` = the model was not
    asked: NaN in the table). ``kind`` is ``"choice"`` (a letter) or ``"number"`` (GSM8K).
    An answer from which nothing can be extracted is graded wrong, and counted in the log.
    The extracted answers are kept in ``meta["extracted:<model>"]``.
    """
    check_choice("kind", "outcomes_from_answers", kind, KINDS)
    n = len(prompts)
    if len(gold) != n:
        raise ConfigError(f"{len(gold)} gold answers for {n} prompts")
    models = list(answers)
    if not models:
        raise ConfigError("no model answers given")
    scores = np.full((n, len(models)), np.nan)
    meta: dict[str, list] = {"gold": list(gold)}
    for j, model in enumerate(models):
        texts = list(answers[model])
        if len(texts) != n:
            raise ConfigError(f"model {model!r} has {len(texts)} answers for {n} prompts")
        asked = [t is not None for t in texts]
        extracted, correct = grade(texts, list(gold), kind, letters=letters)
        unparsed = sum(1 for a, e in zip(asked, extracted, strict=True) if a and e is None)
        if unparsed:
            logger.info("%s: no %s found in %d of %d answers of %s (graded wrong)", name, kind,
                        unparsed, sum(asked), model)
        scores[:, j] = np.where(asked, np.asarray(correct, dtype=float), np.nan)
        meta[f"extracted:{model}"] = extracted
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
    return OutcomeTable(name, list(prompts), ids, models, scores, meta=meta)


def read_answers(
    path: str | Path, *, gold_path: str | Path | None = None, gold_field: str = "answer"
) -> tuple[list[str], list[str], dict[str, list], list[str]]:
    """Read raw answers in the long layout ``{prompt_id, prompt, model, output}``.

    Gold answers come from ``gold_field`` of the answer rows, or from ``gold_path`` (rows
    ``{prompt_id, <gold_field>}``). Returns (ids, prompts, answers by model, gold), with
    ``None`` where a model has no answer for a prompt.
    """
    rows = read_records(path)
    file = str(path)
    gold_by_id: dict[str, str] = {}
    if gold_path is not None:
        for i, r in numbered(read_records(gold_path)):
            if "prompt_id" not in r or r.get(gold_field) is None:
                raise DataError("missing field", file=str(gold_path), row=i,
                                field="prompt_id" if "prompt_id" not in r else gold_field)
            gold_by_id[str(r["prompt_id"])] = str(r[gold_field])
    ids: list[str] = []
    prompts: dict[str, str] = {}
    outputs: dict[str, dict[str, str]] = {}
    for i, r in numbered(rows):
        for field in ("prompt_id", "prompt", "model", "output"):
            if r.get(field) is None:
                raise DataError("missing field", file=file, row=i, field=field)
        pid = str(r["prompt_id"])
        if pid not in prompts:
            ids.append(pid)
            prompts[pid] = str(r["prompt"])
        if gold_path is None:
            if r.get(gold_field) is None:
                raise DataError("missing gold answer (or pass a gold file)", file=file, row=i,
                                field=gold_field)
            gold_by_id.setdefault(pid, str(r[gold_field]))
        by_model = outputs.setdefault(str(r["model"]), {})
        if pid in by_model:
            raise DataError(f"second answer of {r['model']!r} to prompt {pid}", file=file, row=i,
                            field="prompt_id")
        by_model[pid] = str(r["output"])
    missing = [pid for pid in ids if pid not in gold_by_id]
    if missing:
        raise DataError(f"{len(missing)} prompts have no gold answer, e.g. {missing[:3]}",
                        file=str(gold_path or path), field=gold_field)
    answers = {m: [o.get(pid) for pid in ids] for m, o in outputs.items()}
    return ids, [prompts[p] for p in ids], answers, [gold_by_id[p] for p in ids]


def golden_from_answers(
    path: str | Path,
    strong: str,
    weak: str,
    kind: str,
    *,
    gold_path: str | Path | None = None,
    gold_field: str = "answer",
    ties: str = "keep",
    strong_name: str | None = None,
    weak_name: str | None = None,
    letters: str = DEFAULT_LETTERS,
) -> Battles:
    """Extract, grade and pair raw answers from a file: see :func:`read_answers`."""
    ids, prompts, answers, gold = read_answers(path, gold_path=gold_path, gold_field=gold_field)
    for model in (strong, weak):
        if model not in answers:
            raise DataError(f"model {model!r} has no answers; the file has {sorted(answers)}",
                            file=str(path), field="model")
    table = outcomes_from_answers(Path(path).stem, prompts, {m: answers[m] for m in (strong, weak)},
                                  gold, kind, ids=ids, letters=letters)
    return golden_from_table(table, strong, weak, ties=ties, strong_name=strong_name,
                             weak_name=weak_name)
