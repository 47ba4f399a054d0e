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
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.embed.base import Embedder, register_embedder
from prefroute.embed.segment_tokenizer import (
    SegmentTokenizer,
    TokenBatch,
    compiled_loops,
    supports_segment_tokenization,
)
from prefroute.errors import ConfigError, check_choice

MATRYOSHKA_DIMS = (64, 128, 256, 512, 1024)
DEFAULT_CONFIG = "l2_supercat"
# a configuration is a plain name, never a path: it picks files inside the package only
_CONFIG_NAME = re.compile(r"[A-Za-z0-9_\-]+")

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


def _is_config_name(config: object) -> bool:
    return isinstance(config, str) and _CONFIG_NAME.fullmatch(config) is not None


def bundled_dims(config: str = DEFAULT_CONFIG) -> list[int]:
    """Dimensions whose weights the installed wordllama wheel ships for ``config`` (none for
    anything but a plain configuration name)."""
    if not _is_config_name(config):
        return []
    weights = wordllama_package_dir() / "weights"
    return [d for d in MATRYOSHKA_DIMS if (weights / f"{config}_{d}.safetensors").is_file()]


def bundled_configs() -> list[str]:
    """Configuration names whose weights and tokenizer the installed wordllama wheel ships."""
    package = wordllama_package_dir()
    names = set()
    for path in (package / "weights").glob("*_*.safetensors"):
        name, _, dim = path.stem.rpartition("_")
        if _is_config_name(name) and dim.isdigit() and int(dim) in MATRYOSHKA_DIMS:
            names.add(name)
    tokenizers = package / "tokenizers"
    return sorted(n for n in names if (tokenizers / f"{n}_tokenizer_config.json").is_file())


def check_config(config: object) -> str:
    """``config`` if it names a configuration the installed wheel ships, else ConfigError."""
    shipped = bundled_configs()
    if not _is_config_name(config) or config not in shipped:
        raise ConfigError(
            "The 'config' parameter of WordLlamaEmbedder must be the plain name of a "
            f"configuration whose weights and tokenizer ship with the wordllama package "
            f"({shipped}), not a path. Got {config!r} instead."
        )
    return config


def clear_model_cache() -> None:
    """Forget the loaded WordLlama models (the next encode loads them again)."""
    with _LOCK:
        _MODELS.clear()


def clear_token_caches() -> None:
    """Empty the segment caches of the loaded models' tokenizers (to time a cold start)."""
    with _LOCK:
        for model in _MODELS.values():
            _, segmented = getattr(model, "_prefroute_tokenizers", (None, None))
            if segmented is not None:
                segmented.clear()


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
        check_config(config)  # only shipped names reach WordLlama.load (no paths, no Hub)
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
    config: the WordLlama configuration: a plain name (letters, digits, ``_``, ``-``) of a
        configuration whose weights and tokenizer the wheel ships; never a path.
    max_tokens: truncate each text to this many tokens (None: the whole text).
    segment_cache: tokenise batches through ``SegmentTokenizer``, which caches the tokens of
        each text segment it has seen (up to 262,144 segments, ~55 MB) and gives exactly the
        plain tokenizer's ids 2-5x faster. A speed setting only: it is not part of the spec.
    """

    name = "wordllama"
    # Segment-cached tokenisation has a fixed cost per call that large batches amortise.
    default_batch_size = 4096
    concurrent_encode = True  # SegmentTokenizer locks only its cache; pooling drops the GIL

    def __init__(
        self,
        dim: int = 256,
        config: str = DEFAULT_CONFIG,
        max_tokens: int | None = None,
        *,
        segment_cache: bool = True,
    ) -> None:
        check_choice("dim", "WordLlamaEmbedder", dim, MATRYOSHKA_DIMS)
        available = bundled_dims(check_config(config))
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
        self.segment_cache = segment_cache

    @property
    def dim(self) -> int:
        return self._dim

    def params(self) -> dict[str, Any]:
        return {"dim": self._dim, "config": self.config, "max_tokens": self.max_tokens}

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = _load_model(self.config, self._dim, self.max_tokens)
        table = getattr(model, "_prefroute_table", None)
        if table is None:  # a truncated (Matryoshka) table is a strided view: copy it once
            with _LOCK:
                table = getattr(model, "_prefroute_table", None)
                if table is None:
                    table = np.ascontiguousarray(model.embedding, np.float32)
                    compiled_loops().warm_up_pooling(table)  # loaded here, not in a batch
                    model._prefroute_table = table
        tokens = _tokenize(model, texts, self.max_tokens, self.segment_cache)
        return mean_of_token_vectors(table, tokens)




def _tokenize(
    model: Any, texts: list[str], max_tokens: int | None, segment_cache: bool = True
) -> TokenBatch:
    """Token ids exactly as WordLlama's tokenizer gives them, without its padding."""
    state = getattr(model, "_prefroute_tokenizers", None)
    if state is None:  # built once even when several threads encode at once
        with _LOCK:
            state = getattr(model, "_prefroute_tokenizers", None)
            if state is None:
                state = model._prefroute_tokenizers = _build_tokenizers(model, max_tokens)
    reference, segmented = state
    if segment_cache and segmented is not None:
        return segmented.encode_batch(texts)
    encoded = reference.encode_batch_fast(texts, add_special_tokens=False)
    rows = [np.array(e.ids, dtype=np.int64) for e in encoded]
    counts = np.array([len(row) for row in rows], dtype=np.int64)
    offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    return TokenBatch(np.concatenate(rows), offsets, counts)


def _build_tokenizers(model: Any, max_tokens: int | None) -> tuple[Any, SegmentTokenizer | None]:
    """WordLlama's tokenizer without padding, and its segment-cached twin where exact."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(model.tokenizer.to_str())
    reference.no_padding()
    if max_tokens is not None:
        reference.enable_truncation(max_tokens)
    else:
        reference.no_truncation()
    segmented = None
    if supports_segment_tokenization(reference):
        segmented = SegmentTokenizer(reference, max_tokens=max_tokens)
    else:
        logger.info("WordLlama %s: tokenizer not segmentable; using the plain tokenizer", model)
    return reference, segmented


def mean_of_token_vectors(table: np.ndarray, tokens: TokenBatch) -> np.ndarray:
    """Mean of ``table`` rows over each text's tokens (zeros for a text without tokens).

    WordLlama pads a batch to its longest text and averages under a mask; a bag-of-ids
    mean over each text's own tokens gives the same vectors without the padded work.
    """
    ids = tokens.ids
    if len(ids) and int(ids.max()) >= len(table):  # ids past a truncated table, as WordLlama
        ids = np.minimum(ids, len(table) - 1)
    # one path for any batch size: a text's vector must not depend on what it is batched with
    return compiled_loops().mean_rows(table, ids, tokens.offsets, tokens.counts)
