"""WordLlama: averaged static token embeddings; the fast, fully offline default embedder.

The ``wordllama`` wheel ships its weights (``weights/l2_supercat_256.safetensors``) and
tokenizer (``tokenizers/l2_supercat_tokenizer_config.json``). ``WordLlama.load`` looks for
the tokenizer under ``<package>/tokenizer/`` (singular), misses it and would fall back to
the Hugging Face Hub, so we pass the package folder as ``cache_dir`` (where it finds
``tokenizers/``) and ``disable_download=True``, and check both files exist beforehand so
no code path that can reach the network is ever taken.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.embed.base import Embedder, register_embedder
from prefroute.errors import ConfigError, check_choice

MATRYOSHKA_DIMS = (64, 128, 256, 512, 1024)
DEFAULT_CONFIG = "l2_supercat"

# One loaded model per (config, dim, max_tokens) and process: many routers share it.
_MODELS: dict[tuple[str, int, int | None], Any] = {}
_LOCK = threading.Lock()


def wordllama_package_dir() -> Path:
    """The folder of the installed ``wordllama`` package, found without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The 'wordllama' embedder needs the wordllama package: pip install wordllama"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_dims(config: str = DEFAULT_CONFIG) -> list[int]:
    """Dimensions whose weights the installed wordllama wheel ships for ``config``."""
    weights = wordllama_package_dir() / "weights"
    return [d for d in MATRYOSHKA_DIMS if (weights / f"{config}_{d}.safetensors").is_file()]


def clear_model_cache() -> None:
    """Forget the loaded WordLlama models (the next encode loads them again)."""
    with _LOCK:
        _MODELS.clear()


def _import_wordllama() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import wordllama
    finally:
        # wordllama calls logging.basicConfig(level=INFO) at import time, which would make
        # every library's INFO records print in the user's process; undo that.
        root.handlers[:] = handlers
        root.setLevel(level)
    return wordllama


def _load_model(config: str, dim: int, max_tokens: int | None) -> Any:
    key = (config, dim, max_tokens)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        package = wordllama_package_dir()
        stored = min(d for d in bundled_dims(config) if d >= dim)
        tokenizer_file = package / "tokenizers" / f"{config}_tokenizer_config.json"
        if not tokenizer_file.is_file():
            raise ConfigError(f"The installed wordllama package lacks {tokenizer_file}.")
        wordllama = _import_wordllama()
        model = wordllama.WordLlama.load(
            config=config,
            cache_dir=package,
            dim=stored,
            trunc_dim=dim if dim != stored else None,
            disable_download=True,
        )
        if max_tokens is not None:
            model.tokenizer.enable_truncation(max_tokens)
        logger.debug("loaded WordLlama %s (dim %d of %d) from %s", config, dim, stored, package)
        _MODELS[key] = model
        return model


@register_embedder
class WordLlamaEmbedder(Embedder):
    """WordLlama ``l2_supercat`` embeddings: mean of static token vectors, CPU-only, offline.

    Parameters
    ----------
    dim: 64, 128 or 256 (Matryoshka truncation of the bundled 256-d weights; 512 and 1024
        need weights the wheel does not ship).
    config: the WordLlama configuration; only configurations bundled in the wheel load.
    max_tokens: truncate each text to this many tokens (None: the whole text).
    """

    name = "wordllama"

    def __init__(
        self, dim: int = 256, config: str = DEFAULT_CONFIG, max_tokens: int | None = None
    ) -> None:
        check_choice("dim", "WordLlamaEmbedder", dim, MATRYOSHKA_DIMS)
        available = bundled_dims(config)
        if not available:
            raise ConfigError(
                f"The 'config' parameter of WordLlamaEmbedder must name a configuration whose "
                f"weights ship with the wordllama package ({DEFAULT_CONFIG!r}). "
                f"Got {config!r} instead."
            )
        if dim > max(available):
            raise ConfigError(
                f"The 'dim' parameter of WordLlamaEmbedder must be at most {max(available)}: "
                f"the installed wordllama package ships {config} weights of {max(available)} dims. "
                f"Got {dim} instead."
            )
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(
                "The 'max_tokens' parameter of WordLlamaEmbedder must be a positive int or "
                f"None. Got {max_tokens!r} instead."
            )
        self._dim = dim
        self.config = config
        self.max_tokens = max_tokens

    @property
    def dim(self) -> int:
        return self._dim

    def params(self) -> dict[str, Any]:
        return {"dim": self._dim, "config": self.config, "max_tokens": self.max_tokens}

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = _load_model(self.config, self._dim, self.max_tokens)
        tokenizer = _unpadded_tokenizer(model, self.max_tokens)
        if len(texts) == 1:
            ids = [tokenizer.encode(texts[0], add_special_tokens=False).ids]
        else:
            ids = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        return _mean_of_token_vectors(model.embedding, ids)


def _unpadded_tokenizer(model: Any, max_tokens: int | None) -> Any:
    """A copy of WordLlama's tokenizer without padding, built once per model.

    WordLlama pads every batch to its longest text and averages under a mask; averaging
    each text's own token vectors gives the same numbers without the padded work.
    """
    tokenizer = getattr(model, "_prefroute_unpadded", None)
    if tokenizer is None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(model.tokenizer.to_str())
        tokenizer.no_padding()
        if max_tokens is not None:
            tokenizer.enable_truncation(max_tokens)
        else:
            tokenizer.no_truncation()
        model._prefroute_unpadded = tokenizer
    return tokenizer


def _mean_of_token_vectors(table: np.ndarray, ids: list[list[int]]) -> np.ndarray:
    """Mean of ``table`` rows per id list (an empty list gives a zero vector)."""
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int64, count=int(lengths.sum()))
    np.clip(flat, 0, table.shape[0] - 1, out=flat)
    out = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
    nonempty = lengths > 0
    if nonempty.any():
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
        sums = np.add.reduceat(table[flat], starts, axis=0)
        out[nonempty] = sums / lengths[nonempty, None]
    return out
