"""Batch scoring engine: stream a prompt file through a router into a score file.

One interface, two engines: ``score_file`` (this machine, in-process or N worker
processes) and ``prefroute.scoring.ray_engine.score_with_ray`` (Ray Data, for clusters).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from prefroute.errors import ConfigError, DataError, check_int
from prefroute.router import Router
from prefroute.scoring.inputs import PromptBatch, count_rows, iter_prompt_batches
from prefroute.scoring.local import auto_threads, auto_workers, score_batches, warm_up
from prefroute.scoring.outputs import Decision, check_output_file, open_score_writer, score_table

DEFAULT_BATCH_SIZE = 4096

__all__ = ["DEFAULT_BATCH_SIZE", "Decision", "ScoreSummary", "decision_for", "score_file"]


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    strong: int
    workers: int
    threads: int = 1


def decision_for(
    router: Router,
    *,
    id_field: str | None = None,
    with_decision: bool = False,
    with_prompt: bool = True,
) -> Decision:
    return Decision(
        router.strong_model, router.weak_model, router.threshold, id_field, with_decision,
        with_prompt,
    )


def score_file(
    router: Router,
    prompts_path: str | Path,
    out: str | Path,
    *,
    prompt_field: str = "prompt",
    id_field: str | None = None,
    with_decision: bool = False,
    with_prompt: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    threads: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score every prompt of ``prompts_path`` into ``out`` (.jsonl, .csv or .parquet).

    Rows come out in input order; memory follows ``batch_size``, not the file size.
    ``workers=None`` picks a process per usable core for inputs of 50,000 rows or more.
    ``threads=None``: with one process, a thread per usable core when the router allows
    concurrent calls (mf, sw_bt on WordLlama; measured faster than forking below 50,000 rows,
    slower above).
    ``out`` appears only when every row is written, and an existing ``out`` is replaced only
    with ``overwrite``.
    """
    check_int("batch_size", "score_file", batch_size)
    check_int("limit", "score_file", limit, optional=True)
    check_int("workers", "score_file", workers, optional=True)
    check_int("threads", "score_file", threads, optional=True)
    prompts_path, out = Path(prompts_path), Path(out)
    if not prompts_path.exists():
        raise DataError("file not found", file=str(prompts_path))
    check_output_file(out, overwrite=overwrite, inputs=(prompts_path,))
    decision = decision_for(
        router, id_field=id_field, with_decision=with_decision, with_prompt=with_prompt
    )
    total = count_rows(prompts_path)
    if total is not None and limit is not None:
        total = min(total, limit)
    if workers is None:
        workers = auto_workers(_input_bytes(prompts_path), total)
    if threads is None:
        threads = auto_threads(router, workers, total)
    elif threads > 1 and not router.predictor.scores_concurrently():
        raise ConfigError(
            f"The 'threads' parameter must be 1 for a {router.predictor.router_type} router on "
            f"this embedder: it is not safe to call from several threads. Got {threads}; use "
            "workers (processes) instead."
        )
    batches = iter_prompt_batches(
        prompts_path,
        batch_size=batch_size,
        prompt_field=prompt_field,
        id_field=id_field,
        limit=limit,
    )
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if workers > 1:  # tokenizers' threads must not run before the fork (nor beside workers)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        warm_up(router)
        rows = strong = 0
        with (
            open_score_writer(out) as write,
            tqdm(total=total, desc="scoring", unit="prompt", disable=not progress) as bar,
        ):
            pending: deque[PromptBatch] = deque()
            arrays = _remember(batches, pending)
            scored = score_batches(
                router, arrays, workers=workers, batch_size=batch_size, threads=threads
            )
            for probs in scored:
                batch = pending.popleft()
                write(score_table(batch.prompts, batch.ids, probs, decision))
                rows += len(batch)
                strong += int((probs >= decision.threshold).sum())
                bar.update(len(batch))
    finally:
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    return ScoreSummary(rows, strong, workers, threads)


def _remember(batches: Iterator[PromptBatch], pending: deque[PromptBatch]) -> Iterator:
    """The prompts of each batch, keeping the batch until its scores come back."""
    for batch in batches:
        pending.append(batch)
        yield batch.prompts


def _input_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
