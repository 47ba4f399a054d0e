"""A micro-batcher: concurrent requests for one router are scored in one call, off the loop.

Each router gets one worker task. It takes the first waiting prompt, waits up to
``window_s`` for more (0: takes only what is already queued), and scores the batch in the
thread pool, so the event loop never runs an embedding. Prompts that arrive while a batch
is being scored queue up and form the next batch, so under load batches grow on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

ScoreFn = Callable[[Sequence[str]], np.ndarray]


class MicroBatcher:
    """Scores prompts in batches of up to ``max_batch``, collected for up to ``window_s``."""

    def __init__(
        self, score: ScoreFn, *, executor: Executor, window_s: float, max_batch: int
    ) -> None:
        self.score_fn = score
        self.executor = executor
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0
        self.batched_prompts = 0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[float]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def score(self, text: str) -> float:
        """P(strong wins) for one prompt."""
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        future: asyncio.Future[float] = loop.create_future()
        assert self._queue is not None
        self._queue.put_nowait((text, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            if self.window_s > 0 and self.max_batch > 1 and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.window_s)
            while len(items) < self.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            live = [(text, future) for text, future in items if not future.done()]  # drop cancelled
            if not live:
                continue
            self.batches += 1
            self.batched_prompts += len(live)
            try:
                probs = await loop.run_in_executor(
                    self.executor, self.score_fn, [t for t, _ in live]
                )
            except Exception as e:  # the requests report it; the worker keeps serving
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), prob in zip(live, probs, strict=True):
                if not future.done():
                    future.set_result(float(prob))

    async def aclose(self) -> None:
        """Stop the worker; waiting requests fail with CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                future.cancel()
