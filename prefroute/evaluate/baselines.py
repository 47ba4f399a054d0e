"""Reference routers as plain functions returning P(strong wins) per prompt.

They set the bar a learned router must clear under the same protocol: prompt length (no
training at all) and a k-nearest-neighbour average of golden labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder, encode_unless_given
from prefroute.errors import ConfigError

LENGTH_SCALE_CHARS = 500.0


def prompt_length_probs(prompts: Sequence[str], *, scale: float = LENGTH_SCALE_CHARS) -> np.ndarray:
    """Longer prompt -> higher P(strong wins): ``n_chars / (n_chars + scale)``.

    Only the order matters for routing curves; the map keeps each prompt's value independent
    of the batch it comes in.
    """
    if scale <= 0:
        raise ConfigError(f"The 'scale' parameter of prompt_length_probs must be > 0. Got {scale}.")
    n_chars = np.array([len(p) for p in prompts], dtype=np.float64)
    return n_chars / (n_chars + scale)


def strong_win_labels(battles: Battles, strong_model: str, weak_model: str, *,
                      use_soft_labels: bool = True) -> tuple[list[str], np.ndarray]:
    """Prompts and P(strong wins) labels of the battles between exactly this pair.

    Label: 1 if the strong model won, 0 if the weak one did, 0.5 for a tie; with
    ``use_soft_labels`` a judge's ``p_b_wins`` replaces the hard label where present. The
    strong model may sit on either side.
    """
    a, b = battles.column("model_a"), battles.column("model_b")
    winners = battles.column("winner")
    p_b = battles.numeric("p_b_wins")
    prompts_all = battles.prompts
    prompts, labels = [], []
    for i in range(len(battles)):
        if {a[i], b[i]} != {strong_model, weak_model}:
            continue
        strong_is_a = a[i] == strong_model
        if use_soft_labels and np.isfinite(p_b[i]):
            label = 1.0 - p_b[i] if strong_is_a else p_b[i]
        elif winners[i] == "model_a":
            label = 1.0 if strong_is_a else 0.0
        elif winners[i] == "model_b":
            label = 0.0 if strong_is_a else 1.0
        else:  # tie or tie (bothbad)
            label = 0.5
        prompts.append(prompts_all[i])
        labels.append(label)
    return prompts, np.array(labels, dtype=np.float64)


def knn_probs(train_prompts: Sequence[str], train_labels: np.ndarray, eval_prompts: Sequence[str],
              *, k: int = 50, embedder: str | dict | Embedder = "wordllama",
              train_vectors: np.ndarray | None = None, eval_vectors: np.ndarray | None = None
              ) -> np.ndarray:
    """Mean label of the ``k`` training prompts nearest (cosine, FAISS) to each eval prompt."""
    import faiss

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"The 'k' parameter of knn_probs must be a positive int. Got {k!r} instead."
        )
    labels = np.asarray(train_labels, dtype=np.float64)
    if len(labels) != len(train_prompts):
        raise ConfigError(f"{len(labels)} labels for {len(train_prompts)} training prompts")
    if len(labels) == 0:
        raise ConfigError("knn_probs has no training prompts with labels for this pair")
    train_vectors, eval_vectors = encode_unless_given(
        embedder, (train_prompts, train_vectors), (eval_prompts, eval_vectors))
    k = min(k, len(labels))
    index = faiss.IndexFlatIP(train_vectors.shape[1])
    index.add(np.ascontiguousarray(train_vectors, dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(eval_vectors, dtype=np.float32), k)
    return labels[neighbours].mean(axis=1)
