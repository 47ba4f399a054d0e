"""The Embedder interface and the registry from embedder name to class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prefroute.errors import ConfigError, DataError

EMBEDDERS: dict[str, type[Embedder]] = {}


def register_embedder(cls: type[Embedder]) -> type[Embedder]:
    """Class decorator: make ``cls`` buildable by its ``name`` from a spec."""
    EMBEDDERS[cls.name] = cls
    return cls


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors.

    Subclasses set ``name`` and implement ``_encode`` and ``params``. A spec
    (``{"name": ..., "params": {...}}``) recorded in a checkpoint rebuilds an embedder that
    embeds exactly as the saved one. Embedders with learned state (tf-idf) also implement
    ``save_state`` / ``load_state`` and are ``fitted`` before use.
    """

    name: ClassVar[str]
    needs_fit: ClassVar[bool] = False
    # Texts per ``_encode`` call when ``encode`` is not told: bounds peak memory.
    default_batch_size: ClassVar[int] = 256
    # Whether ``encode`` may run in several threads at once and gains from it (numpy work
    # that releases the GIL, state that is read-only or locked).
    concurrent_encode: ClassVar[bool] = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector size."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments that rebuild this embedder."""

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """Embed a batch; need not normalise."""

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    def encode(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` into a float32 array [n, dim] with unit-length rows."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch_size = batch_size or self.default_batch_size
        try:
            parts = [
                self._encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
            ]
        except (UnicodeError, TypeError):
            _raise_on_invalid_text(texts)
            raise
        vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
        vectors = np.array(vectors, dtype=np.float32, order="C")  # a copy we may normalise
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.maximum(norms, 1e-12)
        return vectors

    def fit(self, texts: Sequence[str]) -> Embedder:  # noqa: B027 - optional hook
        """Learn state from training texts (only embedders with ``needs_fit``)."""
        return self

    def save_state(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write learned state into a checkpoint folder (no pickle)."""

    def load_state(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Read learned state written by ``save_state``."""


def _raise_on_invalid_text(texts: list[str]) -> None:
    """A clear error for the first text that is not a string or not valid Unicode (a lone
    surrogate, from badly decoded input), which tokenizers reject with obscure messages."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"is {type(text).__name__}, not a string", row=i, field="text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise DataError(
                f"is not valid Unicode ({error.reason}: {text[error.start]!r} at character "
                f"{error.start})",
                row=i,
                field="text",
            ) from None


def spec_if_embedder(value: Any) -> Any:
    """``value.spec()`` for an embedder instance (so parameters stay JSON), else ``value``."""
    return value.spec() if isinstance(value, Embedder) else value


def encode_unless_given(
    spec: str | dict[str, Any] | Embedder, *groups: tuple[Sequence[str], np.ndarray | None]
) -> list[np.ndarray]:
    """Vectors of each (texts, vectors) group: the given vectors, else the texts encoded by
    one embedder built from ``spec`` (only when some group needs it)."""
    model = None
    out = []
    for texts, vectors in groups:
        if vectors is None:
            model = model or build_embedder(spec)
            vectors = model.encode(list(texts))
        out.append(vectors)
    return out


def build_embedder(spec: str | dict[str, Any] | Embedder) -> Embedder:
    """An embedder from a name (``"wordllama"``), a spec dict, or an embedder instance."""
    if isinstance(spec, Embedder):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec, "params": {}}
    name = spec.get("name")
    if name not in EMBEDDERS:
        raise ConfigError(
            f"The 'embedder' parameter must name one of {sorted(EMBEDDERS)}. Got {name!r} instead."
        )
    return EMBEDDERS[name](**spec.get("params", {}))
