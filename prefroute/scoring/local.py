"""Score prompt batches on this machine: in one process (with a thread per core when the
router allows it), or in N forked worker processes.

Threads share the router and its tokenizer cache, so they cost nothing to start; the
tokenizer's and pooling's compiled loops and numpy release the GIL, so two threads use two
cores. Workers are forked after the router is
loaded and warmed up, so each starts with the tokenizer and index already built. Either way
at most two batches per thread or worker are in flight, which keeps memory bounded, and
results come back in input order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from prefroute.router import Router

# Inputs smaller than this are scored in-process: a second process does not pay for itself
# (measured on 2 cores, mf: 40k prompts 1.0x, 80k 1.4x, 200k 1.6x; benchmarks/RESULTS.md #18).
AUTO_WORKERS_MIN_ROWS = 50_000
AUTO_WORKERS_MIN_BYTES = 32 << 20  # when the row count is unknown: ~60k prompts of 500 chars
# Threads score slices of this many prompts: small enough that two threads share a 4,096-row
# batch, large enough that numpy's per-call costs stay small (measured: 512 and 2,048 slower).
THREAD_SLICE = 1024
_WORKER_ROUTER: Router | None = None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(input_bytes: int, rows: int | None = None) -> int:
    """All usable cores for inputs of ``AUTO_WORKERS_MIN_ROWS`` rows or more (by
    ``AUTO_WORKERS_MIN_BYTES`` when the row count is not known up front), else 1."""
    large = rows >= AUTO_WORKERS_MIN_ROWS if rows is not None else (
        input_bytes >= AUTO_WORKERS_MIN_BYTES)
    return usable_cpus() if large else 1


def auto_threads(router: Router, workers: int, rows: int | None = None) -> int:
    """Scoring threads per process: all usable cores when one process scores a router that
    allows concurrent calls (``WinPredictor.scores_concurrently``) and there is more than
    one slice of rows to share, else 1."""
    if workers > 1 or not router.predictor.scores_concurrently():
        return 1
    if rows is not None and rows <= THREAD_SLICE:
        return 1
    return usable_cpus()


def warm_up(router: Router) -> None:
    """Build what the first call would (tokenizers, caches) before timing or forking."""
    router.predictor.predict_proba(["Route this prompt.", "And this one, please."])


def score_prompts(router: Router, prompts: pa.Array, batch_size: int) -> np.ndarray:
    return router.predictor.predict_proba(prompts.to_pylist(), batch_size=batch_size)


def _worker_init() -> None:
    from threadpoolctl import threadpool_limits

    # one BLAS thread per worker: the workers already fill the cores
    threadpool_limits(1)


def _worker_score(prompts: list[str], batch_size: int) -> np.ndarray:
    assert _WORKER_ROUTER is not None
    return _WORKER_ROUTER.predictor.predict_proba(prompts, batch_size=batch_size)


def score_batches(
    router: Router,
    prompt_arrays: Iterable[pa.Array],
    *,
    workers: int,
    batch_size: int,
    threads: int = 1,
) -> Iterator[np.ndarray]:
    """P(strong wins) for each array of prompts, in order, using ``workers`` processes (or,
    with one process, ``threads`` threads)."""
    if workers <= 1 and threads > 1:
        yield from _score_in_threads(router, prompt_arrays, threads)
        return
    if workers <= 1:
        for prompts in prompt_arrays:
            yield score_prompts(router, prompts, batch_size)
        return
    # tokenizers' own threads would fight the workers for the cores (and warn after fork)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    arrays = iter(prompt_arrays)
    # The first batch is scored here, before the fork: it fills the tokenizer's segment cache
    # (prefroute.embed.segment_tokenizer), which the workers then inherit instead of each
    # rebuilding it from cold.
    first = next(arrays, None)
    if first is None:
        return
    yield score_prompts(router, first, batch_size)
    global _WORKER_ROUTER
    _WORKER_ROUTER = router
    context = multiprocessing.get_context("fork")
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        try:
            for prompts in arrays:
                # plain strings: a pickled Arrow slice would carry its whole row group's buffer
                pending.append(pool.submit(_worker_score, prompts.to_pylist(), batch_size))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            _WORKER_ROUTER = None


def _score_in_threads(
    router: Router, prompt_arrays: Iterable[pa.Array], threads: int
) -> Iterator[np.ndarray]:
    """Each array scored as slices of ``THREAD_SLICE`` prompts spread over ``threads``
    threads, while the caller reads the next batch and writes the last."""
    from threadpoolctl import threadpool_limits

    predict = router.predictor.predict_proba
    pending: deque[list[Future]] = deque()
    # One BLAS thread each: the scoring threads already fill the cores (measured 1.35x faster
    # for sw_bt than letting both BLAS and the threads spread).
    first = True
    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:
        try:
            for prompts in prompt_arrays:
                texts = prompts.to_pylist()
                start, head = 0, []
                if first:
                    # The first slice alone: it meets most of the new segments, whose BPE the
                    # tokenizer spreads over the cores itself; two threads starting cold would
                    # each tokenise the same ones (measured: CPU 0.89 -> 0.77 s for 20k, mf).
                    first, start = False, THREAD_SLICE
                    head = [_done(predict(texts[:THREAD_SLICE], batch_size=THREAD_SLICE))]
                pending.append(head + [
                    pool.submit(predict, texts[i : i + THREAD_SLICE], batch_size=THREAD_SLICE)
                    for i in range(start, len(texts), THREAD_SLICE)
                ])
                if len(pending) >= 2:
                    yield _joined(pending.popleft())
            while pending:
                yield _joined(pending.popleft())
        finally:
            for futures in pending:
                for future in futures:
                    future.cancel()


def _done(result: np.ndarray) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _joined(futures: list[Future]) -> np.ndarray:
    parts = [future.result() for future in futures]
    if not parts:
        return np.zeros(0)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
