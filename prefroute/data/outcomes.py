"""Outcome tables: how each model did on each prompt (correctness or a judge score).

One ``OutcomeTable`` type serves golden-label battles, strong/weak evaluation and N-way
routing. Loaders read every stored layout in ``shared/data``: RouteLLM's MMLU / GSM8K /
MT-Bench results, MMLU-Pro correctness and the RouterBench subset (with dollar costs).
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefroute._logging import logger
from prefroute.data.tabular import iter_jsonl
from prefroute.errors import DataError
from prefroute.validate import check_number, csv_rows, decode_utf8

csv.field_size_limit(1 << 30)

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@dataclass
class OutcomeTable:
    """Per-prompt, per-model outcomes.

    Attributes
    ----------
    name: where the table came from (e.g. ``"mmlu"``).
    prompts: the routing text of each item.
    ids: a stable id per item.
    models: model names, one per column of ``scores``.
    scores: float [n_items, n_models]; 0/1 correctness or a judge score; NaN = no result.
    costs: optional float [n_items, n_models] dollar cost of each call.
    meta: optional per-item columns (category, subject, source benchmark...).
    """

    name: str
    prompts: list[str]
    ids: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray | None = None
    meta: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        if self.scores.shape != (n, m):
            raise DataError(
                f"{self.name}: scores have shape {self.scores.shape}, expected ({n}, {m})"
            )
        if self.costs is not None and self.costs.shape != (n, m):
            raise DataError(
                f"{self.name}: costs have shape {self.costs.shape}, expected ({n}, {m})"
            )
        if len(self.ids) != n:
            raise DataError(f"{self.name}: {len(self.ids)} ids for {n} prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def column(self, model: str) -> np.ndarray:
        """The scores of one model (KeyError-free: unknown names raise DataError)."""
        return self.scores[:, self.model_index(model)]

    def model_index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise DataError(
                f"{self.name}: model {model!r} not in the table; it has {self.models}"
            ) from None

    def subset(self, rows: Sequence[int] | np.ndarray) -> OutcomeTable:
        rows = np.asarray(rows, dtype=np.int64)
        return OutcomeTable(
            name=self.name,
            prompts=[self.prompts[i] for i in rows],
            ids=[self.ids[i] for i in rows],
            models=list(self.models),
            scores=self.scores[rows],
            costs=None if self.costs is None else self.costs[rows],
            meta={k: [v[i] for i in rows] for k, v in self.meta.items()},
        )

    def select_models(self, models: Sequence[str]) -> OutcomeTable:
        cols = [self.model_index(m) for m in models]
        return OutcomeTable(
            name=self.name,
            prompts=list(self.prompts),
            ids=list(self.ids),
            models=list(models),
            scores=self.scores[:, cols],
            costs=None if self.costs is None else self.costs[:, cols],
            meta=dict(self.meta),
        )

    def complete_rows(self, models: Sequence[str] | None = None) -> np.ndarray:
        """Boolean mask of rows with a result for every (given) model."""
        cols = [self.model_index(m) for m in (models or self.models)]
        return ~np.isnan(self.scores[:, cols]).any(axis=1)

    def drop_prompts(self, prompts: set[str]) -> OutcomeTable:
        keep = [i for i, p in enumerate(self.prompts) if p not in prompts]
        removed = len(self) - len(keep)
        if removed:
            logger.info("%s: dropped %d contaminated prompts of %d", self.name, removed, len(self))
        return self.subset(keep)


def _bool_cell(value: str, path: str, row: int, field_name: str) -> float:
    v = value.strip()
    if v in ("True", "true", "1", "1.0"):
        return 1.0
    if v in ("False", "false", "0", "0.0"):
        return 0.0
    if v == "":
        return np.nan
    raise DataError(
        f"expected True/False or 0/1, got {value!r}", file=path, row=row, field=field_name
    )


def _float_cell(
    value: str, path: str, row: int, field_name: str, low: float | None = None
) -> float:
    if value.strip().lower() in ("", "nan"):
        return np.nan  # no result for this model on this item
    return check_number(value, file=path, row=row, field=field_name, low=low)


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    path_s = str(path)
    if not path.exists():
        raise DataError("file not found", file=path_s)
    text = decode_utf8(path.read_bytes(), path_s, tabular=True)
    records = csv_rows(text, path_s)
    header = next(records, None)
    if header is None:
        raise DataError("not a readable CSV file: it is empty", file=path_s)
    rows = list(records)
    if not rows:
        raise DataError("no rows (only a header)", file=path_s)
    for name in required:
        if name not in header:
            raise DataError(f"missing column; header is {header[:8]}...", file=path_s, field=name)
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise DataError(f"has {len(r)} cells, header has {len(header)}", file=path_s, row=i)
    return header, rows


def _correctness_csv(
    path: Path, models: Sequence[str]
) -> tuple[list[str], np.ndarray, list[list[str]]]:
    header, rows = _read_csv(path, ["prompt", *models])
    prompt_col = header.index("prompt")
    cols = [header.index(m) for m in models]
    scores = np.empty((len(rows), len(models)))
    prompts = []
    for i, r in enumerate(rows):
        line = i + 2  # header is line 1
        if not r[prompt_col].strip():
            raise DataError("empty prompt", file=str(path), row=line, field="prompt")
        prompts.append(r[prompt_col])
        for j, c in enumerate(cols):
            scores[i, j] = _bool_cell(r[c], str(path), line, header[c])
    return prompts, scores, rows


def load_routellm_mmlu(data_dir: str | Path) -> OutcomeTable:
    """RouteLLM's MMLU results: 57 subject CSVs under ``routellm_evals/mmlu/responses``."""
    folder = Path(data_dir) / "routellm_evals" / "mmlu" / "responses"
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise DataError("no mmlu_*.csv files found", file=str(folder))
    models = [ROUTELLM_WEAK, ROUTELLM_STRONG]
    prompts, ids, subjects, parts = [], [], [], []
    for path in files:
        subject = path.stem[len("mmlu_") :]
        p, s, _ = _correctness_csv(path, models)
        prompts += p
        ids += [f"{subject}/{i}" for i in range(len(p))]
        subjects += [subject] * len(p)
        parts.append(s)
    return OutcomeTable(
        "mmlu", prompts, ids, models, np.concatenate(parts), meta={"subject": subjects}
    )


