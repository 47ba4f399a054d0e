"""Fold new battles into a fitted ``sw_bt`` router without refitting it.

An sw_bt router's learned state is a table: one row per distinct training prompt (its
embedding, and its weighted wins per ordered model pair). New battles only add to that
table: a known prompt's row grows (a prompt is recognised by its embedding, which the
embedder computes deterministically), an unseen prompt gets a new row, an unseen model a new
group and an unseen pair a new column. Only the new prompts are embedded; an approximate
FAISS index gets the new vectors appended. With ``num_tiers=0`` the result predicts exactly
what a fit on the union would (the tests check this).
"""

from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.errors import ConfigError, DataError
from prefroute.routers.sw_bt import SWBTRouter, _bfs_path, _distinct_codes, battle_outcomes


def _row_digests(embeddings: np.ndarray) -> list[bytes]:
    """One hashable key per row: the row's bytes (equal texts embed to equal bytes)."""
    return [row.tobytes() for row in np.ascontiguousarray(embeddings)]


def append_battles(
    router: SWBTRouter, battles: Battles, *, strong_model: str | None = None,
    weak_model: str | None = None,
) -> SWBTRouter:
    """A copy of the fitted ``router`` with ``battles`` added to its index and tables.

    Models the router has not seen get a group of their own (with tiers too: a new model is
    not re-tiered, since that would need the global ratings refitted). Battles within one
    group carry no information and are skipped, as in ``fit``. ``strong_model`` /
    ``weak_model`` change the copy's pair (both must be among its models).
    """
    if not router.is_fitted:
        raise ConfigError("append_battles needs a fitted SWBTRouter")
    if len(battles) == 0:
        raise DataError("no new battles to add")
    outcome, weight, keep = battle_outcomes(
        battles, use_soft_labels=router.use_soft_labels, ties=router.ties
    )
    group_of = dict(router.group_of_model_)
    n_groups = router.n_groups_
    added_models = [m for m in battles.models() if m not in group_of]
    for model in added_models:
        group_of[model] = n_groups
        n_groups += 1
    group_a = np.array([group_of[m] for m in battles.column("model_a")], dtype=np.int64)
    group_b = np.array([group_of[m] for m in battles.column("model_b")], dtype=np.int64)
    keep &= group_a != group_b
    if not keep.any():
        raise DataError(
            f"none of the {len(battles)} new battles is between two different "
            f"{'tiers' if router.num_tiers else 'models'}: nothing to add"
        )

    # columns: the old pairs keep their positions, pairs never seen before go at the end
    old_pairs = router.pair_groups_
    old_codes = old_pairs[:, 0] * n_groups + old_pairs[:, 1]
    a, b = group_a[keep], group_b[keep]
    new_codes = np.concatenate([a * n_groups + b, b * n_groups + a])
    extra_codes = np.setdiff1d(new_codes, old_codes)
    codes = np.concatenate([old_codes, extra_codes])
    order = np.argsort(codes)
    cols = order[np.searchsorted(codes[order], new_codes)]

    # rows: a prompt already in the table (same embedding) adds to its row
    prompts, code = _distinct_codes(battles.table.filter(keep)["prompt"])
    embeddings = np.ascontiguousarray(router.embedder_.encode(prompts), dtype=np.float32)
    old_rows = {d: i for i, d in enumerate(_row_digests(router.prompt_embeddings_))}
    n_old = router.prompt_embeddings_.shape[0]
    row_of_prompt = np.empty(len(prompts), dtype=np.int64)
    appended = []
    for i, digest in enumerate(_row_digests(embeddings)):
        known = old_rows.get(digest)
        if known is None:
            known = n_old + len(appended)
            old_rows[digest] = known
            appended.append(i)
        row_of_prompt[i] = known
    n_rows = n_old + len(appended)
    rows = row_of_prompt[code]
    o, w = outcome[keep], weight[keep]
    added = sparse.csr_matrix(
        (np.concatenate([w * o, w * (1.0 - o)]), (np.concatenate([rows, rows]), cols)),
        shape=(n_rows, codes.size),
    )
    old = router.pair_counts_
    old = sparse.csr_matrix(
        (old.data, old.indices, np.r_[old.indptr, np.full(len(appended), old.indptr[-1])]),
        shape=(n_rows, codes.size),
    )
    counts = (old + added).tocsr()
    counts.sum_duplicates()
    counts.eliminate_zeros()
    informative = np.diff(counts.indptr) > 0
    informative[:n_old] = True  # an old row never loses its counts
    if not informative.all():
        keep_rows = np.flatnonzero(informative)
        counts = counts[keep_rows]
        appended = [p for p, r in zip(appended, range(n_old, n_rows), strict=True)
                    if informative[r]]
    all_embeddings = np.concatenate([router.prompt_embeddings_, embeddings[appended]])

    new = copy.copy(router)
    new.group_of_model_ = group_of
    new.n_groups_ = n_groups
    new.strong_model = strong_model or router.strong_model
    new.weak_model = weak_model or router.weak_model
    for role in ("strong_model", "weak_model"):
        if getattr(new, role) not in group_of:
            raise DataError(f"{role} {getattr(new, role)!r} appears in none of the battles")
    pair_groups = np.stack([codes // n_groups, codes % n_groups], axis=1)
    new._set_state(all_embeddings, counts, pair_groups, index_kind=router.index_kind_)
    if router.index_ is not None:
        import faiss

        new.index_ = faiss.clone_index(router.index_)
        new.index_.add(embeddings[appended])
    logger.info(
        "sw_bt update: %d battles (%d used), %d new prompts, %d known prompts grew, "
        "%d new models, %d new pairs",
        len(battles), int(keep.sum()), len(appended), len(prompts) - len(appended),
        len(added_models), extra_codes.size,
    )
    return new


def pair_is_connected(router: SWBTRouter, model_a: str, model_b: str) -> bool:
    """Whether some chain of battles joins the two models' groups (else BT cannot rate them)."""
    neighbours: dict[int, set[int]] = {}
    for i, j in router.pair_groups_.tolist():
        neighbours.setdefault(i, set()).add(j)
    source, target = router.group_of_model_[model_a], router.group_of_model_[model_b]
    if source == target:
        return True
    return source in neighbours and _bfs_path(neighbours, source, target) is not None


def swap_model(router: SWBTRouter, battles: Battles, *, role: str, model: str) -> SWBTRouter:
    """Replace the strong or weak model by ``model``, rated from its battles alone.

    The battles are appended (see :func:`append_battles`); ``model`` must appear in them
    and be joined to the other side of the pair through them.
    """
    if role not in ("strong", "weak"):
        raise ConfigError(f"role must be 'strong' or 'weak', got {role!r}")
    if model not in battles.models() and model not in router.group_of_model_:
        raise DataError(
            f"model {model!r} appears in none of the {len(battles)} battles "
            f"(models there: {battles.models()[:10]})"
        )
    other = router.weak_model if role == "strong" else router.strong_model
    if model == other:
        raise ConfigError(f"{model!r} is already the {'weak' if role == 'strong' else 'strong'} "
                          "model of this router")
    new = append_battles(router, battles, **{f"{role}_model": model})
    if not pair_is_connected(new, model, other):
        raise DataError(
            f"no battle joins {model!r} to {other!r}, directly or through other models: "
            "the router cannot rate one against the other"
        )
    return new
