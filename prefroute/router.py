"""A router: a win predictor, its model pair and the threshold that decides."""

from __future__ import annotations

import math
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
        where = Path(directory) / "config.json"
        evaluation = section.get("evaluation") or []
        if not isinstance(evaluation, list) or not all(isinstance(e, dict) for e in evaluation):
            raise CheckpointError(f"{where}: router.evaluation is not a list of objects")
        return cls(
            predictor,
            float(threshold),
            checked_calibration(section.get("calibration"), where),
            checked_training(section.get("training"), where),
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


# checkpoint state checks: shared by every loader, so a tampered config.json or tensor file
# fails with one CheckpointError naming the file and the key ----------------------------------
def _type_name(value: Any) -> str:
    return type(value).__name__


def checked_object(value: Any, where: str | Path, field: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a CheckpointError naming ``field``."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {field} must be an object, got {_type_name(value)}")
    return value


def is_number(value: Any) -> bool:
    """A finite int or float (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def checked_count(value: Any, where: str | Path, field: str, *, low: int = 0,
                  high: int = 1 << 40, optional: bool = False) -> int | None:
    """``value`` as an int in [low, high] (or None when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(
            f"{where}: {field} must be an int from {low} to {high:,}, got {value!r:.80}")
    return value


def checked_names(value: Any, where: str | Path, field: str, *, low: int = 1,
                  high: int = 1 << 20) -> list[str]:
    """A list of ``low``..``high`` distinct, non-empty strings."""
    if (not isinstance(value, list) or not low <= len(value) <= high
            or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)):
        raise CheckpointError(
            f"{where}: {field} must be a list of {low} to {high:,} distinct non-empty names")
    return list(value)


def checked_tensor(tensors: dict[str, np.ndarray], name: str, where: str | Path,
                   shape: tuple[int | None, ...], *, finite: bool = True) -> np.ndarray:
    """Tensor ``name`` as float64: present, real-valued, of ``shape`` (None: any size), and
    finite (unless ``finite=False``: NaN, meaning unknown, is then allowed; never inf)."""
    array = tensors.get(name)
    ok = (isinstance(array, np.ndarray) and array.dtype.kind in "fiu"
          and array.ndim == len(shape)
          and all(want is None or got == want for got, want in zip(array.shape, shape,
                                                                      strict=True)))
    if not ok:
        got = "missing" if array is None else f"{getattr(array, 'dtype', '?')} {np.shape(array)}"
        wanted = tuple("any" if d is None else d for d in shape)
        raise CheckpointError(f"{where}: tensor {name!r} must be a real-valued array of shape "
                              f"{wanted}, got {got}")
    array = array.astype(np.float64)
    if not np.isfinite(array[~np.isnan(array)] if not finite else array).all():
        raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values")
    return array


def checked_training(value: Any, where: str | Path) -> dict[str, Any]:
    """router.training: an object whose sources, n_battles and lineage have their types."""
    training = checked_object(value or {}, where, "router.training")
    sources = training.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise CheckpointError(f"{where}: router.training.sources must be a list of names")
    checked_count(training.get("n_battles"), where, "router.training.n_battles",
                  optional=True)
    lineage = training.get("lineage") or []
    if not isinstance(lineage, list) or not all(isinstance(e, dict) for e in lineage):
        raise CheckpointError(f"{where}: router.training.lineage must be a list of objects")
    return training


_CALIBRATION_NUMBERS = ("threshold", "target_strong_rate", "realised_strong_rate",
                        "cost_per_1k_requests")


def checked_calibration(value: Any, where: str | Path) -> dict[str, Any] | None:
    """router.calibration: None or an object with the fields ``Calibration`` writes."""
    if value is None:
        return None
    calibration = checked_object(value, where, "router.calibration")
    field = "router.calibration"
    if not isinstance(calibration.get("method", ""), str):
        raise CheckpointError(f"{where}: {field}.method must be a string")
    for key in _CALIBRATION_NUMBERS:
        if calibration.get(key) is not None and not is_number(calibration[key]):
            raise CheckpointError(f"{where}: {field}.{key} must be a finite number")
    checked_count(calibration.get("n_prompts"), where, f"{field}.n_prompts", optional=True)
    checked_object(calibration.get("budget") or {}, where, f"{field}.budget")
    for key, sizes in (("rate_thresholds", None), ("score_range", (0, 2))):
        numbers = calibration.get(key) or []
        if (not isinstance(numbers, list) or not all(is_number(v) for v in numbers)
                or (sizes is not None and len(numbers) not in sizes)):
            raise CheckpointError(f"{where}: {field}.{key} must be a list of finite numbers"
                                  + ("" if sizes is None else " (empty, or low and high)"))
    return calibration


#: what a loader turns into a CheckpointError: the errors a malformed value raises in code
#: that trusted it (the project's own errors pass through unchanged)
MALFORMED = (AttributeError, TypeError, KeyError, IndexError, ValueError, OverflowError,
             MemoryError)


def checkpoint_embedder(spec: Any, saved_spec: Any, directory: str | Path) -> tuple[Any, int]:
    """(embedder, its dimension) for a checkpoint whose ``params.embedder`` is ``spec`` and
    ``state.embedder`` is ``saved_spec``; any malformed spec is a CheckpointError."""
    from prefroute.errors import PrefrouteError
    from prefroute.routers.embedding_io import reloaded_embedder

    where = Path(directory) / "config.json"
    for field, value in (("params.embedder", spec), ("state.embedder", saved_spec)):
        if not isinstance(value, (str, dict)) or (
                isinstance(value, dict) and not isinstance(value.get("params", {}), dict)):
            raise CheckpointError(f"{where}: {field} must be an embedder name or "
                                  f"{{'name': ..., 'params': {{...}}}}, got {_type_name(value)}")
    try:
        embedder = reloaded_embedder(spec, saved_spec, Path(directory))
        return embedder, int(embedder.dim)
    except PrefrouteError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: embedder: {e}") from None
    except MALFORMED as e:
        raise CheckpointError(f"{where}: params.embedder: {type(e).__name__}: {e}") from None


def check_loaded_params(predictor: Any, where: str | Path) -> None:
    """Run ``predictor._check_params()`` on the parameters a checkpoint set; a bad one is a
    CheckpointError naming ``where`` (before any weights are read)."""
    try:
        predictor._check_params()
    except (ConfigError, *MALFORMED) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: params: {e}") from None


def check_hf_files(folder: Path, where: str | Path) -> None:
    """A saved Hugging Face folder's tokenizer_config.json may name its own files only: a
    ``*_file`` value that is a path (``/``, ``\\``, ``..``) would be opened outside it."""
    import json

    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    for key, value in config.items():
        if str(key).endswith(("_file", "_files", "_path", "_dir")) and isinstance(value, str) \
                and ("/" in value or "\\" in value or ".." in value or "\x00" in value):
            raise CheckpointError(f"{path}: {key} {value!r:.200} names a file outside the "
                                  f"checkpoint folder (see {where}); refused")