def load_routellm_gsm8k(data_dir: str | Path) -> OutcomeTable:
    """RouteLLM's GSM8K results (1,319 test questions)."""
    path = Path(data_dir) / "routellm_evals" / "gsm8k" / "gsm8k_responses.csv"
    models = [ROUTELLM_WEAK, ROUTELLM_STRONG]
    prompts, scores, _ = _correctness_csv(path, models)
    return OutcomeTable("gsm8k", prompts, [str(i) for i in range(len(prompts))], models, scores)


def load_routellm_mt_bench(data_dir: str | Path) -> OutcomeTable:
    """MT-Bench: routing text = first turn; score = a model's GPT-4 score averaged over turns."""
    folder = Path(data_dir) / "routellm_evals" / "mt_bench"
    questions = _read_jsonl(folder / "question.jsonl", ["question_id", "turns"])
    judgements = _read_jsonl(folder / "judgements.jsonl", ["question_id", "model", "turn", "score"])
    qids = [q["question_id"] for q in questions]
    index = {q: i for i, q in enumerate(qids)}
    models = sorted({j["model"] for j in judgements})
    sums = np.zeros((len(qids), len(models)))
    counts = np.zeros((len(qids), len(models)))
    for row, j in enumerate(judgements, start=1):
        if j["question_id"] not in index:
            raise DataError(
                f"question_id {j['question_id']} not in question.jsonl",
                file=str(folder / "judgements.jsonl"),
                row=row,
                field="question_id",
            )
        score = j["score"]
        if not isinstance(score, (int, float)) or score < 0:
            # FastChat writes -1 for an unparsable judgement; those are skipped, counted.
            continue
        sums[index[j["question_id"]], models.index(j["model"])] += score
        counts[index[j["question_id"]], models.index(j["model"])] += 1
    skipped = len(judgements) - int(counts.sum())
    if skipped:
        logger.info("mt_bench: skipped %d judgements without a valid score", skipped)
    with np.errstate(invalid="ignore"):
        scores = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    prompts = [q["turns"][0] for q in questions]
    meta = {
        "category": [q.get("category") for q in questions],
        "turns": [q["turns"] for q in questions],
    }
    return OutcomeTable("mt-bench", prompts, [str(q) for q in qids], models, scores, meta=meta)


