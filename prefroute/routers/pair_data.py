"""The battles between exactly the router's pair, as (prompt, P(strong won), weight) rows.

kNN, logistic regression and the auto router's out-of-fold scoring learn from these rows
only: a battle of the strong model against a third model says nothing direct about the weak
one. Label: 1 strong won, 0 weak won, 0.5 tie; a judge's soft ``p_b_wins`` replaces the hard
label where present (``use_soft_labels``). The strong model may sit on either side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefroute.data.battles import Battles
from prefroute.errors import DataError

_TIES = ("tie", "tie (bothbad)")


@dataclass(frozen=True)
class PairRows:
    """rows: battle indices; prompts, labels (P(strong won)), weights (battle weight)."""

    rows: np.ndarray
    prompts: list[str]
    labels: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def pair_rows(battles: Battles, strong_model: str, weak_model: str, *,
              use_soft_labels: bool = True, required: bool = True) -> PairRows:
    """The battles between ``strong_model`` and ``weak_model`` with their labels.

    ``required``: raise a DataError naming the pair when there is none.
    """
    table = battles.table
    a = table["model_a"]
    b = table["model_b"]
    strong_a = pc.and_(pc.equal(a, strong_model), pc.equal(b, weak_model))
    strong_b = pc.and_(pc.equal(a, weak_model), pc.equal(b, strong_model))
    strong_a = strong_a.to_numpy(zero_copy_only=False).astype(bool)
    strong_b = strong_b.to_numpy(zero_copy_only=False).astype(bool)
    rows = np.flatnonzero(strong_a | strong_b)
    if required and len(rows) == 0:
        raise DataError(
            f"no battle between the strong model {strong_model!r} and the weak model "
            f"{weak_model!r}: this router learns from that pair's battles only"
        )
    winner = table["winner"]
    a_won = pc.equal(winner, "model_a").to_numpy(zero_copy_only=False).astype(bool)
    tie = pc.is_in(winner, value_set=pa.array(_TIES)).to_numpy(zero_copy_only=False)
    label_a = np.where(a_won, 1.0, np.where(tie, 0.5, 0.0))  # P(side a won)
    if use_soft_labels:
        p_b = battles.numeric("p_b_wins")
        label_a = np.where(np.isnan(p_b), label_a, 1.0 - p_b)
    strong_label = np.where(strong_a, label_a, 1.0 - label_a)[rows]
    weights = battles.numeric("weight")[rows]
    weights = np.where(np.isnan(weights), 1.0, weights)
    prompts_all = table["prompt"].take(pa.array(rows)).to_pylist()
    return PairRows(rows=rows, prompts=prompts_all, labels=strong_label, weights=weights)
