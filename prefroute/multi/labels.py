"""Routing labels: which models solve each prompt (Srivatsa et al., NAACL 2024 SRW).

``label(q) = {l in L : maj@k(q, l) = 1}``: the set of candidate LLMs that solve prompt q.
It is stored as a multi-hot float matrix [n_prompts, n_models] (1 = solves, 0 = does not,
NaN = no result for that model on that prompt), built either from an ``OutcomeTable``
(correctness scores, or any score with a threshold) or from sampled generations (k answers
per prompt and model, majority vote compared with the gold answer).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefroute._logging import logger
from prefroute.data.outcomes import OutcomeTable
from prefroute.data.tabular import iter_jsonl
from prefroute.errors import ConfigError, DataError, check_choice


@dataclass(frozen=True)
class MultiLabels:
    """Multi-hot routing labels.

    Attributes
    ----------
    labels: float [n_prompts, n_models]: 1 = the model solves the prompt, 0 = it does not,
        NaN = unknown (no result). Values strictly between 0 and 1 are soft labels.
    models: model names, one per column.
    """

    labels: np.ndarray
    models: list[str]

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != len(self.models):
            raise DataError(
                f"labels have shape {labels.shape}; expected [n_prompts, {len(self.models)}] "
                f"for models {self.models}"
            )
        if len(set(self.models)) != len(self.models):
            raise DataError(f"model names repeat: {self.models}")
        known = labels[~np.isnan(labels)]
        if known.size and (known.min() < 0 or known.max() > 1):
            raise DataError(
                "labels must lie in [0, 1] (or be NaN); "
                f"got values in [{known.min()}, {known.max()}]"
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "models", list(self.models))

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def known(self) -> np.ndarray:
        """Boolean [n, N]: a result exists."""
        return ~np.isnan(self.labels)

    @property
    def multi_hot(self) -> np.ndarray:
        """uint8 [n, N]: 1 where the model solves the prompt (unknown -> 0)."""
        return (np.nan_to_num(self.labels, nan=0.0) >= 0.5).astype(np.uint8)

    def label_sets(self) -> list[set[str]]:
        """``label(q)`` as a set of model names per prompt."""
        hot = self.multi_hot
        return [{self.models[j] for j in np.flatnonzero(row)} for row in hot]

    def subset(self, rows: Sequence[int] | np.ndarray) -> MultiLabels:
        return MultiLabels(self.labels[np.asarray(rows, dtype=np.int64)], self.models)


def labels_from_outcomes(table: OutcomeTable, *, threshold: float | None = None) -> MultiLabels:
    """Labels from an outcome table: 1 where a model's score is 1 (or >= ``threshold``).

    0/1 correctness scores are used as they are. Any other scores (a judge's 1-10, a
    BLEU...) need ``threshold``: a model solves a prompt when its score >= threshold.
    Missing scores (NaN) stay NaN.
    """
    if not isinstance(table, OutcomeTable):
        raise ConfigError(
            f"labels_from_outcomes expects an OutcomeTable, got {type(table).__name__}"
        )
    scores = np.asarray(table.scores, dtype=np.float64)
    known = ~np.isnan(scores)
    if threshold is not None:
        if not np.isfinite(threshold):
            raise ConfigError(
                f"The 'threshold' parameter must be a finite number. Got {threshold!r} instead."
            )
        labels = np.where(known, (scores >= threshold).astype(np.float64), np.nan)
    else:
        values = np.unique(scores[known])
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(
                f"{table.name}: scores are not 0/1 correctness (they range over "
                f"[{values.min()}, {values.max()}]); pass threshold= to say which score counts "
                "as solving a prompt"
            )
        labels = scores.copy()
    missing = int((~known).sum())
    if missing:
        logger.info(
            "%s: %d of %d (prompt, model) results are missing; their labels are NaN",
            table.name,
            missing,
            scores.size,
        )
    return MultiLabels(labels, list(table.models))


# --------------------------------------------------------------------------- generations
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def normalize_answer(answer: object) -> str | None:
    """Canonical answer text: stripped, case-folded, trailing period dropped; numbers as numbers.

    ``"1,000."``, ``"1000"`` and ``"1000.0"`` all become ``"1000"``; ``None`` or an empty
    answer (extraction failed) stays ``None``.
    """
    if answer is None:
        return None
    text = str(answer).strip().casefold().rstrip(".").strip()
    if not text:
        return None
    compact = text.replace(",", "").replace("$", "")
    if _NUMBER.match(compact):
        value = float(compact)
        return str(int(value)) if value.is_integer() else repr(value)
    return text


def maj_at_k(
    answers: Sequence[object],
    gold: object,
    *,
    normalize: Callable[[object], str | None] = normalize_answer,
    ties: str = "first",
) -> int:
    """MAJ@k: 1 if the most frequent of the k sampled answers equals the gold answer, else 0.

    A failed extraction (``None``) is a vote for "no answer", which never matches. When
    several answers share the top count, ``ties`` decides: ``"first"`` takes the tied answer
    sampled first, ``"any"`` counts the prompt solved if gold is among the tied answers,
    ``"none"`` counts a tie as not solved.
    """
    check_choice("ties", "maj_at_k", ties, ("first", "any", "none"))
    if len(answers) == 0:
        raise DataError("maj_at_k needs at least one sampled answer")
    votes = [normalize(a) for a in answers]
    gold_n = normalize(gold)
    if gold_n is None:
        raise DataError(f"the gold answer {gold!r} is empty after normalisation")
    counts = Counter(votes)  # insertion-ordered: ties keep first-sampled order
    top = max(counts.values())
    tied = [answer for answer, count in counts.items() if count == top]
    if ties == "first":
        winner = next(v for v in votes if v in tied)
        return int(winner == gold_n)
    if ties == "any":
        return int(gold_n in tied)
    return int(len(tied) == 1 and tied[0] == gold_n)


def labels_from_generations(
    generations: Mapping[str, Sequence[Sequence[object] | None]],
    gold: Sequence[object],
    *,
    k: int | None = None,
    normalize: Callable[[object], str | None] = normalize_answer,
    ties: str = "first",
) -> MultiLabels:
    """Labels from sampled answers: ``generations[model][i]`` holds the k answers to prompt i.

    Each (prompt, model) label is ``maj_at_k`` of its answers against ``gold[i]``; an empty
    list or ``None`` means no result (NaN). With ``k``, the first k answers are used and a
    cell with fewer than k answers is an error.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ConfigError(
            f"The 'k' parameter of labels_from_generations must be an int >= 1. Got {k!r} instead."
        )
    models = list(generations)
    if len(models) < 1:
        raise DataError("labels_from_generations needs the answers of at least one model")
    n = len(gold)
    labels = np.full((n, len(models)), np.nan)
    for j, model in enumerate(models):
        per_prompt = generations[model]
        if len(per_prompt) != n:
            raise DataError(
                f"model {model!r} has answers for {len(per_prompt)} prompts; gold has {n}",
                field=model,
            )
        for i, answers in enumerate(per_prompt):
            if answers is None or len(answers) == 0:
                continue
            if isinstance(answers, str):
                raise DataError(
                    "expected a list of sampled answers, got one string", row=i, field=model
                )
            if k is not None:
                if len(answers) < k:
                    raise DataError(
                        f"{len(answers)} sampled answers, fewer than k={k}", row=i, field=model
                    )
                answers = answers[:k]
            labels[i, j] = maj_at_k(answers, gold[i], normalize=normalize, ties=ties)
    return MultiLabels(labels, models)


