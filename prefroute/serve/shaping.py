"""Per-side request shaping from ``--config serve.toml``: parameters to drop or rename.

Two upstreams rarely accept the same parameters (one rejects ``logit_bias``, another wants
``max_completion_tokens`` instead of ``max_tokens``). Without shaping, whether a request
succeeds would depend on the routing decision. Example::

    [shaping.strong]
    rename = { max_tokens = "max_completion_tokens" }

    [shaping.weak]
    drop = ["logit_bias", "reasoning_effort"]

Renames apply before drops. The fields the server itself needs (``model``, ``stream``,
``messages``, ``input``, ``prompt``) cannot be dropped or renamed. Other tables of the file
belong to other parts of the server and are ignored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from prefroute.errors import ConfigError

PROTECTED = frozenset({"model", "stream", "messages", "input", "prompt"})
SIDES = ("strong", "weak")
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class RequestShaping:
    """What to change in a request body before it goes to one side's upstream."""

    drop: frozenset[str] = frozenset()
    rename: Mapping[str, str] = field(default_factory=dict)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """A shaped copy of ``body`` (the input is not modified)."""
        if not self.drop and not self.rename:
            return body
        shaped = {}
        for key, value in body.items():
            key = self.rename.get(key, key)
            if key not in self.drop:
                shaped[key] = value
        return shaped


def read_serve_config(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of ``--config``; ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: the serve config does not exist or is not a regular file")
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: the serve config is larger than 1 MiB")
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the serve config ({e.strerror})") from None


def shaping_from_config(
    config: Mapping[str, Any], where: str = "serve config"
) -> dict[str, RequestShaping]:
    """The ``[shaping.strong]`` / ``[shaping.weak]`` tables of a parsed config, checked."""
    tables = config.get("shaping", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(
            f"{where}: 'shaping' must be a table with [shaping.strong]/[shaping.weak]"
        )
    unknown = set(tables) - set(SIDES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown side(s) {sorted(unknown)} under [shaping]; use strong and weak"
        )
    result = {side: RequestShaping() for side in SIDES}
    for side, table in tables.items():
        result[side] = _side_shaping(table, f"{where}: [shaping.{side}]")
    return result


def _side_shaping(table: Any, where: str) -> RequestShaping:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table with 'drop' and/or 'rename'")
    unknown = set(table) - {"drop", "rename"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; use drop and rename")
    drop = table.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(k, str) and k for k in drop):
        raise ConfigError(f"{where}: 'drop' must be a list of parameter names")
    rename = table.get("rename", {})
    if not isinstance(rename, Mapping) or not all(
        isinstance(v, str) and v for v in rename.values()
    ):
        raise ConfigError(f"{where}: 'rename' must map parameter names to new names")
    touched = (set(drop) | set(rename) | set(rename.values())) & PROTECTED
    if touched:
        raise ConfigError(f"{where}: {sorted(touched)} cannot be dropped or renamed")
    return RequestShaping(frozenset(drop), dict(rename))
