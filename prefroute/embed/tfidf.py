"""TF-IDF vectors, optionally reduced with truncated SVD (LSA): a learned, light baseline.

The state is a vocabulary (JSON), an idf vector and SVD components (safetensors); encoding
always goes through the same code path (fixed-vocabulary counts -> sublinear tf x idf ->
L2 -> projection), so an embedder restored with ``load_state`` encodes bit-identically to
the one that was fitted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.embed.base import Embedder, register_embedder
from prefroute.errors import CheckpointError, ConfigError, DataError

VOCAB_FILE = "tfidf_vocabulary.json"
TENSORS_FILE = "tfidf_state.safetensors"
STATE_FORMAT = 1


@register_embedder
class TfidfEmbedder(Embedder):
    """TF-IDF over word n-grams, projected to ``n_components`` dimensions with truncated SVD.

    Parameters
    ----------
    n_components: output size after SVD; 0 keeps the raw tf-idf vector (size = vocabulary,
        at most ``max_features``). When the training data support fewer components, the
        remaining ones are zero, so ``dim`` is always ``n_components``.
    max_features: keep the most frequent terms only.
    ngram_range: [min_n, max_n] word n-grams.
    min_df, max_df: drop terms in fewer / more documents (int: count, float: fraction).
    sublinear_tf: use 1 + log(tf) instead of raw counts.
    seed: random state of the randomized SVD.
    """

    name = "tfidf"
    needs_fit = True

    def __init__(
        self,
        n_components: int = 256,
        max_features: int = 20000,
        ngram_range: Sequence[int] = (1, 2),
        min_df: int | float = 1,
        max_df: int | float = 1.0,
        sublinear_tf: bool = True,
        seed: int = 0,
    ) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 0:
            raise ConfigError(
                "The 'n_components' parameter of TfidfEmbedder must be an int >= 0. "
                f"Got {n_components!r} instead."
            )
        if isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 2:
            raise ConfigError(
                "The 'max_features' parameter of TfidfEmbedder must be an int >= 2. "
                f"Got {max_features!r} instead."
            )
        ngrams = tuple(ngram_range)
        if (
            len(ngrams) != 2
            or not all(isinstance(n, int) for n in ngrams)
            or not (1 <= ngrams[0] <= ngrams[1])
        ):
            raise ConfigError(
                "The 'ngram_range' parameter of TfidfEmbedder must be [min_n, max_n] with "
                f"1 <= min_n <= max_n. Got {ngram_range!r} instead."
            )
        self.n_components = n_components
        self.max_features = max_features
        self.ngram_range = ngrams
        self.min_df = min_df
        self.max_df = max_df
        self.sublinear_tf = bool(sublinear_tf)
        self.seed = seed
        self._terms: list[str] | None = None
        self._idf: np.ndarray | None = None
        self._components: np.ndarray | None = None
        self._counter: Any = None
        self._fingerprint: str | None = None

    # ----------------------------------------------------------------- interface
    @property
    def fitted(self) -> bool:
        return self._idf is not None

    @property
    def dim(self) -> int:
        if self.n_components:
            return self.n_components
        self._check_fitted()
        assert self._idf is not None
        return len(self._idf)

    def params(self) -> dict[str, Any]:
        return {
            "n_components": self.n_components,
            "max_features": self.max_features,
            "ngram_range": list(self.ngram_range),
            "min_df": self.min_df,
            "max_df": self.max_df,
            "sublinear_tf": self.sublinear_tf,
            "seed": self.seed,
        }

    def fit(self, texts: Sequence[str]) -> TfidfEmbedder:
        """Learn the vocabulary, idf and (if ``n_components``) the SVD projection."""
        from sklearn.feature_extraction.text import CountVectorizer

        texts = _as_texts(texts)
        counter = CountVectorizer(
            ngram_range=self.ngram_range,
            min_df=self.min_df,
            max_df=self.max_df,
            max_features=self.max_features,
            dtype=np.float64,
        )
        try:
            counts = counter.fit_transform(texts)
        except ValueError as error:  # empty vocabulary, or min_df/max_df that leave no term
            raise DataError(f"TfidfEmbedder cannot learn a vocabulary: {error}") from error
        vocabulary = counter.vocabulary_
        terms = [""] * len(vocabulary)
        for term, index in vocabulary.items():
            terms[index] = term
        n_docs = counts.shape[0]
        doc_freq = np.bincount(counts.indices, minlength=len(terms)).astype(np.float64)
        idf = np.log((1.0 + n_docs) / (1.0 + doc_freq)) + 1.0  # smoothed, as in scikit-learn
        self._set_state(terms, idf, None)
        if self.n_components:
            self._components = self._fit_svd(self._weigh(counts))
        self._fingerprint = None
        return self

    def _encode(self, texts: list[str]) -> np.ndarray:
        self._check_fitted()
        weighted = self._weigh(self._counter.transform(texts))
        if self._components is None:
            return weighted.toarray().astype(np.float32)
        return np.asarray(weighted @ self._components.T, dtype=np.float32)

    def save_state(self, directory: Path) -> None:
        """Write ``tfidf_vocabulary.json`` and ``tfidf_state.safetensors`` into ``directory``."""
        from safetensors.numpy import save_file

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": STATE_FORMAT, "params": self.params(), "terms": self._terms}
        (directory / VOCAB_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        tensors = {"idf": self._idf}
        if self._components is not None:
            tensors["components"] = self._components
        save_file(tensors, str(directory / TENSORS_FILE))

    def load_state(self, directory: Path) -> None:
        """Restore the state written by ``save_state``."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        vocab_path, tensors_path = directory / VOCAB_FILE, directory / TENSORS_FILE
        for path in (vocab_path, tensors_path):
            if not path.is_file():
                raise CheckpointError(f"The tf-idf state file {path} is missing.")
        try:
            meta = json.loads(vocab_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensors_path))
        except (ValueError, OSError) as error:
            raise CheckpointError(
                f"The tf-idf state in {directory} is unreadable: {error}"
            ) from error
        if meta.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{vocab_path}: unknown tf-idf state format {meta.get('format')!r}."
            )
        saved = meta.get("params", {})
        mismatched = {k: v for k, v in saved.items() if self.params().get(k) != v}
        if mismatched:
            raise CheckpointError(
                f"The tf-idf state in {directory} was fitted with {mismatched}, not with this "
                f"embedder's {self.params()}."
            )
        terms, idf = meta["terms"], tensors.get("idf")
        components = tensors.get("components")
        if (
            idf is None
            or len(idf) != len(terms)
            or (components is not None and components.shape != (self.n_components, len(terms)))
            or (components is None) != (self.n_components == 0)
        ):
            raise CheckpointError(f"The tf-idf state in {directory} has inconsistent shapes.")
        self._set_state(terms, idf, components)
        self._fingerprint = None

    def state_fingerprint(self) -> str:
        """sha256 of the fitted state (the embedding cache keys on it)."""
        self._check_fitted()
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self._terms, ensure_ascii=False).encode("utf-8"))
            assert self._idf is not None
            digest.update(self._idf.tobytes())
            if self._components is not None:
                digest.update(self._components.tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ----------------------------------------------------------------- internals
    def _check_fitted(self) -> None:
        if self._idf is None:
            raise ConfigError(
                "TfidfEmbedder is not fitted: call fit(texts) or load_state(directory) "
                "before encoding."
            )

    def _set_state(self, terms: list[str], idf: np.ndarray, components: np.ndarray | None) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        self._terms = list(terms)
        self._idf = np.ascontiguousarray(idf, dtype=np.float64)
        self._components = components
        # A fixed vocabulary makes the counter usable without fitting, identically after load.
        self._counter = CountVectorizer(
            ngram_range=self.ngram_range,
            vocabulary={term: i for i, term in enumerate(self._terms)},
            dtype=np.float64,
        )

    def _weigh(self, counts: Any) -> Any:
        from sklearn.preprocessing import normalize

        weighted = counts.tocsr(copy=True).astype(np.float64)
        if self.sublinear_tf:
            np.log(weighted.data, out=weighted.data)
            weighted.data += 1.0
        assert self._idf is not None
        weighted.data *= self._idf[weighted.indices]
        return normalize(weighted, norm="l2", copy=False)

    def _fit_svd(self, weighted: Any) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD

        n_docs, n_terms = weighted.shape
        k = min(self.n_components, n_terms - 1, n_docs)
        components = np.zeros((self.n_components, n_terms), dtype=np.float32)
        if k >= 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=self.seed)
            svd.fit(weighted)
            components[:k] = svd.components_
        return components


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("TfidfEmbedder.fit expects a list of texts, not a single string.")
    texts = list(texts)
    if not texts:
        raise DataError("TfidfEmbedder.fit needs at least one text.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", row=i, field="text")
    return texts
