"""Cross-fitting for the auto router: folds that group near-duplicates, and OOF scoring.

The auto router judges each candidate by how it routes prompts it never trained on. The
held-out items are the battles between exactly the router's pair (``pair_data``); the
folds are drawn over groups of near-duplicate prompts (cosine >= 0.95, connected
components), so no near-copy of a held-out prompt sits in its training folds, and every
battle on a held-out prompt (against any model) leaves the training set with it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from prefroute.errors import ConfigError
from prefroute.evaluate.curves import RankedOutcomes, ranked_curve

_EPS = 1e-6


def grouped_folds(groups: np.ndarray, pair_counts: np.ndarray, n_folds: int, seed: int
                  ) -> np.ndarray:
    """Fold id per group: seeded order, each group to the fold with the fewest pair items.

    groups: group id per item (0..G-1); pair_counts: held-out items per group [G].
    """
    n_groups = len(pair_counts)
    if int((pair_counts > 0).sum()) < n_folds:
        raise ConfigError(
            f"cross-fitting needs pair battles on at least n_folds={n_folds} distinct "
            f"(non-near-duplicate) prompts; found {int((pair_counts > 0).sum())}"
        )
    order = np.random.default_rng(seed).permutation(n_groups)
    # big groups first (stable within equal sizes) so the greedy fill balances well
    order = order[np.argsort(-pair_counts[order], kind="stable")]
    load = np.zeros(n_folds)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    spill = 0
    for g in order:
        if pair_counts[g] > 0:
            k = int(np.argmin(load))
            load[k] += pair_counts[g]
        else:  # groups without held-out items only decide what trains where
            k = spill % n_folds
            spill += 1
        fold_of_group[g] = k
    return fold_of_group


def routed_gain(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(area above the weak line, APGR) of routing by ``probs`` on pair items.

    A pair item scores ``label`` for the strong model and ``1 - label`` for the weak one,
    so the curve is RouteLLM's (decile thresholds). The area above the weak line ranks
    routers the same way APGR does when the strong model is better, and stays meaningful
    when it is not (APGR is then NaN).
    """
    strong = np.asarray(labels, dtype=np.float64)
    weak = 1.0 - strong
    curve = ranked_curve(RankedOutcomes(strong, weak, probs), points="routellm")
    weak_q, strong_q = float(weak.mean()), float(strong.mean())
    rates, quality = curve.strong_rate, curve.quality
    span = rates[-1] - rates[0]
    area = float(np.sum(np.diff(rates) * (quality[1:] + quality[:-1]) / 2.0) - weak_q * span)
    gap = (strong_q - weak_q) * span
    return area, (area / gap if gap > 1e-12 else float("nan"))


def clipped_logit(probs: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS))


def stack_predict(member_probs: np.ndarray, weights: np.ndarray, intercept: float) -> np.ndarray:
    """The stacked P: sigmoid(sum_j w_j logit(p_j) + b) over members' probabilities [n, m]."""
    return expit(clipped_logit(member_probs) @ weights + intercept)


def crossfit_stack(oof: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, c: float
                   ) -> np.ndarray:
    """Out-of-fold stacked probabilities: fold k's combiner is fitted on the other folds."""
    from prefroute.routers.logistic import fit_soft_logistic

    x = clipped_logit(oof)
    out = np.empty(len(labels))
    ones = np.ones(len(labels))
    for k in np.unique(folds):
        test = folds == k
        coef, intercept = fit_soft_logistic(x[~test], labels[~test], ones[~test], c=c)
        out[test] = expit(x[test] @ coef + intercept)
    return out
