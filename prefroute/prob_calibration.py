"""Probability calibration: make P(strong wins) a probability (Platt or isotonic).

Distinct from ``prefroute.calibrate``, which picks a *threshold* for a strong-call rate.
Here a monotone map is learned from a router's scores to the observed label (1 strong won,
0 weak won, 0.5 tie, or a judge's soft label), so that among prompts given 0.7 the strong
model wins about 70% of the time. Fitted on out-of-fold scores only (cross-fitted), a
calibrator never sees the scores of the battles the router learned from.

``brier`` and ``reliability_table`` measure it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from prefroute.errors import CheckpointError, ConfigError, check_choice

METHODS = ("platt", "isotonic", "none")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS))


@dataclass
class ProbabilityCalibrator:
    """A monotone map from a router's score to a calibrated P(strong wins).

    ``method="platt"``: sigmoid(a * logit(p) + b) (strictly increasing when a > 0, so the
    routing order is kept); ``"isotonic"``: a non-decreasing step function interpolated
    between ``x_`` and ``y_`` (may tie prompts the raw score separated); ``"none"``: identity.
    """

    method: str = "platt"
    a_: float = 1.0
    b_: float = 0.0
    x_: np.ndarray | None = None
    y_: np.ndarray | None = None

    def fit(self, scores: np.ndarray, labels: np.ndarray,
            weights: np.ndarray | None = None) -> ProbabilityCalibrator:
        check_choice("method", "ProbabilityCalibrator", self.method, METHODS)
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
        if len(scores) != len(labels) or len(scores) == 0:
            raise ConfigError(f"calibration needs one label per score; got {len(scores)} scores "
                              f"and {len(labels)} labels")
        if self.method == "platt":
            from prefroute.routers.logistic import fit_soft_logistic

            coef, intercept = fit_soft_logistic(_logit(scores)[:, None], labels, weights,
                                                c=1e4)
            self.a_, self.b_ = float(coef[0]), float(intercept)
        elif self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            iso.fit(scores, labels, sample_weight=weights)
            self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            return expit(self.a_ * _logit(scores) + self.b_)
        if self.method == "isotonic":
            if self.x_ is None or self.y_ is None:
                raise ConfigError("the isotonic calibrator is not fitted")
            return np.interp(scores, self.x_, self.y_)
        return scores

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, json) for a checkpoint."""
        tensors = {}
        if self.method == "isotonic":
            tensors = {"calibration_x": self.x_, "calibration_y": self.y_}
        return tensors, {"method": self.method, "a": self.a_, "b": self.b_}

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], state: dict, where: str
                   ) -> ProbabilityCalibrator:
        if not isinstance(state, dict) or state.get("method") not in METHODS:
            raise CheckpointError(f"{where}: calibration must name a method in {list(METHODS)}")
        a, b = state.get("a"), state.get("b")
        if not all(_finite_number(v) for v in (a, b)):
            raise CheckpointError(f"{where}: calibration a/b must be finite numbers")
        cal = cls(method=state["method"], a_=float(a), b_=float(b))
        if cal.method == "isotonic":
            x, y = tensors.get("calibration_x"), tensors.get("calibration_y")
            if (x is None or y is None or x.ndim != 1 or x.shape != y.shape or len(x) < 1
                    or not (np.isfinite(x).all() and np.isfinite(y).all())
                    or (np.diff(x) < 0).any() or (np.diff(y) < 0).any()
                    or y.min() < 0 or y.max() > 1):
                raise CheckpointError(f"{where}: the isotonic calibration tensors must be finite, "
                                      "ascending, one y in [0, 1] per x")
            cal.x_, cal.y_ = x.astype(np.float64), y.astype(np.float64)
        return cal


def _finite_number(value: object) -> bool:
    """A real int or float (not a bool) that is finite as a float (10**400 is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def crossfit_calibrated(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
                        method: str = "platt", weights: np.ndarray | None = None) -> np.ndarray:
    """Calibrated out-of-fold scores: fold k's map is fitted on the other folds only."""
    out = np.empty(len(scores))
    for k in np.unique(folds):
        test = folds == k
        cal = ProbabilityCalibrator(method).fit(
            scores[~test], labels[~test], None if weights is None else weights[~test])
        out[test] = cal.transform(scores[test])
    return out


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of P(strong wins) against the label (soft labels and 0.5 ties)."""
    return float(np.mean((np.asarray(probs, np.float64) - np.asarray(labels, np.float64)) ** 2))


def reliability_table(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10
                      ) -> list[dict]:
    """Equal-width bins of P: count, mean predicted, mean observed label per non-empty bin."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append({"bin": b, "count": int(mask.sum()), "predicted": float(probs[mask].mean()),
                         "observed": float(labels[mask].mean())})
    return rows
