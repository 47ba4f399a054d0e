"""Embeddings plus surface features of the prompt: more than topical similarity.

A topical embedding says what a prompt is about; whether the weak model will fail also
depends on how long and how involved it is (GSM8K: prompt length alone gives APGR ~0.60).
``FeatureAugmentedEmbedder`` appends standardised surface features (length, numbers,
operators, options, code) to any inner embedding, weighted so that a router's similarity
or linear projection can use both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.checkpoint import load_tensors, save_tensors
from prefroute.embed.base import Embedder, build_embedder, register_embedder
from prefroute.errors import CheckpointError, ConfigError, check_range

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPTION_LINE = re.compile(r"^\s*\(?[A-J][.)]\s", re.MULTILINE)
_MATH = re.compile(r"[+\-*/=^%<>]|\\frac|\\sqrt|\$")
_CODE = re.compile(r"[{}();\[\]]|def |return |import |class ")

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_numbers",
    "log_digits",
    "log_math_symbols",
    "log_code_tokens",
    "option_lines",
    "question_marks",
    "mean_word_length",
    "uppercase_fraction",
    "non_ascii_fraction",
)
_STATE_FILE = "features.safetensors"


def surface_features(texts: list[str]) -> np.ndarray:
    """Raw surface features, float64 [n, len(FEATURE_NAMES)] (see FEATURE_NAMES)."""
    out = np.empty((len(texts), len(FEATURE_NAMES)))
    for i, text in enumerate(texts):
        words = text.split()
        n_chars = max(len(text), 1)
        out[i] = (
            np.log1p(len(text)),
            np.log1p(len(words)),
            np.log1p(text.count("\n") + 1),
            np.log1p(len(_NUMBER.findall(text))),
            np.log1p(sum(c.isdigit() for c in text)),
            np.log1p(len(_MATH.findall(text))),
            np.log1p(len(_CODE.findall(text))),
            min(len(_OPTION_LINE.findall(text)), 10) / 10.0,
            np.log1p(text.count("?")),
            np.mean([len(w) for w in words]) if words else 0.0,
            sum(c.isupper() for c in text) / n_chars,
            sum(ord(c) > 127 for c in text) / n_chars,
        )
    return out


@register_embedder
class FeatureAugmentedEmbedder(Embedder):
    """``inner`` embedding (unit length) followed by ``feature_weight`` x standardised features.

    Parameters
    ----------
    inner: spec of the topical embedder (default wordllama).
    feature_weight: norm given to the feature block relative to the unit-norm embedding;
        0 reproduces the inner embedder, larger values make surface form count for more.

    Attributes
    ----------
    mean_, scale_: feature standardisation learned by ``fit`` on training prompts.
    """

    name = "features"
    needs_fit = True

    def __init__(
        self, *, inner: str | dict[str, Any] | Embedder = "wordllama", feature_weight: float = 0.5
    ) -> None:
        check_range("feature_weight", "FeatureAugmentedEmbedder", feature_weight, low=0.0)
        # an instance (e.g. a CachedEmbedder) is used as is; the spec records what it embeds
        self._inner_embedder: Embedder | None = inner if isinstance(inner, Embedder) else None
        if isinstance(inner, Embedder):
            self.inner = inner.spec()
        else:
            self.inner = inner if isinstance(inner, dict) else {"name": inner, "params": {}}
        self.feature_weight = float(feature_weight)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    @property
    def inner_embedder(self) -> Embedder:
        if self._inner_embedder is None:
            self._inner_embedder = build_embedder(self.inner)
        return self._inner_embedder

    @property
    def dim(self) -> int:
        return self.inner_embedder.dim + len(FEATURE_NAMES)

    def params(self) -> dict[str, Any]:
        return {"inner": self.inner, "feature_weight": self.feature_weight}

    def fit(self, texts: list[str]) -> FeatureAugmentedEmbedder:
        texts = list(texts)
        if not texts:
            raise ConfigError("FeatureAugmentedEmbedder.fit needs at least one text")
        if self.inner_embedder.needs_fit:
            self.inner_embedder.fit(texts)
        raw = self._raw_features(texts)
        self.mean_ = raw.mean(axis=0)
        self.scale_ = np.where(raw.std(axis=0) > 1e-9, raw.std(axis=0), 1.0)
        return self

    def _raw_features(self, texts: list[str]) -> np.ndarray:
        """``surface_features`` of ``texts`` (a hook: ``embed.memo`` serves them from a memo)."""
        return surface_features(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("FeatureAugmentedEmbedder is not fitted: call fit(training prompts)")
        topical = self.inner_embedder.encode(texts)
        standard = (self._raw_features(texts) - self.mean_) / self.scale_
        # each feature block row gets norm ~feature_weight, so the split between topic and
        # surface form does not depend on how many features there are
        block = standard / np.sqrt(len(FEATURE_NAMES)) * self.feature_weight
        return np.hstack([topical, block.astype(np.float32)])

    def save_state(self, directory: Path) -> None:
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("cannot save an unfitted FeatureAugmentedEmbedder")
        save_tensors(directory, {"mean": self.mean_, "scale": self.scale_}, name=_STATE_FILE)
        if self.inner_embedder.needs_fit:
            self.inner_embedder.save_state(directory)

    def load_state(self, directory: Path) -> None:
        tensors = load_tensors(directory, ["mean", "scale"], name=_STATE_FILE)
        if tensors["mean"].shape != (len(FEATURE_NAMES),):
            raise CheckpointError(
                f"{Path(directory) / _STATE_FILE} holds {tensors['mean'].shape[0]} features, "
                f"this prefroute computes {len(FEATURE_NAMES)}"
            )
        self.mean_, self.scale_ = tensors["mean"], tensors["scale"]
        if self.inner_embedder.needs_fit:
            self.inner_embedder.load_state(directory)