def format_mmlu_pro_prompt(question: str, options: Sequence[str]) -> str:
    """MMLU-style text: the question, lettered options, then 'Answer:'."""
    letters = "ABCDEFGHIJKLMNOP"
    lines = [question.strip()] + [f"{letters[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def load_mmlu_pro(data_dir: str | Path) -> OutcomeTable:
    """MMLU-Pro correctness of 30 models (empty cell = no result -> NaN)."""
    folder = Path(data_dir) / "mmlu_pro"
    questions = _read_jsonl(folder / "questions.jsonl", ["question_id", "question", "options"])
    by_id = {str(q["question_id"]): q for q in questions}
    path = folder / "correctness.csv"
    header, rows = _read_csv(path, ["question_id"])
    models = header[1:]
    scores = np.empty((len(rows), len(models)))
    prompts, ids, category, src = [], [], [], []
    for i, r in enumerate(rows):
        line = i + 2
        qid = r[0]
        if qid not in by_id:
            raise DataError(
                f"question_id {qid} not in questions.jsonl",
                file=str(path),
                row=line,
                field="question_id",
            )
        q = by_id[qid]
        prompts.append(format_mmlu_pro_prompt(q["question"], q["options"]))
        ids.append(qid)
        category.append(q.get("category"))
        src.append(q.get("src"))
        for j, cell in enumerate(r[1:]):
            scores[i, j] = _bool_cell(cell, str(path), line, models[j])
    return OutcomeTable(
        "mmlu_pro", prompts, ids, models, scores, meta={"category": category, "src": src}
    )


ROUTERBENCH_FILES = ("arc_challenge.csv", "mbpp.csv", "winograde.csv")


def _routerbench_prompt(cell: str, path: str, row: int) -> str:
    # RouterBench stores the prompt as a Python/JSON list of turns: route on the first.
    text = cell.strip()
    if text.startswith("["):
        try:
            turns = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            try:
                turns = ast.literal_eval(text)
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                raise DataError(
                    "prompt is neither text nor a list of turns", file=path, row=row, field="prompt"
                ) from None
        if not turns or not isinstance(turns[0], str):
            raise DataError("empty list of turns", file=path, row=row, field="prompt")
        text = turns[0]
    if not text.strip():
        raise DataError("empty prompt", file=path, row=row, field="prompt")
    return text


def load_routerbench(
    data_dir: str | Path, files: Sequence[str] = ROUTERBENCH_FILES
) -> OutcomeTable:
    """RouterBench rows: per prompt a 0/1 score and the dollar cost of each of 11 models."""
    folder = Path(data_dir) / "routerbench_subset"
    models: list[str] | None = None
    prompts, ids, evals, oracle, score_parts, cost_parts = [], [], [], [], [], []
    for name in files:
        path = folder / name
        header, rows = _read_csv(path, ["sample_id", "prompt", "eval_name"])
        file_models = [h for h in header[3:] if "|" not in h and h != "oracle_model_to_route_to"]
        if models is None:
            models = file_models
        elif sorted(file_models) != sorted(models):
            raise DataError(f"models differ from {files[0]}: {file_models}", file=str(path))
        score_cols = [header.index(m) for m in models]
        cost_cols = []
        for m in models:
            if f"{m}|total_cost" not in header:
                raise DataError("missing cost column", file=str(path), field=f"{m}|total_cost")
            cost_cols.append(header.index(f"{m}|total_cost"))
        oracle_col = (
            header.index("oracle_model_to_route_to")
            if "oracle_model_to_route_to" in header
            else None
        )
        s = np.empty((len(rows), len(models)))
        c = np.empty((len(rows), len(models)))
        for i, r in enumerate(rows):
            line = i + 2
            prompts.append(_routerbench_prompt(r[1], str(path), line))
            ids.append(r[0])
            evals.append(r[2])
            oracle.append(r[oracle_col] if oracle_col is not None else None)
            for j, (sc, cc) in enumerate(zip(score_cols, cost_cols)):
                s[i, j] = _float_cell(r[sc], str(path), line, header[sc])
                c[i, j] = _float_cell(r[cc], str(path), line, header[cc], low=0.0)
        score_parts.append(s)
        cost_parts.append(c)
    assert models is not None
    return OutcomeTable(
        "routerbench",
        prompts,
        ids,
        models,
        np.concatenate(score_parts),
        costs=np.concatenate(cost_parts),
        meta={"eval_name": evals, "oracle_model": oracle},
    )


def load_contaminated_prompts(data_dir: str | Path, benchmark: str) -> set[str]:
    """Eval prompts RouteLLM found too close to its training data (excluded from its numbers)."""
    folder = {"mmlu": "mmlu", "gsm8k": "gsm8k", "mt-bench": "mt_bench", "mt_bench": "mt_bench"}.get(
        benchmark
    )
    if folder is None:
        return set()
    path = Path(data_dir) / "routellm_evals" / folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    return {r["eval_prompt"] for r in _read_jsonl(path, ["eval_prompt"])}


BENCHMARK_LOADERS = {
    "mmlu": load_routellm_mmlu,
    "gsm8k": load_routellm_gsm8k,
    "mt-bench": load_routellm_mt_bench,
    "mmlu_pro": load_mmlu_pro,
    "routerbench": load_routerbench,
}


def load_outcomes(name: str, data_dir: str | Path) -> OutcomeTable:
    """Load a stored outcome table by name: mmlu, gsm8k, mt-bench, mmlu_pro, routerbench."""
    key = name.replace("_", "-") if name in ("mt_bench",) else name
    if key not in BENCHMARK_LOADERS:
        raise DataError(f"unknown outcome table {name!r}; known: {sorted(BENCHMARK_LOADERS)}")
    return BENCHMARK_LOADERS[key](data_dir)


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    rows = []
    for i, row in iter_jsonl(path):
        for name in required:
            if name not in row:
                raise DataError("missing field", file=str(path), row=i, field=name)
        rows.append(row)
    return rows
