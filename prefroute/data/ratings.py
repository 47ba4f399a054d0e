"""Bradley-Terry ratings of models from pairwise battles.

The model: P(i beats j) = sigmoid(theta_i - theta_j), with theta the natural-log strength.
Battles are first aggregated into a weighted wins matrix ``W[i, j]`` (how much i beat j),
then theta is the ridge-regularised maximum-likelihood estimate, found by Newton's method
on the concave log-likelihood. ``fit_bt_batched`` solves many small problems at once (one
per query, for similarity-weighted routers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from scipy.special import expit, log_expit

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.errors import ConfigError, DataError, check_choice, check_range

#: Chatbot Arena's Elo scale: ``elo = ELO_SCALE * theta + ELO_BASE``, i.e. a 400-point gap
#: means 10:1 odds of winning.
ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0

_TIES = ("tie", "tie (bothbad)")


def pairwise_counts(
    model_a_idx: np.ndarray,
    model_b_idx: np.ndarray,
    outcome_a: np.ndarray,
    weights: np.ndarray | None,
    n_models: int,
) -> np.ndarray:
    """Aggregate battles into a weighted wins matrix.

    Parameters
    ----------
    model_a_idx, model_b_idx: int [m], the model index of each side of each battle.
    outcome_a: float [m], the score of side a: 1 = a wins, 0 = b wins, 0.5 = tie, or a soft
        label in [0, 1] (``1 - p_b_wins``).
    weights: float [m] battle weights, or None for all ones.
    n_models: the number of models n.

    Returns
    -------
    float [n, n]: ``W[i, j]`` = total weight of i beating j (a tie adds half to each side).
    """
    a = np.asarray(model_a_idx, dtype=np.int64)
    b = np.asarray(model_b_idx, dtype=np.int64)
    o = np.asarray(outcome_a, dtype=np.float64)
    w = np.ones_like(o) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (a.shape == b.shape == o.shape == w.shape) or a.ndim != 1:
        raise DataError(
            f"pairwise_counts needs 1-d arrays of equal length, got shapes "
            f"{a.shape}, {b.shape}, {o.shape}, {w.shape}"
        )
    flat = np.concatenate([a * n_models + b, b * n_models + a])
    mass = np.concatenate([w * o, w * (1.0 - o)])
    # bincount is several times faster than np.add.at for this scatter-add
    return np.bincount(flat, weights=mass, minlength=n_models * n_models).reshape(
        n_models, n_models
    )


def bt_log_likelihood(wins: np.ndarray, theta: np.ndarray, reg: float = 0.0) -> np.ndarray | float:
    """Ridge-penalised BT log-likelihood ``sum W_ij log sigmoid(t_i - t_j) - reg/2 |t|^2``.

    Parameters
    ----------
    wins: float [n, n] or [B, n, n] wins matrix.
    theta: float [n] or [B, n] log-strengths.
    reg: the L2 penalty.

    Returns
    -------
    The objective, a float (or float [B] for batched input).
    """
    w = np.asarray(wins, dtype=np.float64)
    t = np.asarray(theta, dtype=np.float64)
    diff = t[..., :, None] - t[..., None, :]
    value = (w * log_expit(diff)).sum(axis=(-2, -1)) - 0.5 * reg * (t * t).sum(axis=-1)
    return float(value) if np.ndim(value) == 0 else value


def _objective_and_prob(
    d: np.ndarray, games: np.ndarray, lost: np.ndarray, theta: np.ndarray, reg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Penalised log-likelihood [B] and P(i beats j) [B, E] over pairs i < j, one exp pass.

    ``d`` = theta_i - theta_j per pair; with ``games`` = W_ij + W_ji and ``lost`` = W_ji the
    pair's terms W_ij log s(d) + W_ji log s(-d) equal games * log s(d) - lost * d.
    """
    e = np.exp(-np.abs(d))
    # log sigmoid(d) = min(d, 0) - log1p(exp(-|d|)), stable for any d
    log_sig = np.minimum(d, 0.0)
    log_sig -= np.log1p(e)
    value = (
        np.einsum("be,be->b", games, log_sig)
        - np.einsum("be,be->b", lost, d)
        - 0.5 * reg * np.einsum("bn,bn->b", theta, theta)
    )
    prob = np.where(d >= 0.0, 1.0, e)
    prob /= 1.0 + e
    return value, prob


