"""Drop training prompts that are near-copies of evaluation prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder, encode_unless_given


@dataclass
class ContaminationReport:
    """Which training rows were too close to which evaluation prompts."""

    threshold: float
    train_rows: np.ndarray
    eval_rows: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.train_rows)

    def pairs(self, train_prompts: Sequence[str], eval_prompts: Sequence[str]) -> list[dict]:
        return [
            {"train_prompt": train_prompts[t], "eval_prompt": eval_prompts[e], "cosine": float(s)}
            for t, e, s in zip(self.train_rows, self.eval_rows, self.similarity)
        ]


def nearest_cosine(
    queries: np.ndarray, corpus: np.ndarray, *, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each unit-norm query row, the best cosine in ``corpus`` and its index (FAISS)."""
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    best = np.empty(len(queries), dtype=np.float32)
    where = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), batch):
        sims, ids = index.search(
            np.ascontiguousarray(queries[start : start + batch], np.float32), 1
        )
        best[start : start + batch] = sims[:, 0]
        where[start : start + batch] = ids[:, 0]
    return best, where


def find_contamination(
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    *,
    embedder: str | dict | Embedder = "wordllama",
    threshold: float = 0.95,
    train_vectors: np.ndarray | None = None,
    eval_vectors: np.ndarray | None = None,
) -> ContaminationReport:
    """Training rows whose embedding cosine to some evaluation prompt is >= ``threshold``."""
    train_vectors, eval_vectors = encode_unless_given(
        embedder, (train_prompts, train_vectors), (eval_prompts, eval_vectors))
    if len(train_vectors) == 0 or len(eval_vectors) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ContaminationReport(threshold, empty, empty, np.zeros(0, dtype=np.float32))
    best, where = nearest_cosine(train_vectors, eval_vectors)
    hit = np.flatnonzero(best >= threshold)
    return ContaminationReport(threshold, hit, where[hit], best[hit])


def decontaminate(
    battles: Battles,
    eval_prompts: Sequence[str],
    *,
    embedder: str | dict | Embedder = "wordllama",
    threshold: float = 0.95,
) -> tuple[Battles, ContaminationReport]:
    """Remove battles whose prompt is within ``threshold`` cosine of an evaluation prompt.

    Distinct prompts are embedded once. Returns the kept battles and a report of what was
    removed (train row, eval row, cosine).
    """
    prompts = battles.prompts
    unique, inverse = np.unique(np.array(prompts, dtype=object), return_inverse=True)
    report_unique = find_contamination(
        list(unique), eval_prompts, embedder=embedder, threshold=threshold
    )
    bad_unique = np.zeros(len(unique), dtype=bool)
    bad_unique[report_unique.train_rows] = True
    eval_of_unique = np.full(len(unique), -1)
    eval_of_unique[report_unique.train_rows] = report_unique.eval_rows
    sim_of_unique = np.zeros(len(unique), dtype=np.float32)
    sim_of_unique[report_unique.train_rows] = report_unique.similarity
    bad = bad_unique[inverse]
    rows = np.flatnonzero(bad)
    report = ContaminationReport(
        threshold, rows, eval_of_unique[inverse][rows], sim_of_unique[inverse][rows]
    )
    logger.info(
        "decontamination (cosine >= %.2f): removed %d of %d battles (%d distinct prompts)",
        threshold,
        len(rows),
        len(battles),
        int(bad_unique.sum()),
    )
    return battles.filter(~bad), report