def labels_from_generation_records(
    records: Iterable[Mapping] | str | Path,
    *,
    k: int | None = None,
    normalize: Callable[[object], str | None] = normalize_answer,
    ties: str = "first",
) -> tuple[list[str], MultiLabels]:
    """Labels from records ``{"prompt_id", "model", "answers": [...], "gold"}`` (or a JSONL file).

    Returns the prompt ids (first-seen order) and their labels. A prompt must carry the same
    gold answer in every record; a (prompt, model) pair without a record is NaN.
    """
    file = None
    if isinstance(records, (str, Path)):
        file = str(records)
        records = _read_jsonl_records(Path(records))
    ids: list[str] = []
    gold: dict[str, object] = {}
    answers: dict[str, dict[str, Sequence[object]]] = {}
    for row, rec in enumerate(records, start=1):
        for name in ("prompt_id", "model", "answers", "gold"):
            if name not in rec:
                raise DataError("missing field", file=file, row=row, field=name)
        pid, model = str(rec["prompt_id"]), str(rec["model"])
        if not isinstance(rec["answers"], (list, tuple)):
            raise DataError(
                "expected a list of sampled answers", file=file, row=row, field="answers"
            )
        if pid not in gold:
            ids.append(pid)
            gold[pid] = rec["gold"]
        elif normalize(gold[pid]) != normalize(rec["gold"]):
            raise DataError(
                f"prompt {pid} has two gold answers: {gold[pid]!r} and {rec['gold']!r}",
                file=file,
                row=row,
                field="gold",
            )
        per_model = answers.setdefault(model, {})
        if pid in per_model:
            raise DataError(f"second record for prompt {pid} and model {model}", file=file, row=row)
        per_model[pid] = rec["answers"]
    generations = {m: [per.get(pid) for pid in ids] for m, per in answers.items()}
    return ids, labels_from_generations(
        generations, [gold[p] for p in ids], k=k, normalize=normalize, ties=ties
    )


def _read_jsonl_records(path: Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]
