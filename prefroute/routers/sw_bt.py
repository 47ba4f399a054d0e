"""Similarity-weighted Bradley-Terry: RouteLLM's SW ranking router (``sw_bt``), made fast.

For a query q, each training battle i gets the weight (RouteLLM, arXiv 2406.18665, sec. 4.1)

    w_i = gamma ** (1 + S_i),      S_i = cos(q, q_i) / max_j cos(q, q_j)

and a Bradley-Terry model fitted to the weighted battles between model tiers (or models)
gives ``P(strong wins | q) = sigmoid(theta[strong tier] - theta[weak tier])``, the Elo
formula on the natural-log scale.

Why it is fast: battles share prompts heavily (AlpacaEval: 36,700 battles over 644 distinct
prompts), and a battle's weight depends only on its prompt. So each DISTINCT prompt is
embedded once, and its battles are pre-aggregated into a row of tier-pair win counts
``C[prompt, (i, j)]`` (soft labels and ties as fractional wins). A query's weighted wins
matrix is then ``sum_p w_p * C_p``: one matrix product ``[B, n_prompts] @ [n_prompts, pairs]``
for a batch of B queries (with ``top_k``, a sparse gather over the k nearest prompts, found
exactly or with a FAISS IVF / HNSW index), and the B small weighted BT problems are solved
together by the batched Newton solver :func:`prefroute.data.ratings.fit_bt_batched`. When
the strong and weak tiers are joined only through bridges of the comparison graph
(RouteLLM's data: one reference model against all others), the maximum-likelihood gap is
closed-form (:func:`bridge_path`) and no solver runs.

:class:`SWBTReference` is the straightforward per-query computation (a scikit-learn
``LogisticRegression`` with sample weights on the expanded battle rows, as RouteLLM does
it); the tests check the fast path against it and the benchmark times both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from scipy.special import expit

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.data.ratings import BTRatings, fit_bt_batched, fit_ratings
from prefroute.data.tiers import ModelTiers, tiers_from_ratings
from prefroute.embed import build_embedder
from prefroute.embed.base import Embedder
from prefroute.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    check_choice,
    check_int,
    check_range,
)
from prefroute.routers.base import WinPredictor, register_router

_TIES = ("tie", "tie (bothbad)")
_TENSORS = (
    "prompt_embeddings",
    "pair_counts_data",
    "pair_counts_indices",
    "pair_counts_indptr",
    "pair_groups",
)
INDEX_FILE = "prompt_index.faiss"
#: ``index="auto"`` uses an exact flat index below this many distinct training prompts.
AUTO_FLAT_LIMIT = 50_000
#: Cap on a query chunk's [rows, n_prompts] similarity block (float64 entries, ~128 MiB).
_MAX_BLOCK_ENTRIES = 1 << 24
#: Pair-count matrices up to this many entries are also kept dense (BLAS products).
_MAX_DENSE_ENTRIES = 1 << 24
#: Batches up to this size compute cosines without BLAS (see ``SWBTRouter._cosines``).
_FEW_QUERIES = 4
_INDEX_PARAM_KEYS = ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search")
# a loaded checkpoint's top_k, batch_size and index settings: far above any real router,
# far below FAISS' int limit (ef_search is 2 top_k)
_MAX_LOADED_SIZE = 1 << 24


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _distinct_codes(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct strings of a column (first-appearance order) and each row's code."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(
        np.int64
    )


def battle_outcomes(
    battles: Battles, *, use_soft_labels: bool, ties: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Side a's score, the battle weight and the rows to keep, per battle.

    Returns
    -------
    (outcome_a, weight, keep): outcome_a is 1 (a won), 0 (b won), 0.5 (tie) or
    ``1 - p_b_wins`` where a soft label exists and ``use_soft_labels``; weight is the
    ``weight`` column (1 where null); keep is False for ties when ``ties="drop"``.
    """
    winner = battles.table["winner"]
    is_tie = pc.is_in(winner, value_set=pa.array(_TIES)).to_numpy(zero_copy_only=False)
    a_wins = pc.equal(winner, "model_a").to_numpy(zero_copy_only=False)
    outcome = np.where(a_wins, 1.0, np.where(is_tie, 0.5, 0.0))
    if use_soft_labels:
        p_b = battles.numeric("p_b_wins")
        outcome = np.where(np.isnan(p_b), outcome, 1.0 - p_b)
    weight = battles.numeric("weight")
    weight = np.where(np.isnan(weight), 1.0, weight)
    keep = ~is_tie if ties == "drop" else np.ones(len(battles), dtype=bool)
    return outcome, weight, keep


