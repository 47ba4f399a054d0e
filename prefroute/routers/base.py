"""The WinPredictor interface and the registry from router name to class.

A win predictor learns P(strong model beats weak model | prompt) from battles. Subclasses
keep ``__init__`` to storing keyword-only hyper-parameters (learned state ends in ``_``) and
implement ``_fit``, ``_predict``, and the state hooks; this base class owns validation,
batching and the checkpoint format, so every router saves and loads the same way.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prefroute.checkpoint import (
    check_finite_state,
    load_tensors,
    read_config,
    save_checkpoint,
    save_tensors,
    verify_files,
)
from prefroute.checkpoint_policy import LoadOptions, sanitize_config
from prefroute.data.battles import Battles
from prefroute.data.fingerprints import load_fingerprints, prompt_fingerprints, save_fingerprints
from prefroute.embed.base import spec_if_embedder
from prefroute.errors import CheckpointError, ConfigError

ROUTERS: dict[str, type[WinPredictor]] = {}

# Built-in routers are imported on first use, so `import prefroute` stays free of torch and
# transformers; third-party routers register themselves with @register_router.
BUILTIN_ROUTERS = {
    "random": "prefroute.routers.random_router",
    "sw_bt": "prefroute.routers.sw_bt",
    "mf": "prefroute.routers.mf",
    "bert": "prefroute.routers.bert",
    "causal_llm": "prefroute.routers.causal_llm",
    "knn": "prefroute.routers.knn",
    "logistic": "prefroute.routers.logistic",
    "length": "prefroute.routers.length",
    "auto": "prefroute.routers.auto",
}


def row_dot(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``rows @ vector``, where each row's result never depends on the other rows.

    BLAS matrix-vector kernels handle a batch's last few rows with other code than the rest,
    so the same prompt's score could move by an ulp with the batch it sits in (and differ
    between --workers, --threads and Ray). einsum's row loop is the same for every row, and
    as fast here.
    """
    return np.einsum("ij,j->i", rows, vector)


def register_router(cls: type[WinPredictor]) -> type[WinPredictor]:
    """Class decorator: make ``cls`` loadable by its ``router_type``."""
    ROUTERS[cls.router_type] = cls
    return cls


def router_class(name: str) -> type[WinPredictor]:
    """The class registered under ``name`` (a built-in router's module is imported on demand)."""
    if name not in ROUTERS and name in BUILTIN_ROUTERS:
        importlib.import_module(BUILTIN_ROUTERS[name])
    if name not in ROUTERS:
        known = sorted(set(ROUTERS) | set(BUILTIN_ROUTERS))
        raise ConfigError(f"unknown router {name!r}; known routers: {known}")
    return ROUTERS[name]


class NotFittedError(ConfigError):
    """A predictor was used before ``fit`` or ``from_pretrained``."""


