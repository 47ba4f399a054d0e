"""The N-way router interface (``MultiRouter``) and its checkpoint registry.

A multi router scores, for each prompt, its confidence that each of N models solves it:
``predict_scores(prompts) -> float [n, N]`` in [0, 1]. Policies (``prefroute.multi.policies``)
turn these confidences into one model per prompt.

Checkpoints use the same format as the pairwise win predictors (``prefroute.checkpoint``):
``config.json`` with ``type`` (prefixed ``multi-``), ``params`` and ``state`` (which holds
the model names), tensors in ``model.safetensors``, other plain files beside them (a fitted
embedder's state, an encoder's weights and tokenizer). Nothing is pickled.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prefroute._logging import logger
from prefroute.checkpoint import (
    check_finite_state,
    load_tensors,
    read_config,
    save_checkpoint,
    save_tensors,
    verify_files,
)
from prefroute.checkpoint_policy import LoadOptions, sanitize_config
from prefroute.data.outcomes import OutcomeTable
from prefroute.embed.base import spec_if_embedder
from prefroute.errors import CheckpointError, ConfigError, DataError, PrefrouteError
from prefroute.multi.labels import MultiLabels, labels_from_outcomes
from prefroute.router import MALFORMED, checked_count, checked_names

MULTI_ROUTERS: dict[str, type[MultiRouter]] = {}
EMBEDDER_STATE_DIR = "embedder"
MAX_MODELS = 10_000  # routed models a checkpoint may list


def register_multi_router(cls: type[MultiRouter]) -> type[MultiRouter]:
    """Class decorator: make ``cls`` loadable by its ``router_type``."""
    MULTI_ROUTERS[cls.router_type] = cls
    return cls


def multi_router_class(name: str) -> type[MultiRouter]:
    """The class registered under ``name`` (importing the built-in multi routers first)."""
    import prefroute.multi  # noqa: F401 - fills the registry

    if name not in MULTI_ROUTERS:
        raise CheckpointError(f"unknown multi router type {name!r}; known: {sorted(MULTI_ROUTERS)}")
    return MULTI_ROUTERS[name]


def load_multi_router(directory: str | Path, **load_options: Any) -> MultiRouter:
    """Load any multi-router checkpoint folder."""
    return MultiRouter.from_pretrained(directory, **load_options)


class NotFittedError(ConfigError):
    """A router was used before ``fit`` or ``from_pretrained``."""


def split_validation(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over n rows, True = validation (seeded; empty when fraction is 0)."""
    is_val = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return is_val
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


