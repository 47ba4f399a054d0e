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
        evaluation: list[dict[str, Any]] | None = None,
    ) -> None:
        check_range("threshold", "Router", threshold, low=0.0, high=1.0 + 1e-9)
        self.predictor = predictor
        self.threshold = float(threshold)
        self.calibration = (
            calibration.to_dict() if isinstance(calibration, Calibration) else calibration
        )
        # where the training battles came from, so evaluation can decontaminate against them
        self.training = training or {}
        # summaries of evaluations run on this router, shown in its model card
        self.evaluation = list(evaluation or [])

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
            "evaluation": self.evaluation,
        }

    def record_evaluation(self, result: Any, *, protocol: str = "n/a") -> dict[str, Any]:
        """Keep an EvalResult's summary (APGR with CI, random, oracle, CPT) for the model card."""
        summary = {
            "benchmark": result.benchmark,
            "protocol": protocol,
            "n_prompts": result.n_prompts,
            "apgr": result.apgr,
            "apgr_ci": list(result.apgr_ci) if result.apgr_ci is not None else None,
            "random_apgr": result.random.apgr,
            "oracle_apgr": result.oracle.apgr,
            "cpt_50": _finite_or_none(result.cpt.get("50")),
        }
        self.evaluation = [
            e
            for e in self.evaluation
            if (e.get("benchmark"), e.get("protocol")) != (result.benchmark, protocol)
        ]
        self.evaluation.append(summary)
        return summary

    def save_pretrained(
        self, directory: str | Path, *, overwrite: bool = False, card_name: str | None = None
    ) -> Path:
        """Write the checkpoint atomically (see ``WinPredictor.save_pretrained``), then its
        README.md model card, recorded in config.json's file checksums like every file."""
        from prefroute.checkpoint import record_files
        from prefroute.model_card import write_model_card

        path = self.predictor.save_pretrained(
            directory, router=self._router_config(), overwrite=overwrite
        )
        write_model_card(path, card_name)
        record_files(path)
        return path

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload this router to a Hugging Face Hub repo (see ``prefroute.hub.push_to_hub``)."""
        from prefroute.hub import push_to_hub

        return push_to_hub(self, repo_id, **options)

    def save_threshold(self, directory: str | Path) -> None:
        """Rewrite only the router section (and the model card) of an existing checkpoint."""
        from prefroute.checkpoint import record_files
        from prefroute.model_card import write_model_card

        config = read_config(directory, expected_type=self.router_type)
        config.pop("prefroute_version", None)
        config["router"] = self._router_config()
        write_config(directory, config)
        write_model_card(directory)
        record_files(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, revision: str | None = None, **load_options: Any
    ) -> Router:
        """Load a router checkpoint folder, or a Hugging Face Hub repo id such as ``org/name``;
        ``load_options`` as for ``WinPredictor.from_pretrained``."""
        from prefroute.hub import resolve_checkpoint

        directory = resolve_checkpoint(directory, revision=revision)
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
        evaluation = section.get("evaluation") or []
        if not isinstance(evaluation, list) or not all(isinstance(e, dict) for e in evaluation):
            raise CheckpointError(
                f"{Path(directory) / 'config.json'}: router.evaluation is not a list of objects"
            )
        return cls(
            predictor,
            float(threshold),
            section.get("calibration"),
            section.get("training"),
            evaluation,
        )

    def __repr__(self) -> str:
        return (
            f"Router({self.router_type}, strong={self.strong_model!r}, weak={self.weak_model!r}, "
            f"threshold={self.threshold:.4f})"
        )


def load_router(
    directory: str | Path,
    *,
    warm_up: bool = True,
    revision: str | None = None,
    **load_options: Any,
) -> Router:
    """Load any saved router (the config's type picks the predictor class).

    ``directory`` is a checkpoint folder or a Hugging Face Hub repo id (``org/name``, at
    ``revision``); offline (``HF_HUB_OFFLINE=1``) the hub id is looked up in the local cache.
    ``load_options``: see ``prefroute.checkpoint_policy.LoadOptions``. With ``warm_up`` (the
    default) it scores one prompt before returning, so the embedder's model, tokenizer tables
    and any index are built during loading rather than on the first ``route()`` call
    (seconds for wordllama, which builds them lazily).
    """
    router = Router.from_pretrained(directory, revision=revision, **load_options)
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


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None
