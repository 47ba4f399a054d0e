"""An in-memory embedding memo: each distinct text is embedded once per process.

``prefroute.routers.auto`` fits many candidate routers on overlapping prompt sets (every
fold, every candidate); wrapping their shared embedder in one ``MemoEmbedder`` makes the
embedding cost that of the distinct prompts, once. The spec is the inner embedder's, so a
checkpoint written by a router that used the memo rebuilds the plain inner embedder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.embed.base import Embedder, build_embedder
from prefroute.embed.features import FeatureAugmentedEmbedder, surface_features
from prefroute.errors import ConfigError


class MemoEmbedder(Embedder):
    """Wraps ``inner`` (an embedder without learned state) with a dict text -> vector."""

    name = "memo"  # not registered: specs always name the inner embedder

    def __init__(self, inner: str | dict[str, Any] | Embedder = "wordllama") -> None:
        self.inner = build_embedder(inner)
        if self.inner.needs_fit:
            raise ConfigError(
                f"MemoEmbedder wraps embedders without learned state; {self.inner.name!r} "
                "is fitted on training texts"
            )
        self._vectors: dict[str, np.ndarray] = {}
        self.frozen = False  # frozen: look up known texts, store no new ones (serving)

    @property
    def dim(self) -> int:
        return self.inner.dim

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            vectors = self.inner.encode(missing, batch_size=batch_size)
            if self.frozen:
                fresh = dict(zip(missing, vectors, strict=True))
                return np.stack([self._vectors.get(t, fresh.get(t)) for t in texts])
            self._vectors.update(zip(missing, vectors, strict=True))
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def save_state(self, directory: Path) -> None:
        self.inner.save_state(directory)


class FeatureMemo:
    """Surface features per distinct text, computed once and shared by many embedders."""

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}
        self.frozen = False  # frozen: look up known texts, store no new ones (serving)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return surface_features([])
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if missing:
            if self.frozen:
                fresh = dict(zip(missing, surface_features(missing), strict=True))
                return np.stack([self._rows.get(t, fresh.get(t)) for t in texts])
            self._rows.update(zip(missing, surface_features(missing), strict=True))
        return np.stack([self._rows[t] for t in texts])


class MemoFeatureEmbedder(FeatureAugmentedEmbedder):
    """``FeatureAugmentedEmbedder`` reading surface features from a shared ``FeatureMemo``.

    Its spec is the plain ``features`` spec, so a checkpoint rebuilds the plain embedder,
    which computes the same features.
    """

    def __init__(self, *, inner: str | dict[str, Any] | Embedder = "wordllama",
                 feature_weight: float = 0.5, memo: FeatureMemo) -> None:
        super().__init__(inner=inner, feature_weight=feature_weight)
        self._memo = memo

    def _raw_features(self, texts: list[str]) -> np.ndarray:
        return self._memo(texts)