def _check_solver_args(reg: float, max_iter: int, tol: float, owner: str) -> None:
    check_range("reg", owner, reg, low=0.0, low_inclusive=False)
    check_range("max_iter", owner, max_iter, low=1)
    check_range("tol", owner, tol, low=0.0, low_inclusive=False)


def fit_bt_batched(
    wins: np.ndarray,
    *,
    reg: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> np.ndarray:
    """Fit B independent Bradley-Terry problems at once with batched Newton steps.

    Each iteration builds the gradient and the (negated) Hessian of every active problem
    and solves all Newton systems with one batched ``np.linalg.solve``; a backtracking
    line search keeps every step an ascent step, and problems leave the batch once their
    step is below ``tol``.

    Parameters
    ----------
    wins: float [B, n, n], ``wins[b, i, j]`` = weight of i beating j in problem b.
    reg: L2 ridge on theta (> 0). It makes the problem strictly concave, so theta is unique
        (mean 0) even for disconnected comparison graphs, and keeps a model that never
        loses (or never wins) finite. It is absolute, so it is negligible next to counts.
    max_iter: the most Newton iterations.
    tol: stop a problem when its largest step ``|delta theta|`` is below this.

    Returns
    -------
    float [B, n] log-strengths, each row centred to mean 0.
    """
    _check_solver_args(reg, max_iter, tol, "fit_bt_batched")
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise DataError(f"wins must have shape [B, n, n], got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("wins must be finite and non-negative")
    n_batch, n, _ = w.shape
    theta = np.zeros((n_batch, n))
    if n_batch == 0 or n == 0:
        return theta

    # Work on the pairs i < j that have games in some problem (half the matrix, fewer for
    # sparse comparison graphs); self-battles carry no information and are left out.
    iu, ju = np.triu_indices(n, k=1)
    flat = w.reshape(n_batch, n * n)
    games_all = flat.take(iu * n + ju, axis=1) + flat.take(ju * n + iu, axis=1)
    used = games_all.any(axis=0)
    iu, ju, games = iu[used], ju[used], games_all[:, used]
    won_u, lost_u = flat.take(iu * n + ju, axis=1), flat.take(ju * n + iu, axis=1)
    n_pairs = iu.size
    # incidence matrix: per-model sums of pair terms x are x @ inc; dense is faster for small
    # problems (scipy.sparse has a high per-call cost), sparse saves memory for large ones
    pair_ids = np.arange(n_pairs)
    if n_pairs * n <= 1_000_000:
        inc = np.zeros((n_pairs, n))
        inc[pair_ids, iu], inc[pair_ids, ju] = 1.0, -1.0
    else:
        inc = sparse.csr_matrix(
            (np.repeat([1.0, -1.0], n_pairs), (np.tile(pair_ids, 2), np.concatenate([iu, ju]))),
            shape=(n_pairs, n),
        )
    abs_inc = abs(inc)
    diag = np.arange(n)
    # cell_pair[i * n + j]: the pair of cell (i, j), or n_pairs (a zero column) if none;
    # gathering with it builds the dense Hessians far faster than a fancy-index scatter
    cell_pair = np.full((n, n), n_pairs)
    cell_pair[iu, ju] = cell_pair[ju, iu] = pair_ids
    cell_pair = cell_pair.ravel()

    def pair_diff(theta_: np.ndarray) -> np.ndarray:
        return theta_.take(iu, axis=1) - theta_.take(ju, axis=1)

    # State of the problems still iterating, compacted whenever some converge.
    active = np.arange(n_batch)
    t = theta.copy()
    f, p = _objective_and_prob(pair_diff(t), games, lost_u, t, reg)
    n_iter = 0
    while active.size and n_iter < max_iter:
        n_iter += 1
        games_p = games * p
        grad = (won_u - games_p) @ inc - reg * t
        # The exact gradient and Newton step of a centred theta are centred too; removing the
        # round-off in the mean direction (curvature only `reg`) stops it being amplified 1/reg.
        grad -= grad.mean(axis=1, keepdims=True)
        # -Hessian = weighted graph Laplacian of the comparison graph + reg * I (SPD)
        curv = games_p * (1.0 - p)
        off_diag = np.zeros((active.size, n_pairs + 1))
        np.negative(curv, out=off_diag[:, :n_pairs])
        neg_hess = off_diag.take(cell_pair, axis=1).reshape(active.size, n, n)
        neg_hess[:, diag, diag] = curv @ abs_inc + reg
        step = np.linalg.solve(neg_hess, grad[:, :, None])[:, :, 0]
        step -= step.mean(axis=1, keepdims=True)

        slope = np.einsum("bn,bn->b", grad, step)
        t_new = t + step
        f_new, p_new = _objective_and_prob(pair_diff(t_new), games, lost_u, t_new, reg)
        # Armijo test, with slack for round-off once the steps become tiny
        slack = 1e-12 * np.abs(f)
        bad = f_new < f + 1e-4 * slope - slack
        scale = np.ones(active.size)
        for _ in range(40):
            if not bad.any():
                break
            scale[bad] *= 0.5
            t_bad = t[bad] + scale[bad, None] * step[bad]
            f_new[bad], p_new[bad] = _objective_and_prob(
                pair_diff(t_bad), games[bad], lost_u[bad], t_bad, reg
            )
            bad[bad] = f_new[bad] < f[bad] + 1e-4 * scale[bad] * slope[bad] - slack[bad]
        step *= scale[:, None]
        t += step
        f, p = f_new, p_new

        # Also stop once the Newton decrement is at the objective's round-off level: steps
        # then only move offsets between disconnected groups that the data cannot identify.
        done = (np.abs(step).max(axis=1) < tol) | (slope < 1e-14 * (1.0 + np.abs(f)))
        if done.any():
            theta[active[done]] = t[done]
            keep = ~done
            active, t, won_u, lost_u, games, f, p = (
                x[keep] for x in (active, t, won_u, lost_u, games, f, p)
            )
    if active.size:
        theta[active] = t
        logger.warning(
            "Bradley-Terry Newton solver did not converge in %d iterations for %d of %d "
            "problems (increase max_iter or reg)",
            max_iter,
            active.size,
            n_batch,
        )
    else:
        logger.debug("Bradley-Terry Newton solver converged in %d iterations", n_iter)
    return theta - theta.mean(axis=1, keepdims=True)


def fit_bt(
    wins: np.ndarray,
    *,
    reg: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> np.ndarray:
    """Bradley-Terry maximum-likelihood log-strengths from a wins matrix.

    Parameters
    ----------
    wins: float [n, n], ``wins[i, j]`` = total weight of i beating j.
    reg, max_iter, tol: see :func:`fit_bt_batched`.

    Returns
    -------
    float [n] log-strengths theta (natural log scale, mean 0):
    ``P(i beats j) = sigmoid(theta[i] - theta[j])``.
    """
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise DataError(f"wins must have shape [n, n], got {w.shape}")
    _check_solver_args(reg, max_iter, tol, "fit_bt")
    return fit_bt_batched(w[None], reg=reg, max_iter=max_iter, tol=tol)[0]


@dataclass
class BTRatings:
    """Bradley-Terry ratings of a set of models.

    Attributes
    ----------
    models: model names.
    theta: float [n] natural-log strengths (mean 0); P(i beats j) = sigmoid(theta_i - theta_j).
    ci_low, ci_high: optional float [n] bootstrap confidence bounds, on the Elo scale.
    counts: optional int [n], the number of battles each model took part in.
    """

    models: list[str]
    theta: np.ndarray
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.models = list(self.models)
        self.theta = np.asarray(self.theta, dtype=np.float64)
        if self.theta.shape != (len(self.models),):
            raise DataError(f"theta has shape {self.theta.shape}, expected ({len(self.models)},)")
        if len(set(self.models)) != len(self.models):
            raise DataError("model names must be unique")
        self._index = {m: i for i, m in enumerate(self.models)}

    @property
    def elo(self) -> np.ndarray:
        """Ratings on Chatbot Arena's Elo scale: ``400 / ln(10) * theta + 1000``.

        A gap of 400 points means 10:1 odds; the mean rating is 1000.
        """
        return ELO_SCALE * self.theta + ELO_BASE

    def index(self, model: str) -> int:
        """Position of ``model`` in ``models``."""
        try:
            return self._index[model]
        except KeyError:
            raise ConfigError(f"Unknown model {model!r}; rated models: {self.models}") from None

    def ranking(self) -> list[str]:
        """Model names sorted from the strongest to the weakest."""
        order = sorted(range(len(self.models)), key=lambda i: (-self.theta[i], self.models[i]))
        return [self.models[i] for i in order]

    def win_prob(self, a: str, b: str) -> float:
        """Probability that model ``a`` beats model ``b``."""
        return float(expit(self.theta[self.index(a)] - self.theta[self.index(b)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`from_dict`)."""

        def as_list(x: np.ndarray | None) -> list | None:
            return None if x is None else np.asarray(x).tolist()

        return {
            "models": list(self.models),
            "theta": self.theta.tolist(),
            "elo": self.elo.tolist(),
            "ci_low": as_list(self.ci_low),
            "ci_high": as_list(self.ci_high),
            "counts": as_list(self.counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BTRatings:
        """Rebuild from :meth:`to_dict` output."""
        try:
            models, theta = data["models"], data["theta"]
        except KeyError as e:
            raise DataError(f"ratings dict lacks {e.args[0]!r}") from None

        def opt(name: str, dtype: type) -> np.ndarray | None:
            value = data.get(name)
            return None if value is None else np.asarray(value, dtype=dtype)

        return cls(
            models=list(models),
            theta=np.asarray(theta, dtype=np.float64),
            ci_low=opt("ci_low", np.float64),
            ci_high=opt("ci_high", np.float64),
            counts=opt("counts", np.int64),
        )


def _model_indices(battles: Battles, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    value_set = pa.array(list(models), type=pa.string())
    out = []
    for col in ("model_a", "model_b"):
        idx = pc.index_in(battles.table[col], value_set=value_set)
        out.append(idx.to_numpy(zero_copy_only=False).astype(np.int64))
    return out[0], out[1]


def _battle_weights(battles: Battles, weights: str | np.ndarray | None) -> np.ndarray:
    n = len(battles)
    if weights is None:
        return np.ones(n)
    if isinstance(weights, str):
        check_choice("weights", "fit_ratings", weights, ("auto",))
        w = battles.numeric("weight")
        return np.where(np.isnan(w), 1.0, w)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ConfigError(
            f"The 'weights' parameter of fit_ratings must be 'auto', None or an array of "
            f"{n} battle weights. Got an array of shape {w.shape} instead."
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise ConfigError(
            "The 'weights' parameter of fit_ratings must hold finite, non-negative values."
        )
    return w


def fit_ratings(
    battles: Battles,
    *,
    weights: str | np.ndarray | None = "auto",
    use_soft_labels: bool = True,
    ties: str = "half",
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    reg: float = 1e-6,
) -> BTRatings:
    """Fit Bradley-Terry ratings to a battle table.

    Parameters
    ----------
    battles: the battles.
    weights: ``"auto"`` uses the ``weight`` column (1 where null), None weighs every battle
        1, or an array of one weight per battle.
    use_soft_labels: where ``p_b_wins`` is set, score side a with ``1 - p_b_wins`` instead of
        the hard ``winner``.
    ties: ``"half"`` counts ``tie`` and ``tie (bothbad)`` as half a win for each side;
        ``"drop"`` removes battles whose ``winner`` is a tie (whatever their soft label).
    bootstrap: number of bootstrap resamples of the battles (0 = no confidence intervals).
    seed: random seed of the bootstrap.
    confidence: coverage of the percentile intervals, in (0, 1).
    reg: the ridge of :func:`fit_bt`.

    Returns
    -------
    BTRatings over ``battles.models()``, with Elo-scale ``ci_low``/``ci_high`` when
    ``bootstrap > 0``.
    """
    check_choice("ties", "fit_ratings", ties, ("half", "drop"))
    check_range(
        "confidence",
        "fit_ratings",
        confidence,
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    )
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)):
        raise ConfigError(
            f"The 'bootstrap' parameter of fit_ratings must be an int >= 0. "
            f"Got {bootstrap!r} instead."
        )
    check_range("bootstrap", "fit_ratings", bootstrap, low=0)
    if len(battles) == 0:
        raise DataError("cannot fit ratings: there are no battles")

    models = battles.models()
    n = len(models)
    a_idx, b_idx = _model_indices(battles, models)
    w = _battle_weights(battles, weights)

    winner = battles.table["winner"]

    def winner_is(value: str) -> np.ndarray:
        return pc.equal(winner, value).to_numpy(zero_copy_only=False)

    a_won, b_won, tie, tie_bad = (winner_is(v) for v in ("model_a", "model_b", *_TIES))
    is_tie = tie | tie_bad
    outcome = np.where(a_won, 1.0, np.where(b_won, 0.0, 0.5))
    n_soft = 0
    if use_soft_labels:
        p_b = battles.numeric("p_b_wins")
        soft = ~np.isnan(p_b)
        n_soft = int(soft.sum())
        outcome = np.where(soft, 1.0 - np.nan_to_num(p_b), outcome)
    logger.info(
        "fit_ratings: %d battles, %d models, %d ties and %d 'tie (bothbad)', %d soft labels",
        len(battles),
        n,
        int(tie.sum()),
        int(tie_bad.sum()),
        n_soft,
    )
    if ties == "drop":
        keep = ~is_tie
        logger.info("fit_ratings: dropped %d tied battles of %d", int(is_tie.sum()), len(battles))
        a_idx, b_idx, outcome, w = a_idx[keep], b_idx[keep], outcome[keep], w[keep]
        if keep.sum() == 0:
            raise DataError("cannot fit ratings: every battle is a tie and ties='drop'")

    wins = pairwise_counts(a_idx, b_idx, outcome, w, n)
    theta = fit_bt(wins, reg=reg)
    counts = np.bincount(a_idx, minlength=n) + np.bincount(b_idx, minlength=n)

    ci_low = ci_high = None
    if bootstrap > 0:
        samples = _bootstrap_theta(a_idx, b_idx, outcome, w, n, bootstrap, seed, reg)
        alpha = (1.0 - confidence) / 2.0
        low, high = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
        ci_low, ci_high = ELO_SCALE * low + ELO_BASE, ELO_SCALE * high + ELO_BASE
    return BTRatings(models, theta, ci_low=ci_low, ci_high=ci_high, counts=counts)


def _bootstrap_theta(
    a_idx: np.ndarray,
    b_idx: np.ndarray,
    outcome: np.ndarray,
    w: np.ndarray,
    n_models: int,
    n_boot: int,
    seed: int,
    reg: float,
    chunk: int = 64,
) -> np.ndarray:
    """theta of ``n_boot`` resamples of the battles, float [n_boot, n_models].

    A resample is a multinomial count per battle, so its wins matrix is one sparse product
    ``counts @ X`` with X mapping battles to wins-matrix cells; chunks of resamples are
    then fitted together by the batched solver.
    """
    m = len(a_idx)
    rows = np.concatenate([np.arange(m), np.arange(m)])
    cols = np.concatenate([a_idx * n_models + b_idx, b_idx * n_models + a_idx])
    vals = np.concatenate([w * outcome, w * (1.0 - outcome)])
    design = sparse.csr_matrix((vals, (rows, cols)), shape=(m, n_models * n_models))
    design_t = design.T.tocsr()
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_models))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        # multinomial(m, uniform) counts, drawn as m indices each (8x faster than multinomial)
        draws = rng.integers(0, m, size=(size, m)) + (np.arange(size) * m)[:, None]
        resample = np.bincount(draws.ravel(), minlength=size * m).reshape(size, m)
        wins = (design_t @ resample.T).T.reshape(size, n_models, n_models)
        out[start : start + size] = fit_bt_batched(wins, reg=reg)
    return out