class WinPredictor(ABC):
    """Predicts the probability that ``strong_model`` beats ``weak_model`` on a prompt.

    Parameters (shared by all subclasses, keyword-only)
    ----------
    strong_model, weak_model: the model names as they appear in the training battles.

    Subclass contract
    -----------------
    ``_fit(battles)``: learn state (attributes ending in ``_``).
    ``_predict(prompts) -> np.ndarray``: P(strong wins) for a list of prompts.
    ``_state() -> (tensors: dict[str, np.ndarray], extra: dict)``: what to save; extra is
    JSON and goes to config.json under ``"state"``.
    ``_load_state(tensors, extra, directory)``: the reverse.
    ``_save_files(directory)``: optional, for files beyond safetensors (FAISS index, tokenizer).
    """

    router_type: ClassVar[str]
    # Whether a fitted predictor may score from several threads at once (read-only state and
    # GIL-releasing numpy work), which lets one process use every core. Its embedder must
    # allow it too (see ``scores_concurrently``).
    concurrent_predict: ClassVar[bool] = False
    # Parameters whose default changed after checkpoints were written without them: the
    # value such a checkpoint was fitted with, used when its config.json lacks the key.
    params_absent_from_old_checkpoints: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, strong_model: str, weak_model: str) -> None:
        self.strong_model = strong_model
        self.weak_model = weak_model

    # parameters ---------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if klass is object or "__init__" not in klass.__dict__:
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.name != "self" and p.kind == p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable, as config.json records them."""
        return {name: spec_if_embedder(getattr(self, name)) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # fit / predict ------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    def fit(self, battles: Battles) -> WinPredictor:
        """Learn from a battle table; returns ``self``."""
        if not isinstance(battles, Battles):
            raise ConfigError(
                f"fit expects a prefroute Battles table, got {type(battles).__name__}"
            )
        if len(battles) == 0:
            raise ConfigError("fit got an empty battle table")
        if self.strong_model == self.weak_model:
            raise ConfigError("strong_model and weak_model must differ")
        self._fit(battles)
        # kept in the checkpoint so evaluation leaves the training prompts out by default
        self.training_prompt_fingerprints_ = prompt_fingerprints(battles.prompts)
        self.fitted_ = True
        check_finite_state(self._state()[0], type(self).__name__)
        return self

    def predict_proba(self, prompts: Sequence[str] | str, *, batch_size: int = 1024) -> np.ndarray:
        """P(strong model wins) for each prompt, a float64 array in [0, 1]."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit or from_pretrained"
            )
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ConfigError(f"prompt {i} is {type(p).__name__}, not a string")
        if not prompts:
            return np.zeros(0)
        parts = [
            self._predict(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)
        ]
        probs = np.array(parts[0] if len(parts) == 1 else np.concatenate(parts), np.float64)
        # np.clip's dispatch costs ~10 us, a fifth of a one-prompt mf call
        return np.minimum(np.maximum(probs, 0.0, out=probs), 1.0, out=probs)

    def scores_concurrently(self) -> bool:
        """Whether ``predict_proba`` may run in several threads at once."""
        embedder = getattr(self, "embedder_", None)
        return self.concurrent_predict and getattr(embedder, "concurrent_encode", True)

    @abstractmethod
    def _fit(self, battles: Battles) -> None: ...

    @abstractmethod
    def _predict(self, prompts: list[str]) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    @abstractmethod
    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None: ...

    def _save_files(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write files beyond config.json and model.safetensors."""

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        """Tensor names a checkpoint must hold (None: do not check)."""
        return None

    # checkpoints --------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | Path,
        *,
        router: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the checkpoint folder atomically: config.json + model.safetensors (+ files).

        An existing non-empty folder is replaced only with ``overwrite`` or when it is a
        prefroute checkpoint; a failed save leaves it as it was.
        """
        if not self.is_fitted:
            raise NotFittedError("cannot save an unfitted predictor")
        tensors, extra = self._state()
        config: dict[str, Any] = {
            "type": self.router_type,
            "params": self.get_params(),
            "state": extra,
        }
        if router is not None:
            config["router"] = router

        def write_files(folder: Path) -> None:
            save_tensors(folder, tensors)
            fingerprints = getattr(self, "training_prompt_fingerprints_", None)
            if fingerprints is not None:
                save_fingerprints(folder, fingerprints)
            self._save_files(folder)

        return save_checkpoint(directory, config, write_files, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **load_options: Any) -> WinPredictor:
        """Load a checkpoint; on the base class the config's type picks the subclass.

        ``load_options`` (see ``prefroute.checkpoint_policy.LoadOptions``): what the loading
        user decides and a checkpoint may not, e.g. ``embedder_base_url``, ``backbone``.
        """
        directory = Path(directory)
        expected = None if cls is WinPredictor else cls.router_type
        options = LoadOptions.resolve(**load_options)
        config = read_config(directory, expected_type=expected)
        verify_files(directory, config)
        config = sanitize_config(directory, config, options)
        klass = router_class(config["type"]) if cls is WinPredictor else cls
        params = config.get("params")
        if not isinstance(params, dict):
            raise CheckpointError(f"{directory / 'config.json'} has no 'params' object")
        unknown = sorted(set(params) - set(klass._param_names()))
        if unknown:
            raise CheckpointError(
                f"{directory / 'config.json'}: parameters {unknown} are not parameters of "
                f"{klass.__name__} (saved by another version?)"
            )
        # a parameter added later with a new default: what older checkpoints were fitted with
        params = {**klass.params_absent_from_old_checkpoints, **params}
        try:
            predictor = klass(**params)
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{directory / 'config.json'}: params: {e}") from None
        # every router's own parameter checks, on what the checkpoint set, before any weights
        check = getattr(predictor, "_check_params", None)
        if check is not None:
            try:
                check()
            except (ConfigError, TypeError, ValueError, OverflowError) as e:
                raise CheckpointError(f"{directory / 'config.json'}: params: {e}") from None
        extra = config.get("state", {})
        if not isinstance(extra, dict):
            raise CheckpointError(f"{directory / 'config.json'}: 'state' is not an object")
        tensors = load_tensors(directory, predictor._expected_tensors(extra))
        predictor._load_state(tensors, extra, directory)
        predictor.training_prompt_fingerprints_ = load_fingerprints(directory)
        predictor.fitted_ = True
        return predictor
