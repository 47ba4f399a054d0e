"""An on-disk embedding cache (SQLite) that wraps any embedder transparently.

Vectors live in ``<cache_dir>/embeddings.sqlite``, keyed by the inner embedder's spec (plus
a hash of its fitted state, for embedders that learn one) and the sha256 of the text. Misses
are computed in chunks and each chunk is committed on its own, so an interrupted run keeps
what it finished and the next run resumes from there. Several processes may share a cache.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.embed.base import Embedder
from prefroute.errors import ConfigError

DB_NAME = "embeddings.sqlite"
_SQL_VARS = 900  # stay under SQLite's bound-parameter limit on old builds (999)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spaces (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    dim INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    space INTEGER NOT NULL,
    text_sha256 BLOB NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (space, text_sha256)
) WITHOUT ROWID;
"""


def text_digest(text: str) -> bytes:
    """sha256 of the UTF-8 text (lone surrogates allowed)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _state_digest(embedder: Embedder) -> str:
    """A hash of a fitted embedder's learned state."""
    fingerprint = getattr(embedder, "state_fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        embedder.save_state(Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(tmp).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


class CachedEmbedder(Embedder):
    """Wraps ``inner`` with a persistent cache; only texts never seen before are embedded.

    ``spec()`` and ``params()`` are the inner embedder's, so a checkpoint that records this
    embedder rebuilds the plain inner one. Returned vectors are exactly those ``inner``
    produced (already unit-length float32), in input order.
    """

    name = "cached"  # not registered: specs always name the inner embedder

    def __init__(self, inner: Embedder, cache_dir: str | Path, *, chunk_size: int = 2048) -> None:
        if not isinstance(inner, Embedder):
            raise ConfigError(
                f"CachedEmbedder wraps an Embedder instance. Got {type(inner).__name__} instead."
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(
                "The 'chunk_size' parameter of CachedEmbedder must be a positive int. "
                f"Got {chunk_size!r} instead."
            )
        self.inner = inner
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.needs_fit = inner.needs_fit  # type: ignore[misc]
        self.hits = 0
        self.misses = 0
        self._space_key: str | None = None

    # ------------------------------------------------------------ delegation
    @property
    def dim(self) -> int:
        return self.inner.dim

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def fit(self, texts: Sequence[str]) -> CachedEmbedder:
        self.inner.fit(texts)
        self._space_key = None
        return self

    def save_state(self, directory: Path) -> None:
        self.inner.save_state(directory)

    def load_state(self, directory: Path) -> None:
        self.inner.load_state(directory)
        self._space_key = None

    # ---------------------------------------------------------------- cache
    @property
    def db_path(self) -> Path:
        return self.cache_dir / DB_NAME

    def space_key(self) -> str:
        """What identifies the inner embedder's vector space in the cache."""
        if self._space_key is None:
            key = json.dumps(self.inner.spec(), sort_keys=True, separators=(",", ":"))
            if self.inner.needs_fit:
                key += "|state:" + _state_digest(self.inner)
            self._space_key = key
        return self._space_key

    def _connect(self) -> sqlite3.Connection:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    def _space_id(self, conn: sqlite3.Connection, dim: int) -> int:
        key = self.space_key()
        with conn:
            conn.execute("INSERT OR IGNORE INTO spaces (key, dim) VALUES (?, ?)", (key, dim))
        space_id, stored_dim = conn.execute(
            "SELECT id, dim FROM spaces WHERE key = ?", (key,)
        ).fetchone()
        if stored_dim != dim:
            raise ConfigError(
                f"The embedding cache {self.db_path} holds {stored_dim}-d vectors for "
                f"{key[:200]}, but the embedder now makes {dim}-d ones; delete the cache."
            )
        return int(space_id)

    def encode(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        """Like ``inner.encode``, reading known texts from the cache and storing new ones."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        dim = self.inner.dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        positions: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            positions.setdefault(text_digest(text), []).append(i)
        digests = list(positions)
        conn = self._connect()
        try:
            space = self._space_id(conn, dim)
            found: set[bytes] = set()
            for start in range(0, len(digests), _SQL_VARS):
                part = digests[start : start + _SQL_VARS]
                rows = conn.execute(
                    "SELECT text_sha256, vector FROM vectors WHERE space = ? AND text_sha256 IN "
                    f"({','.join('?' * len(part))})",
                    (space, *part),
                )
                for digest, blob in rows:
                    out[positions[digest]] = np.frombuffer(blob, dtype=np.float32)
                    found.add(digest)
            missing = [d for d in digests if d not in found]
            self.hits += len(digests) - len(missing)
            self.misses += len(missing)
            if missing:
                logger.debug("embedding cache: %d hits, %d misses", len(found), len(missing))
            for start in range(0, len(missing), self.chunk_size):
                chunk = missing[start : start + self.chunk_size]
                vectors = self.inner.encode(
                    [texts[positions[d][0]] for d in chunk], batch_size=batch_size
                )
                with conn:  # one transaction per chunk: finished chunks survive interruption
                    conn.executemany(
                        "INSERT OR REPLACE INTO vectors (space, text_sha256, vector) "
                        "VALUES (?, ?, ?)",
                        [(space, d, v.tobytes()) for d, v in zip(chunk, vectors, strict=True)],
                    )
                for d, vector in zip(chunk, vectors, strict=True):
                    out[positions[d]] = vector
        finally:
            conn.close()
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def clear(self) -> None:
        """Delete this embedder's vectors (other embedders' entries stay)."""
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "DELETE FROM vectors WHERE space IN (SELECT id FROM spaces WHERE key = ?)",
                    (self.space_key(),),
                )
        finally:
            conn.close()
