"""A router: a win predictor, its model pair and the threshold that decides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.calibrate import Calibration, calibrate_strong_rate
from prefroute.checkpoint import read_config, write_config
from prefroute.errors import CheckpointError, ConfigError, check_range
from prefroute.routers.base import WinPredictor


class Router:
    """Routes a prompt to the strong model when P(strong wins) >= ``threshold``.

    Parameters
    ----------
    predictor: a fitted WinPredictor.
    threshold: the decision threshold in [0, 1] (see ``prefroute.calibrate``).
    calibration: how the threshold was chosen, kept in the checkpoint.
    """

    def __init__(
        self,
        predictor: WinPredictor,
        threshold: float = 0.5,
        calibration: Calibration | dict | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        check_range("threshold", "Router", threshold, low=0.0, high=1.0 + 1e-9)
        self.predictor = predictor
        self.threshold = float(threshold)
        self.calibration = (
            calibration.to_dict() if isinstance(calibration, Calibration) else calibration
        )
        # where the training battles came from, so evaluation can decontaminate against them
        self.training = training or {}

    @property
    def strong_model(self) -> str:
        return self.predictor.strong_model

    @property
    def weak_model(self) -> str:
        return self.predictor.weak_model

    @property
    def router_type(self) -> str:
        return self.predictor.router_type

    def strong_win_prob(self, prompts: Sequence[str] | str) -> np.ndarray:
        return self.predictor.predict_proba(prompts)

    def route(self, prompts: Sequence[str] | str, *, threshold: float | None = None) -> list[str]:
        """The model name each prompt goes to."""
        t = self.threshold if threshold is None else threshold
        probs = self.strong_win_prob(prompts)
        return [self.strong_model if p >= t else self.weak_model for p in probs]

    def warm_up(self) -> None:
        """Build everything scoring builds lazily (embedder, tokenizer, index) now."""
        self.strong_win_prob(["Warm-up prompt: is the router ready?"])

    def calibrate(self, prompts: Sequence[str], strong_rate: float) -> Calibration:
        """Set the threshold for a strong-call rate on ``prompts``; returns the calibration."""
        cal = calibrate_strong_rate(self.strong_win_prob(prompts), strong_rate)
        self.set_calibration(cal)
        return cal

    def set_calibration(self, calibration: Calibration) -> None:
        self.threshold = calibration.threshold
        self.calibration = calibration.to_dict()

    def _router_config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "calibration": self.calibration,
            "training": self.training,
        }

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the checkpoint atomically (see ``WinPredictor.save_pretrained``)."""
        return self.predictor.save_pretrained(
            directory, router=self._router_config(), overwrite=overwrite
        )

    def save_threshold(self, directory: str | Path) -> None:
        """Rewrite only the router section of an existing checkpoint (weights untouched)."""
        config = read_config(directory, expected_type=self.router_type)
        config.pop("prefroute_version", None)
        config["router"] = self._router_config()
        write_config(directory, config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **load_options: Any) -> Router:
        """Load a router checkpoint; ``load_options`` as for ``WinPredictor.from_pretrained``."""
        predictor = WinPredictor.from_pretrained(directory, **load_options)
        config = read_config(directory)
        section = config.get("router") or {}
        if not isinstance(section, dict):
            raise CheckpointError(f"{Path(directory) / 'config.json'}: 'router' is not an object")
        threshold = section.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0.0 <= threshold <= 1.0
        ):
            raise CheckpointError(
                f"{Path(directory) / 'config.json'}: router.threshold must be a number in "
                f"[0, 1], got {threshold!r}"
            )
        return cls(predictor, float(threshold), section.get("calibration"), section.get("training"))

    def __repr__(self) -> str:
        return (
            f"Router({self.router_type}, strong={self.strong_model!r}, weak={self.weak_model!r}, "
            f"threshold={self.threshold:.4f})"
        )


def load_router(directory: str | Path, *, warm_up: bool = True, **load_options: Any) -> Router:
    """Load any saved router (the config's type picks the predictor class).

    ``load_options``: see ``prefroute.checkpoint_policy.LoadOptions``. With ``warm_up`` (the
    default) it scores one prompt before returning, so the embedder's model, tokenizer tables
    and any index are built during loading rather than on the first ``route()`` call
    (seconds for wordllama, which builds them lazily).
    """
    router = Router.from_pretrained(directory, **load_options)
    if warm_up:
        router.warm_up()
    return router


def make_router(name: str, *, strong_model: str, weak_model: str, **params: Any) -> WinPredictor:
    """An unfitted win predictor from the registry by name."""
    from prefroute.routers.base import router_class

    cls = router_class(name)
    try:
        return cls(strong_model=strong_model, weak_model=weak_model, **params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for router {name!r}: {e}") from None