def similarity_weights(
    cos: np.ndarray, gamma: float, similarity_norm: str, valid: np.ndarray | None = None
) -> np.ndarray:
    """``gamma ** (1 + S)`` for a [B, n] block of cosines, in float64 (in place if float64).

    ``S = cos / max_j cos_j`` per row with ``similarity_norm="max"``; rows whose largest
    cosine is not positive (a query unlike every training prompt, or an empty one) are left
    unnormalised, since dividing by a non-positive max would reverse the ranking.
    ``valid`` masks entries (False: weight 0) and excludes them from the max.
    """
    s = np.asarray(cos, dtype=np.float64)
    if similarity_norm == "max":
        if valid is None:
            top = s.max(axis=1, keepdims=True)
        else:
            top = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
        s /= np.where(top > 0, top, 1.0)
    # gamma ** (1 + S) through exp: the same value, one vectorised pass
    s += 1.0
    s *= math.log(gamma)
    np.exp(s, out=s)
    if valid is not None:
        s[~valid] = 0.0
    return s


class _CountProduct:
    """``weights @ counts`` for dense or sparse weights; counts kept dense when small."""

    def __init__(self, counts: sparse.csr_matrix) -> None:
        n_rows, n_cols = counts.shape
        self.csr = sparse.csr_matrix(counts)
        self.dense = counts.toarray() if n_rows * n_cols <= _MAX_DENSE_ENTRIES else None
        # dense weights @ sparse counts runs as (C^T @ W^T)^T on the CSR of the transpose
        self.transposed = None if self.dense is not None else self.csr.T.tocsr()

    def __call__(self, weights: np.ndarray | sparse.csr_matrix) -> np.ndarray:
        if sparse.issparse(weights):
            out = weights @ (self.dense if self.dense is not None else self.csr)
            return out.toarray() if sparse.issparse(out) else np.asarray(out)
        if self.dense is not None:
            return weights @ self.dense
        return np.asarray((self.transposed @ weights.T).T)


def _bfs_path(
    neighbours: dict[int, set[int]], source: int, target: int, banned: tuple[int, int] | None = None
) -> list[int] | None:
    """A shortest path source -> target, optionally without one undirected edge."""
    previous = {source: source}
    frontier = [source]
    while frontier and target not in previous:
        reached = []
        for g in frontier:
            for n in sorted(neighbours.get(g, ())):
                if n in previous or (banned is not None and {g, n} == set(banned)):
                    continue
                previous[n] = g
                reached.append(n)
        frontier = reached
    if target not in previous:
        return None
    path = [target]
    while path[-1] != source:
        path.append(previous[path[-1]])
    return path[::-1]


