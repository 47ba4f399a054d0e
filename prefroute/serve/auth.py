"""Optional client authentication: ``Authorization: Bearer <key>`` checked against known keys.

Keys come from ``--api-key-file FILE`` (one key per line; blank lines and ``#`` comments are
skipped) and/or the ``PREFROUTE_API_KEYS`` environment variable (comma or newline separated).
Keys are kept only as SHA-256 digests and compared in constant time. The client's key is the
server's business alone: upstream calls always carry the upstream's own key, never the client's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from prefroute.errors import ConfigError
from prefroute.serve.errors import AuthenticationError

API_KEYS_ENV = "PREFROUTE_API_KEYS"
_MAX_KEY_FILE_BYTES = 1 << 20


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_key_file(path: str | Path) -> list[str]:
    """The keys of a key file; ConfigError naming the file and line for anything odd."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: the API key file does not exist or is not a regular file")
        if path.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{path}: the API key file is larger than 1 MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the API key file is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the API key file ({e.strerror})") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        _check_key(key, f"{path}, line {number}")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{path}: the API key file holds no key (one key per line)")
    return keys


def _check_key(key: str, where: str) -> None:
    if len(key) < 8 or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(
            f"{where}: an API key must be at least 8 printable characters without spaces"
        )


class ClientAuth:
    """The keys clients may present; ``check`` raises a 401 ServeError for anything else."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            raise ConfigError("client authentication needs at least one API key")

    @classmethod
    def from_sources(
        cls, key_file: str | Path | None = None, *, env: bool = True
    ) -> ClientAuth | None:
        """Keys from ``key_file`` and ``$PREFROUTE_API_KEYS``; None when neither gives one."""
        keys = read_key_file(key_file) if key_file is not None else []
        if env and os.environ.get(API_KEYS_ENV):
            for i, key in enumerate(os.environ[API_KEYS_ENV].replace(",", "\n").splitlines()):
                if key.strip():
                    _check_key(key.strip(), f"${API_KEYS_ENV}, key {i + 1}")
                    keys.append(key.strip())
        return cls(keys) if keys else None

    def check(self, authorization: str | None) -> None:
        """Accept ``Bearer <known key>``; otherwise AuthenticationError (never echoing the key)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        digest = _digest(token.strip())
        # compare against every key so the time taken does not tell which prefix matched
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise AuthenticationError("incorrect API key provided", code="invalid_api_key")