def masked_mean(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean of known (non-NaN) labels along ``axis`` (0.5 where nothing is known)."""
    known = ~np.isnan(labels)
    total = np.where(known, labels, 0.0).sum(axis=axis)
    count = known.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), 0.5)


class MultiRouter(ABC):
    """Scores each prompt: the confidence that each of N models solves it.

    Subclass contract (as for the pairwise ``WinPredictor``)
    ------------------------------------------------------
    ``__init__`` stores keyword-only hyper-parameters only; learned state ends in ``_``.
    ``_fit(prompts, labels)``: labels are float [n, N] in [0, 1] with NaN = unknown.
    ``_predict(prompts) -> [n, N]``.
    ``_state() -> (tensors, extra)``; ``_load_state(tensors, extra, directory)``;
    optional ``_save_files(directory)`` and ``_expected_tensors(extra)``.
    """

    router_type: ClassVar[str]

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

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    @property
    def models(self) -> list[str]:
        """The N model names, in the column order of ``predict_scores``."""
        self._check_fitted()
        return list(self.models_)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit or from_pretrained"
            )

    # fit / predict ------------------------------------------------------------------
    def fit(
        self,
        prompts: Sequence[str] | None,
        targets: OutcomeTable | MultiLabels | np.ndarray,
        *,
        models: Sequence[str] | None = None,
    ) -> MultiRouter:
        """Learn from prompts and what each model did on them; returns ``self``.

        ``targets``: an ``OutcomeTable`` (0/1 scores -> labels; ``prompts`` may then be None
        to use the table's), ``MultiLabels``, or a float array [n, N] with ``models`` naming
        its columns. Labels are 1 (solves), 0 (does not) or NaN (unknown: left out of the
        loss / the averages). Prompts whose labels are all unknown are dropped (logged).
        """
        prompts, labels, names = _coerce_targets(prompts, targets, models)
        known = ~np.isnan(labels)
        empty_rows = ~known.any(axis=1)
        if empty_rows.any():
            logger.info(
                "%s: dropped %d prompts with no known label",
                self.router_type,
                int(empty_rows.sum()),
            )
            keep = np.flatnonzero(~empty_rows)
            prompts, labels = [prompts[i] for i in keep], labels[keep]
            known = known[keep]
        if len(prompts) < 2:
            raise DataError(
                f"{type(self).__name__}.fit needs at least 2 prompts with labels; "
                f"got {len(prompts)}"
            )
        no_label = [m for m, k in zip(names, known.any(axis=0), strict=True) if not k]
        if no_label:
            raise DataError(f"models {no_label} have no known label on any training prompt")
        self.models_ = list(names)  # set first: _fit may name its outputs after the models
        self._fit(prompts, labels)
        self.fitted_ = True
        check_finite_state(self._state()[0], type(self).__name__)
        return self

    def predict_scores(self, prompts: Sequence[str] | str, *, batch_size: int = 4096) -> np.ndarray:
        """Confidence that each model solves each prompt: float64 [n_prompts, n_models], [0, 1]."""
        self._check_fitted()
        prompts = _checked_prompts(prompts)
        if not prompts:
            return np.zeros((0, len(self.models_)))
        parts = [
            self._predict(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)
        ]
        scores = np.concatenate(parts).astype(np.float64)
        return np.clip(scores, 0.0, 1.0)

    def predict(self, prompts: Sequence[str] | str) -> list[str]:
        """The most confident model per prompt (the ArgMax policy)."""
        scores = self.predict_scores(prompts)
        return [self.models_[j] for j in scores.argmax(axis=1)]

    @abstractmethod
    def _fit(self, prompts: list[str], labels: np.ndarray) -> None: ...

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
    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the checkpoint folder atomically: config.json + model.safetensors (+ files)."""
        self._check_fitted()
        tensors, extra = self._state()
        state = {"models": list(self.models_), **extra}
        config = {
            "type": self.router_type,
            "task": "multi",
            "params": self.get_params(),
            "state": state,
        }

        def write_files(folder: Path) -> None:
            save_tensors(folder, tensors)
            self._save_files(folder)

        return save_checkpoint(directory, config, write_files, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **load_options: Any) -> MultiRouter:
        """Load a checkpoint; on the base class the config's type picks the subclass.

        ``load_options``: see ``prefroute.checkpoint_policy.LoadOptions``.
        """
        directory = Path(directory)
        generic = cls is MultiRouter or inspect.isabstract(cls)
        options = LoadOptions.resolve(**load_options)
        config = read_config(directory, expected_type=None if generic else cls.router_type)
        verify_files(directory, config)
        config = sanitize_config(directory, config, options)
        klass = multi_router_class(config["type"]) if generic else cls
        params = config.get("params")
        state = config.get("state")
        if not isinstance(params, dict) or not isinstance(state, dict):
            raise CheckpointError(f"{directory / 'config.json'} has no 'params' or 'state' object")
        unknown = sorted(set(params) - set(klass._param_names()))
        if unknown:
            raise CheckpointError(
                f"{directory / 'config.json'}: parameters {unknown} are not parameters of "
                f"{klass.__name__} (saved by another version?)"
            )
        where = directory / "config.json"
        models = checked_names(state.get("models"), where, "state.models", low=2,
                               high=MAX_MODELS)
        try:
            router = klass(**params)
            router._check_loaded_params()
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{where}: params: {e}") from None
        extra = {k: v for k, v in state.items() if k != "models"}
        router.models_ = models
        try:
            tensors = load_tensors(directory, router._expected_tensors(extra))
            router._load_state(tensors, extra, directory)
        except MALFORMED as e:  # a value no check above foresaw: still one clear error
            if isinstance(e, PrefrouteError):
                raise
            raise CheckpointError(f"{where}: state: {type(e).__name__}: {e}") from None
        router.fitted_ = True
        return router

    def _check_loaded_params(self) -> None:
        """Check the parameters a checkpoint sets (ConfigError / TypeError when bad)."""
        check = getattr(self, "_check_params", None)
        if check is not None:
            check()

    def _loaded_epoch(self, extra: dict[str, Any], directory: Path) -> int | None:
        """state.best_epoch: an epoch number or None."""
        return checked_count(extra.get("best_epoch"), directory / "config.json",
                             "state.best_epoch", optional=True)


class EmbeddingRouter(MultiRouter):
    """A multi router on frozen prompt embeddings from ``prefroute.embed``.

    ``embedder`` is a name (``"wordllama"``, ``"tfidf"``...), a spec dict, or an Embedder
    instance (recorded by its spec; e.g. a ``CachedEmbedder`` records its inner embedder).
    Embedders that learn state (tf-idf) are fitted on the training prompts and their state
    is saved under ``embedder/`` in the checkpoint.
    """

    def __init__(self, *, embedder: str | dict[str, Any] | Any = "wordllama") -> None:
        self.embedder = embedder

    def _fit_embedder(self, prompts: list[str]) -> np.ndarray:
        """Build (and fit, if it learns) the embedder; return the training embeddings."""
        from prefroute.embed import build_embedder

        embedder = build_embedder(self.embedder)
        if embedder.needs_fit:
            embedder.fit(prompts)
        self.embedder_ = embedder
        self.embedder_spec_ = embedder.spec()
        return embedder.encode(prompts)

    def _embed(self, prompts: list[str]) -> np.ndarray:
        return self.embedder_.encode(prompts)

    def _embedder_extra(self) -> dict[str, Any]:
        return {"embedder_spec": self.embedder_spec_, "embedding_dim": int(self.embedder_.dim)}

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory / EMBEDDER_STATE_DIR)

    def _load_embedder(self, extra: dict[str, Any], directory: Path) -> int:
        """Rebuild the saved embedder; returns its dimension (what the tensors must match)."""
        from prefroute.embed import build_embedder

        where = directory / "config.json"
        spec = extra.get("embedder_spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("params", {}), dict):
            raise CheckpointError(f"{where}: state.embedder_spec must be an embedder spec "
                                  "{'name': ..., 'params': {...}}")
        try:
            embedder = build_embedder(spec)
            if embedder.needs_fit:
                embedder.load_state(directory / EMBEDDER_STATE_DIR)
            dim = int(embedder.dim)
        except PrefrouteError as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{where}: state.embedder_spec: {e}") from None
        except MALFORMED as e:
            raise CheckpointError(f"{where}: state.embedder_spec: {type(e).__name__}: {e}"
                                  ) from None
        saved_dim = checked_count(extra.get("embedding_dim", dim), where, "state.embedding_dim",
                                  low=1)
        if dim != saved_dim:
            raise CheckpointError(
                f"{directory}: the embedder makes {dim}-d vectors; the router was "
                f"trained on {saved_dim}-d ones"
            )
        self.embedder_ = embedder
        self.embedder_spec_ = spec
        return dim


def _checked_prompts(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i} is {type(p).__name__}, not a string")
    return prompts


def _coerce_targets(
    prompts: Sequence[str] | None,
    targets: OutcomeTable | MultiLabels | np.ndarray,
    models: Sequence[str] | None,
) -> tuple[list[str], np.ndarray, list[str]]:
    """(prompts, float labels [n, N], model names) from any accepted target type."""
    if isinstance(targets, OutcomeTable):
        if prompts is None:
            prompts = targets.prompts
        targets = labels_from_outcomes(targets)
    elif prompts is None:
        raise ConfigError("fit needs prompts unless targets is an OutcomeTable")
    if isinstance(targets, MultiLabels):
        if models is not None and list(models) != targets.models:
            raise ConfigError(
                f"models={list(models)} differ from the labels' models {targets.models}"
            )
        labels, names = targets.labels, targets.models
    else:
        arr = np.asarray(targets, dtype=np.float64)
        if arr.ndim != 2:
            raise DataError(
                f"targets must be a 2-d [n_prompts, n_models] array; got shape {arr.shape}"
            )
        names = list(models) if models is not None else [f"model_{j}" for j in range(arr.shape[1])]
        labels = MultiLabels(arr, names).labels
    prompts = _checked_prompts(prompts)
    if len(prompts) != labels.shape[0]:
        raise DataError(f"{len(prompts)} prompts but {labels.shape[0]} label rows")
    if len(names) < 2:
        raise DataError(f"routing needs at least 2 models; got {names}")
    return prompts, np.asarray(labels, dtype=np.float64), list(names)
