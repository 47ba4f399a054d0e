"""Embeddings from the OpenAI API or any OpenAI-compatible server (vLLM, TEI, LiteLLM...)."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.embed.base import Embedder, register_embedder
from prefroute.errors import ConfigError, PrefrouteError

KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MAX_BACKOFF_S = 60.0


def _retry_after_s(error: Exception) -> float | None:
    """The server's Retry-After hint in seconds, if the error response carries one."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date; fall back to our own backoff
    return None


@register_embedder
class OpenAIEmbedder(Embedder):
    """OpenAI embeddings, batched and retried with exponential backoff.

    Parameters
    ----------
    model: embedding model name.
    base_url: API root such as ``"http://localhost:8000/v1"`` (None: api.openai.com).
    api_key_env: name of the environment variable holding the key; the key itself is never
        stored. With a ``base_url`` and no such variable, a placeholder key is sent (local
        servers usually ignore it).
    batch_size: texts per request (the API accepts up to 2048).
    max_retries: retries of one request after a rate limit, 5xx, timeout or connection error.
    timeout: seconds per request.
    dimensions: ask text-embedding-3 models for shorter vectors.
    initial_backoff: seconds before the first retry; doubles on each further retry.
    """

    name = "openai"

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 256,
        max_retries: int = 6,
        timeout: float = 60.0,
        dimensions: int | None = None,
        initial_backoff: float = 1.0,
    ) -> None:
        for pname, value, low in (("batch_size", batch_size, 1), ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"The '{pname}' parameter of OpenAIEmbedder must be an int >= {low}. "
                    f"Got {value!r} instead."
                )
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            raise ConfigError(
                "The 'dimensions' parameter of OpenAIEmbedder must be a positive int or None. "
                f"Got {dimensions!r} instead."
            )
        if not timeout > 0 or initial_backoff < 0:
            raise ConfigError(
                "The 'timeout' parameter of OpenAIEmbedder must be > 0 and 'initial_backoff' "
                f">= 0. Got {timeout!r} and {initial_backoff!r} instead."
            )
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.dimensions = dimensions
        self.initial_backoff = float(initial_backoff)
        self._dim: int | None = dimensions or KNOWN_DIMS.get(model)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._encode(["dimension probe"])  # unknown model: ask the server once
        assert self._dim is not None
        return self._dim

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "batch_size": self.batch_size,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "dimensions": self.dimensions,
            "initial_backoff": self.initial_backoff,
        }

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.api_key_env)
                if not key:
                    if self.base_url is None:
                        raise ConfigError(
                            f"The 'openai' embedder reads its API key from the environment "
                            f"variable {self.api_key_env!r}, which is not set."
                        )
                    key = "unused"
                # Our own loop owns retries, so the client must not retry on its own.
                self._client = openai.OpenAI(
                    api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout
                )
            return self._client

    def _request(self, batch: list[str]) -> np.ndarray:
        import openai

        client = self._get_client()
        kwargs: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        delay = self.initial_backoff
        for attempt in range(self.max_retries + 1):
            try:
                response = client.embeddings.create(**kwargs)
                break
            except openai.APIStatusError as error:
                retryable = error.status_code in (408, 409, 429) or error.status_code >= 500
                if not retryable or attempt == self.max_retries:
                    raise
                wait = _retry_after_s(error)
            except openai.APIConnectionError:  # includes timeouts
                if attempt == self.max_retries:
                    raise
                wait = None
            if wait is None:
                wait = delay * (1.0 + 0.25 * random.random())  # jitter spreads parallel clients
            wait = min(wait, MAX_BACKOFF_S)
            logger.warning(
                "embedding request to %s failed (attempt %d of %d); retrying in %.2fs",
                self.base_url or "api.openai.com",
                attempt + 1,
                self.max_retries + 1,
                wait,
            )
            time.sleep(wait)
            delay *= 2
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != len(batch):
            raise PrefrouteError(
                f"The embeddings server returned {len(rows)} vectors for {len(batch)} texts."
            )
        return np.asarray([row.embedding for row in rows], dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        # The API rejects empty strings; a single space embeds "nothing" deterministically.
        texts = [t if t else " " for t in texts]
        parts = [
            self._request(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts)
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise ConfigError(
                f"The embeddings server returned {vectors.shape[1]}-d vectors for model "
                f"{self.model!r}; expected {self._dim}."
            )
        return vectors