def bridge_path(
    pair_groups: np.ndarray, source: int, target: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pair columns along the path source -> target when every step of it is a bridge.

    If removing an edge (i, j) disconnects source from target, the Bradley-Terry likelihood
    is free in ``theta_i - theta_j`` (shifting the whole far side moves only that edge's
    term), so its maximum-likelihood value is ``log(W_ij / W_ji)``. When the path consists
    of such bridges only, the strength gap of source and target is their sum: no solver is
    needed. RouteLLM's usual data has this shape: one reference model against all others
    (AlpacaEval's star), plus golden battles of the router's own pair; cycles elsewhere in
    the comparison graph do not matter.

    Returns
    -------
    (forward, backward) column indices into ``pair_groups`` (forward: "i beat j" for each
    step i -> j of the path; backward: "j beat i"), or None when the two groups are not
    joined by a path of bridges (then the Newton solver decides).
    """
    neighbours: dict[int, set[int]] = {}
    for i, j in np.asarray(pair_groups).tolist():
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    path = _bfs_path(neighbours, source, target) if source in neighbours else None
    if path is None:
        return None
    steps = list(zip(path[:-1], path[1:], strict=True))
    if any(_bfs_path(neighbours, source, target, banned=step) is not None for step in steps):
        return None  # some step lies on a cycle through both sides: strengths are coupled
    column = {(int(i), int(j)): c for c, (i, j) in enumerate(np.asarray(pair_groups).tolist())}
    if any((i, j) not in column or (j, i) not in column for i, j in steps):
        return None
    forward = np.array([column[(i, j)] for i, j in steps], dtype=np.int64)
    backward = np.array([column[(j, i)] for i, j in steps], dtype=np.int64)
    return forward, backward


@register_router
class SWBTRouter(WinPredictor):
    """Similarity-weighted Bradley-Terry over model tiers (RouteLLM's ``sw_ranking``).

    For a query q, battle i weighs ``gamma ** (1 + S_i)`` with S_i the cosine similarity of
    q and the battle's prompt, divided by its largest value over the training prompts
    (``similarity_norm="max"``, the paper; ``"none"`` uses the raw cosine). With gamma = 10
    the weights span 10 (unrelated or opposite prompts contribute less) to 100 (the nearest
    prompt). A weighted Bradley-Terry model over tiers (or models) is fitted per query and
    ``P(strong wins) = sigmoid(theta[strong] - theta[weak])``.

    Parameters
    ----------
    strong_model, weak_model: model names as in the training battles.
    embedder: prompt embedder: a name (``"wordllama"``), a spec dict, or an Embedder
        (recorded by its ``spec()``).
    gamma: the weight base (> 1 favours similar prompts; RouteLLM: 10).
    similarity_norm: ``"max"`` (S = cos / max cos, the paper) or ``"none"`` (S = cos).
    num_tiers: group models into this many tiers of similar global BT strength
        (:func:`prefroute.data.tiers.optimal_tiers`) and rate tiers per query; 0 or None
        rates the models themselves (the default). Battles within one tier carry no
        information and are dropped (and counted in the log). If the strong and weak model
        share a tier every prediction is 0.5; fit warns about it. RouteLLM rated Arena
        tiers; the default here rates models because golden battles are mostly ties, which
        pull the pair's global ratings together until 10 tiers put them in one tier (golden
        cross-fit on MMLU: APGR 0.500 with 10 tiers, 0.633 per model; benchmarks/RESULTS.md).
    top_k: None weighs all training battles (the paper); k weighs only the battles of the
        k nearest distinct training prompts (found with the FAISS index).
    index: nearest-prompt search for ``top_k``: ``"flat"`` (exact: one BLAS product and an
        argpartition, as faiss' IndexFlatIP does but faster than its generic CPU build),
        ``"ivf"`` (FAISS IndexIVFFlat), ``"hnsw"`` (FAISS IndexHNSWFlat) or ``"auto"`` (flat
        below 50,000 distinct prompts, else HNSW). With ``top_k=None`` every similarity is
        needed, so no index is built and this only records the choice.
    index_params: overrides for the approximate indexes: ``nlist`` (IVF lists, default
        sqrt(n)), ``nprobe`` (lists searched, default max(16, nlist / 8)), ``hnsw_m``
        (default 16), ``ef_construction`` (default 40), ``ef_search`` (default
        max(64, 2 top_k)).
    ties: ``"half"`` counts ties as half a win for each side; ``"drop"`` removes them.
    use_soft_labels: score side a with ``1 - p_b_wins`` where a battle has it (LLM judges).
    reg: ridge on the per-query BT strengths (> 0; tiny by default, as the paper's fit is
        unregularised; it keeps a never-losing tier finite).
    batch_size: queries scored together (memory for the [batch, n_prompts] weights is
        capped at about 128 MiB whatever this is).

    Attributes
    ----------
    embedder_: the fitted embedder.
    prompt_embeddings_: float32 [n_prompts, dim], the distinct training prompts that have a
    battle between two tiers.
    pair_counts_: CSR [n_prompts, n_pairs], weighted wins of ``pair_groups_[p, 0]`` over
    ``pair_groups_[p, 1]`` for each prompt.
    group_of_model_: model -> tier (or model) index; n_groups_; tiers_ (ModelTiers or None);
    ratings_ (global BTRatings or None); strong_group_, weak_group_; index_kind_;
    index_ (the FAISS index for top_k, None for exact search).
    """

    concurrent_predict = True

    router_type = "sw_bt"

    def __init__(
        self,
        *,
        strong_model: str,
        weak_model: str,
        embedder: str | dict[str, Any] | Embedder = "wordllama",
        gamma: float = 10.0,
        similarity_norm: str = "max",
        num_tiers: int | None = 0,
        top_k: int | None = None,
        index: str = "auto",
        index_params: dict[str, int] | None = None,
        ties: str = "half",
        use_soft_labels: bool = True,
        reg: float = 1e-6,
        batch_size: int = 1024,
    ) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.gamma = gamma
        self.similarity_norm = similarity_norm
        self.num_tiers = num_tiers
        self.top_k = top_k
        self.index = index
        self.index_params = index_params
        self.ties = ties
        self.use_soft_labels = use_soft_labels
        self.reg = reg
        self.batch_size = batch_size

    # checks ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        owner = type(self).__name__
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise ConfigError(
                f"The 'gamma' parameter of {owner} must be a number > 0. "
                f"Got {self.gamma!r} instead."
            )
        # gamma ** 2 is the largest weight: keep it far from float64 overflow
        check_range("gamma", owner, self.gamma, low=0.0, high=1e100, low_inclusive=False)
        check_choice("similarity_norm", owner, self.similarity_norm, ("max", "none"))
        check_choice("index", owner, self.index, ("flat", "ivf", "hnsw", "auto"))
        check_choice("ties", owner, self.ties, ("half", "drop"))
        check_choice("use_soft_labels", owner, self.use_soft_labels, (True, False))
        check_range("reg", owner, self.reg, low=0.0, low_inclusive=False)
        check_int("num_tiers", owner, self.num_tiers, low=0, optional=True)
        check_int("top_k", owner, self.top_k, optional=True)
        check_int("batch_size", owner, self.batch_size)
        if self.index_params is not None:
            if not isinstance(self.index_params, dict):
                raise ConfigError(
                    f"The 'index_params' parameter of {owner} must be a dict or None. "
                    f"Got {self.index_params!r} instead."
                )
            unknown = sorted(set(self.index_params) - set(_INDEX_PARAM_KEYS))
            if unknown:
                raise ConfigError(
                    f"The 'index_params' parameter of {owner} accepts the keys "
                    f"{list(_INDEX_PARAM_KEYS)}. Got unknown keys {unknown} instead."
                )
            for key, value in self.index_params.items():
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                    raise ConfigError(
                        f"The 'index_params' parameter of {owner} needs int values >= 1. "
                        f"Got {key}={value!r} instead."
                    )

    # fit ------------------------------------------------------------------------------
    def _groups(self, battles: Battles, models: list[str]) -> tuple[dict[str, int], int]:
        """Model -> group (tier or model) and the number of groups; sets tiers_/ratings_."""
        self.tiers_: ModelTiers | None = None
        self.ratings_: BTRatings | None = None
        if not self.num_tiers:
            return {m: i for i, m in enumerate(models)}, len(models)
        ratings = fit_ratings(
            battles, use_soft_labels=self.use_soft_labels, ties=self.ties, reg=self.reg
        )
        n_distinct = int(np.unique(ratings.theta).size)
        k = int(self.num_tiers)
        if k > n_distinct:
            logger.warning(
                "sw_bt: num_tiers=%d but only %d distinct model ratings; using %d tiers",
                k,
                n_distinct,
                n_distinct,
            )
            k = n_distinct
        tiers = tiers_from_ratings(ratings, k)
        self.tiers_, self.ratings_ = tiers, ratings
        return dict(tiers.tier_of), k

    def _fit(self, battles: Battles) -> None:
        self._check_params()
        models = battles.models()
        for role in ("strong_model", "weak_model"):
            name = getattr(self, role)
            if name not in models:
                raise ConfigError(
                    f"{role} {name!r} does not appear in the training battles; "
                    f"known models: {models}"
                )
        outcome, weight, keep = battle_outcomes(
            battles, use_soft_labels=self.use_soft_labels, ties=self.ties
        )
        if not keep.any():
            raise DataError("every training battle is a tie and ties='drop': nothing to learn")
        if not keep.all():
            logger.info(
                "sw_bt: dropped %d tied battles of %d (ties='drop')",
                int((~keep).sum()),
                len(battles),
            )
        group_of, n_groups = self._groups(battles, models)

        table = battles.table
        value_set = pa.array(models, type=pa.string())
        lookup = np.array([group_of[m] for m in models], dtype=np.int64)
        group_a = lookup[
            pc.index_in(table["model_a"], value_set=value_set)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        ]
        group_b = lookup[
            pc.index_in(table["model_b"], value_set=value_set)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        ]
        same = keep & (group_a == group_b)
        if same.any():
            logger.info(
                "sw_bt: %d of %d battles are within one %s and carry no information",
                int(same.sum()),
                len(battles),
                "tier" if self.num_tiers else "model",
            )
        keep &= ~same
        if not keep.any():
            raise DataError(
                "no battle is between two different tiers: nothing to learn; "
                "use more tiers (num_tiers) or num_tiers=0"
            )
        prompts, code = _distinct_codes(table["prompt"])

        # Ordered pair (i, j) counts "i beat j": a battle adds w * o to (a, b) and
        # w * (1 - o) to (b, a). Only pairs that occur get a column.
        a, b, o, w, rows = group_a[keep], group_b[keep], outcome[keep], weight[keep], code[keep]
        flat = np.concatenate([a * n_groups + b, b * n_groups + a])
        pair_codes, cols = np.unique(flat, return_inverse=True)
        counts = sparse.csr_matrix(
            (np.concatenate([w * o, w * (1.0 - o)]), (np.concatenate([rows, rows]), cols)),
            shape=(len(prompts), pair_codes.size),
        )
        counts.sum_duplicates()
        counts.eliminate_zeros()
        informative = np.diff(counts.indptr) > 0
        if not informative.all():
            logger.info(
                "sw_bt: %d of %d distinct prompts have no weighted battle between "
                "two tiers and are left out",
                int((~informative).sum()),
                len(prompts),
            )
        counts = counts[informative]
        prompts = [p for p, keep_p in zip(prompts, informative, strict=True) if keep_p]

        embedder = build_embedder(self.embedder)
        if embedder.needs_fit:
            embedder.fit(prompts)
        embeddings = np.ascontiguousarray(embedder.encode(prompts), dtype=np.float32)
        logger.info(
            "sw_bt: %d battles (%d used) over %d distinct prompts, %d %s, %d tier pairs",
            len(battles),
            int(keep.sum()),
            len(prompts),
            n_groups,
            "tiers" if self.num_tiers else "models",
            pair_codes.size,
        )

        self.embedder_ = embedder
        self.group_of_model_ = group_of
        self.n_groups_ = n_groups
        self._set_state(
            embeddings,
            counts,
            np.stack([pair_codes // n_groups, pair_codes % n_groups], axis=1),
            index_kind=self._resolve_index_kind(len(prompts)),
        )
        if self.strong_group_ == self.weak_group_:
            logger.warning(
                "sw_bt: strong model %r and weak model %r fall in the same tier %d: every "
                "prediction will be 0.5. Use more tiers (num_tiers) or num_tiers=0.",
                self.strong_model,
                self.weak_model,
                self.strong_group_,
            )
        self.index_ = self._build_index()

    def with_search(
        self, *, top_k: int | None, index: str = "auto", index_params: dict[str, int] | None = None
    ) -> SWBTRouter:
        """A copy of this fitted router that weighs another neighbourhood, without refitting.

        The prompt embeddings and pair counts do not depend on ``top_k`` or the index, so
        only the index is built (the copy shares the other arrays). Handy to tune ``top_k``.
        """
        if not self.is_fitted:
            raise ConfigError(f"{type(self).__name__} is not fitted: call fit first")
        other = copy.copy(self)
        other.top_k, other.index, other.index_params = top_k, index, index_params
        other._check_params()
        other.index_kind_ = other._resolve_index_kind(self.prompt_embeddings_.shape[0])
        other.index_ = other._build_index()
        return other

    def _resolve_index_kind(self, n_prompts: int) -> str:
        if self.index != "auto":
            kind = self.index
        else:
            kind = "flat" if n_prompts < AUTO_FLAT_LIMIT else "hnsw"
        if self.top_k is None and self.index != "auto":
            logger.info(
                "sw_bt: top_k=None weighs every training prompt; the %r index is not used",
                self.index,
            )
        return kind

    def _set_state(
        self,
        embeddings: np.ndarray,
        counts: sparse.csr_matrix,
        pair_groups: np.ndarray,
        *,
        index_kind: str,
    ) -> None:
        """Install the learned arrays and the derived ones used for scoring."""
        self.prompt_embeddings_ = embeddings
        self.pair_counts_ = counts
        self.pair_groups_ = pair_groups.astype(np.int64)
        self.index_kind_ = index_kind
        self.strong_group_ = int(self.group_of_model_[self.strong_model])
        self.weak_group_ = int(self.group_of_model_[self.weak_model])
        self._pair_flat = self.pair_groups_[:, 0] * self.n_groups_ + self.pair_groups_[:, 1]
        self._path = bridge_path(self.pair_groups_, self.strong_group_, self.weak_group_)
        self._all_pairs = _CountProduct(counts)
        self._path_pairs = (
            None if self._path is None else _CountProduct(counts[:, np.concatenate(self._path)])
        )

    @property
    def solver_(self) -> str:
        """``"closed form"`` when strong and weak tiers are joined by bridges (see
        :func:`bridge_path`), else ``"newton"`` (the batched solver runs per query)."""
        if self.strong_group_ == self.weak_group_:
            return "same tier"
        return "closed form" if self._path is not None else "newton"

    # index ----------------------------------------------------------------------------
    def _index_setting(self, key: str, default: int) -> int:
        return int((self.index_params or {}).get(key, default))

    def _nprobe(self, nlist: int) -> int:
        # ~0.95 recall of the 100 nearest on wordllama embeddings of the shared data
        return min(nlist, self._index_setting("nprobe", max(16, nlist // 8)))

    def _ef_search(self) -> int:
        return self._index_setting("ef_search", max(64, 2 * int(self.top_k or 1)))

    def _build_index(self) -> Any:
        """The FAISS index for ``top_k`` (None for an exact search or for ``top_k=None``)."""
        if self.top_k is None or self.index_kind_ == "flat":
            # Exact search is one BLAS product and an argpartition: faiss' IndexFlatIP does
            # the same product, but its generic CPU build measured ~3x slower here.
            return None
        import faiss

        x = self.prompt_embeddings_
        n, dim = x.shape
        kind = self.index_kind_
        if kind == "ivf":
            nlist = self._index_setting("nlist", max(1, min(round(math.sqrt(n)), n // 39)))
            nlist = max(1, min(nlist, n))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on a sample of 64 points per list: training cost stays O(nlist^2)
            index.cp.max_points_per_centroid = 64
            index.train(x)
            index.nprobe = self._nprobe(nlist)
        else:
            index = faiss.IndexHNSWFlat(
                dim, self._index_setting("hnsw_m", 16), faiss.METRIC_INNER_PRODUCT
            )
            index.hnsw.efConstruction = self._index_setting("ef_construction", 40)
            index.hnsw.efSearch = self._ef_search()
        index.add(x)
        logger.info("sw_bt: built a %s FAISS index over %d prompts", kind, n)
        return index

    # predict --------------------------------------------------------------------------
    def _rows_per_chunk(self) -> int:
        n = max(1, self.prompt_embeddings_.shape[0])
        width = n if self.index_ is None else min(int(self.top_k), n)
        return int(max(1, min(self.batch_size, _MAX_BLOCK_ENTRIES // width)))

    def _predict(self, prompts: list[str]) -> np.ndarray:
        queries = self.embedder_.encode(prompts)
        return self.strong_win_prob_from_embeddings(queries)

    def strong_win_prob_from_embeddings(self, queries: np.ndarray) -> np.ndarray:
        """P(strong wins) for already embedded queries (float32 [B, dim], unit rows)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(queries.shape[0])
        step = self._rows_per_chunk()
        for start in range(0, queries.shape[0], step):
            chunk = queries[start : start + step]
            out[start : start + step] = self._solve(self._query_weights(chunk))
        return out

    def weighted_pair_wins(self, queries: np.ndarray) -> np.ndarray:
        """Similarity-weighted wins per tier pair, float64 [B, n_pairs] (see ``pair_groups_``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self._all_pairs(self._query_weights(queries))

    def _query_weights(self, queries: np.ndarray) -> np.ndarray | sparse.csr_matrix:
        """Battle weights per (query, distinct training prompt): dense [B, n], or sparse
        [B, n] holding only the ``top_k`` nearest prompts."""
        if self.top_k is None:
            return similarity_weights(self._cosines(queries), self.gamma, self.similarity_norm)
        n = self.prompt_embeddings_.shape[0]
        k = min(int(self.top_k), n)
        if self.index_ is None:  # exact
            cos = self._cosines(queries)
            ids = (
                np.argpartition(-cos, k - 1, axis=1)[:, :k]
                if k < n
                else np.broadcast_to(np.arange(n), cos.shape)
            )
            sims = np.take_along_axis(cos, ids, axis=1)
        else:
            sims, ids = self.index_.search(queries, k)
        valid = ids >= 0  # approximate indexes may return fewer than k
        weights = similarity_weights(sims, self.gamma, self.similarity_norm, valid)
        b = queries.shape[0]
        return sparse.csr_matrix(
            (weights.ravel(), np.where(valid, ids, 0).ravel(), np.arange(0, b * k + 1, k)),
            shape=(b, n),
        )

    def _cosines(self, queries: np.ndarray) -> np.ndarray:
        """Cosine of each query with each distinct training prompt, float32 [B, n]."""
        if queries.shape[0] <= _FEW_QUERIES:
            # A few queries are a memory-bound matrix-vector product: einsum's single-thread
            # loop beats multi-threaded BLAS, whose threads spin badly on a busy machine.
            return np.einsum("nd,bd->bn", self.prompt_embeddings_, queries)
        return queries @ self.prompt_embeddings_.T

    def _solve(self, weights: np.ndarray | sparse.csr_matrix) -> np.ndarray:
        """P(strong beats weak) from each query's battle weights."""
        b = weights.shape[0]
        if self.strong_group_ == self.weak_group_:
            return np.full(b, 0.5)
        out = np.empty(b)
        newton = np.ones(b, dtype=bool)
        if self._path is not None:
            along = self._path_pairs(weights)
            steps = along.shape[1] // 2
            forward, backward = along[:, :steps], along[:, steps:]
            closed = (forward > 0).all(axis=1) & (backward > 0).all(axis=1)
            logit = np.log(forward[closed]).sum(axis=1) - np.log(backward[closed]).sum(axis=1)
            out[closed] = expit(logit)
            newton = ~closed
        if newton.any():
            t = self.n_groups_
            rows = self._all_pairs(weights[newton])
            wins = np.zeros((rows.shape[0], t * t))
            wins[:, self._pair_flat] = rows
            theta = fit_bt_batched(wins.reshape(-1, t, t), reg=self.reg)
            out[newton] = expit(theta[:, self.strong_group_] - theta[:, self.weak_group_])
        return out

    # checkpoints ----------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        counts = self.pair_counts_
        tensors = {
            "prompt_embeddings": self.prompt_embeddings_,
            "pair_counts_data": counts.data.astype(np.float64),
            "pair_counts_indices": counts.indices.astype(np.int64),
            "pair_counts_indptr": counts.indptr.astype(np.int64),
            "pair_groups": self.pair_groups_,
        }
        extra = {
            "embedder": self.embedder_.spec(),
            "group_of_model": dict(self.group_of_model_),
            "n_groups": int(self.n_groups_),
            "tiers": None if self.tiers_ is None else self.tiers_.to_dict(),
            "ratings": None if self.ratings_ is None else self.ratings_.to_dict(),
            "index_kind": self.index_kind_,
            "index_file": INDEX_FILE if self._writes_index() else None,
            "n_prompts": int(self.prompt_embeddings_.shape[0]),
        }
        return tensors, extra

    def _writes_index(self) -> bool:
        # Approximate indexes are saved as built (multi-threaded construction need not be
        # reproducible); exact search needs only the embeddings.
        return self.index_ is not None

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory)
        if self._writes_index():
            import faiss

            faiss.write_index(self.index_, str(Path(directory) / INDEX_FILE))

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        return list(_TENSORS)

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        directory = Path(directory)
        where = directory / "config.json"
        for key in ("embedder", "group_of_model", "n_groups", "index_kind", "n_prompts"):
            if key not in extra:
                raise CheckpointError(f"{where}: state lacks {key!r}")
        try:
            self._check_load_limits()
            embedder = build_embedder(self.embedder)
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{where}: {e}") from None
        if embedder.spec() != extra["embedder"]:
            raise CheckpointError(
                f"{where}: the 'embedder' parameter {embedder.spec()} does not match the "
                f"embedder the prompt embeddings were made with {extra['embedder']}"
            )
        if embedder.needs_fit:
            embedder.load_state(directory)
        try:
            embedder_dim = embedder.dim  # builds a nested embedder (features' inner)
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from None
        embeddings = tensors["prompt_embeddings"]
        n_groups = extra["n_groups"]
        group_of = extra["group_of_model"]
        n = extra["n_prompts"]
        pair_groups = tensors["pair_groups"]
        indptr = tensors["pair_counts_indptr"]
        indices = tensors["pair_counts_indices"]
        data = tensors["pair_counts_data"]
        problems = []
        if not _is_int(n) or n < 1:
            raise CheckpointError(f"{where}: n_prompts must be a positive int, got {n!r}")
        if embeddings.dtype != np.float32 or embeddings.shape != (n, embedder_dim):
            problems.append(
                f"prompt_embeddings is {embeddings.dtype} {embeddings.shape}, "
                f"expected float32 ({n}, {embedder_dim})"
            )
        if not isinstance(group_of, dict) or not _is_int(n_groups) or n_groups < 1:
            problems.append("n_groups / group_of_model are malformed")
        elif n_groups > len(group_of):  # each group (tier or model) holds a model
            problems.append(f"n_groups {n_groups} exceeds the {len(group_of)} saved models")
        elif any(not _is_int(g) or not 0 <= g < n_groups for g in group_of.values()):
            problems.append(f"group_of_model has groups outside [0, {n_groups})")
        if (
            pair_groups.ndim != 2
            or pair_groups.shape[1:] != (2,)
            or (
                pair_groups.size
                and (
                    pair_groups.min() < 0
                    or pair_groups.max() >= n_groups
                    or (pair_groups[:, 0] == pair_groups[:, 1]).any()
                )
            )
        ):
            problems.append(
                f"pair_groups {pair_groups.shape} is not a list of distinct "
                f"group pairs below {n_groups}"
            )
        n_pairs = pair_groups.shape[0] if pair_groups.ndim == 2 else 0
        if (
            indptr.shape != (n + 1,)
            or indptr[0] != 0
            or (np.diff(indptr) < 0).any()
            or indptr[-1] != indices.size
            or indices.shape != data.shape
            or (indices.size and (indices.min() < 0 or indices.max() >= n_pairs))
        ):
            problems.append("the pair-count CSR arrays are inconsistent")
        elif not np.isfinite(data).all() or (data < 0).any():
            problems.append("pair counts must be finite and non-negative")
        for role in ("strong_model", "weak_model"):
            if isinstance(group_of, dict) and getattr(self, role) not in group_of:
                problems.append(
                    f"{role} {getattr(self, role)!r} is not among the saved "
                    f"models {sorted(group_of)}"
                )
        if extra["index_kind"] not in ("flat", "ivf", "hnsw"):
            problems.append(f"unknown index kind {extra['index_kind']!r}")
        if not isinstance(extra.get("index_file"), (str, type(None))):
            problems.append("index_file must be a file name or null")
        if problems:
            raise CheckpointError(f"{directory}: " + "; ".join(problems))

        self.embedder_ = embedder
        self.group_of_model_ = {str(m): int(g) for m, g in group_of.items()}
        self.n_groups_ = n_groups
        tiers, ratings = extra.get("tiers"), extra.get("ratings")
        for key, value in (("tiers", tiers), ("ratings", ratings)):
            if value is not None and not isinstance(value, dict):
                raise CheckpointError(f"{where}: state.{key} must be an object or null")
        try:
            self.tiers_ = None if tiers is None else ModelTiers.from_dict(tiers)
            self.ratings_ = None if ratings is None else BTRatings.from_dict(ratings)
        except (DataError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: state.tiers / state.ratings: {e}") from None
        counts = sparse.csr_matrix((data, indices, indptr), shape=(n, n_pairs))
        self._set_state(embeddings, counts, pair_groups, index_kind=extra["index_kind"])
        approximate = self.top_k is not None and self.index_kind_ != "flat"
        if approximate != bool(extra.get("index_file")):
            raise CheckpointError(
                f"{where}: top_k={self.top_k!r} with a {self.index_kind_!r} index needs "
                f"{'a' if approximate else 'no'} saved index file; index_file is "
                f"{extra.get('index_file')!r}"
            )
        self.index_ = self._read_index(directory / extra["index_file"]) if approximate else None

    def _check_load_limits(self) -> None:
        """Sizes a checkpoint sets stay below what exhausts a machine or overflows FAISS."""
        owner = type(self).__name__
        if self.top_k is not None:
            check_range("top_k", owner, self.top_k, low=1, high=_MAX_LOADED_SIZE)
        check_range("batch_size", owner, self.batch_size, low=1, high=_MAX_LOADED_SIZE)
        for key, value in (self.index_params or {}).items():
            check_range(f"index_params.{key}", owner, value, low=1, high=_MAX_LOADED_SIZE)

    def _read_index(self, path: Path) -> Any:
        import faiss

        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise CheckpointError(f"{path} is not a readable FAISS index ({e})") from None
        expected = {"ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}.get(self.index_kind_)
        n, dim = self.prompt_embeddings_.shape
        if (
            expected is None
            or not isinstance(index, expected)
            or index.ntotal != n
            or index.d != dim
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise CheckpointError(
                f"{path} holds a {type(index).__name__} of {index.ntotal} {index.d}-d vectors; "
                f"expected an inner-product {self.index_kind_} index of {n} {dim}-d vectors"
            )
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = self._nprobe(index.nlist)
        else:
            index.hnsw.efSearch = self._ef_search()
        return index


class SWBTReference:
    """The straightforward SW-ranking computation, one query at a time (RouteLLM's way).

    Every battle keeps its own row: for each query, the cosine to every battle's prompt,
    the weights ``gamma ** (1 + S)``, and a scikit-learn ``LogisticRegression`` without
    intercept or penalty, with sample weights, on the expanded battle rows (a row is ``+1``
    for side a's tier and ``-1`` for side b's, once with label 1 and weight ``w * o`` and once
    with label 0 and weight ``w * (1 - o)``): its coefficients are the tiers' BT strengths.
    Battle prompts are embedded once up front, as RouteLLM precomputes its embeddings. It
    uses the fitted router's embedder and tiers but none of its aggregation, weighting or
    solver code, so it checks them. Only ``top_k=None`` (the paper).

    Parameters
    ----------
    router: a fitted SWBTRouter (its embedder, tiers and parameters are used).
    battles: the router's training battles.
    solver, tol: passed to LogisticRegression. The defaults (lbfgs, 1e-4) are scikit-learn's
        and RouteLLM's (within ~1e-3 of the exact probabilities); ``tol=1e-8`` gets ~1e-8.
    """

    def __init__(
        self, router: SWBTRouter, battles: Battles, *, solver: str = "lbfgs", tol: float = 1e-4
    ) -> None:
        if not router.is_fitted:
            raise ConfigError("SWBTReference needs a fitted SWBTRouter")
        if router.top_k is not None:
            raise ConfigError("SWBTReference implements top_k=None (every battle) only")
        self.router, self.solver, self.tol = router, solver, tol
        winner = np.array(battles.column("winner"), dtype=object)
        outcome = np.select([winner == "model_a", winner == "model_b"], [1.0, 0.0], 0.5)
        if router.use_soft_labels:
            p_b = battles.numeric("p_b_wins")
            outcome = np.where(np.isnan(p_b), outcome, 1.0 - p_b)
        weight = np.nan_to_num(battles.numeric("weight"), nan=1.0)
        group_a = np.array([router.group_of_model_[m] for m in battles.column("model_a")])
        group_b = np.array([router.group_of_model_[m] for m in battles.column("model_b")])
        keep = (group_a != group_b) & (weight > 0)
        if router.ties == "drop":
            keep &= ~np.isin(winner, _TIES)
        idx = np.flatnonzero(keep)
        prompts = battles.column("prompt")
        distinct, code = np.unique(
            np.array([prompts[i] for i in idx], dtype=object), return_inverse=True
        )
        self.battle_embeddings = router.embedder_.encode(list(distinct))[code]
        n, t = idx.size, router.n_groups_
        x = np.zeros((n, t))
        x[np.arange(n), group_a[idx]] = 1.0
        x[np.arange(n), group_b[idx]] = -1.0
        self.features = np.concatenate([x, x])
        self.labels = np.concatenate([np.ones(n), np.zeros(n)])
        self.row_mass = np.concatenate(
            [weight[idx] * outcome[idx], weight[idx] * (1.0 - outcome[idx])]
        )

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """P(strong wins) for each prompt, fitting one logistic regression per prompt."""
        from sklearn.linear_model import LogisticRegression

        r = self.router
        out = np.empty(len(prompts))
        for i, prompt in enumerate(prompts):
            query = r.embedder_.encode([prompt])[0].astype(np.float64)
            cos = self.battle_embeddings.astype(np.float64) @ query
            top = cos.max()
            similarity = cos / top if r.similarity_norm == "max" and top > 0 else cos
            battle_weight = r.gamma ** (1.0 + similarity)
            lr = LogisticRegression(
                fit_intercept=False, C=np.inf, solver=self.solver, tol=self.tol, max_iter=10_000
            )
            lr.fit(
                self.features,
                self.labels,
                sample_weight=self.row_mass * np.concatenate([battle_weight, battle_weight]),
            )
            theta = lr.coef_[0]
            out[i] = expit(theta[r.strong_group_] - theta[r.weak_group_])
        return out
