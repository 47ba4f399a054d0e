"""What a checkpoint may not decide: network endpoints, environment variables, outside paths.

A shared checkpoint is data from someone else. Before a config's parameters build anything,
``sanitize_config`` walks the whole config and

- gives every ``openai`` embedder the loading user's ``base_url`` and API-key variable
  (``LoadOptions``: arguments, else ``PREFROUTE_EMBEDDER_BASE_URL`` /
  ``PREFROUTE_EMBEDDER_API_KEY_ENV``, else api.openai.com / ``OPENAI_API_KEY``), never the
  ones recorded in the checkpoint, unless ``trust_checkpoint_endpoints=True``;
- refuses any other URL or environment-variable name the config carries;
- lets a ``backbone`` / ``model_path`` be a bundled model, a folder inside the checkpoint, or
  the one the user passes at load time (``backbone=`` / ``PREFROUTE_BACKBONE``);
- refuses file names (``*_file``, ``*_dir``, ``*_path``) that lead out of the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefroute._logging import logger
from prefroute.checkpoint import CONFIG_NAME, inside
from prefroute.errors import CheckpointError

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_LOCATION_KEYS = ("backbone", "model_path")
_FILE_SUFFIXES = ("_file", "_dir", "_path", "_folder")
_URL_SUFFIXES = ("url", "_base", "endpoint", "host")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class LoadOptions:
    """What the loading user decides when a checkpoint is opened.

    Parameters
    ----------
    embedder_base_url: API root for an ``openai`` embedder (None: api.openai.com).
    embedder_api_key_env: the environment variable holding its key (None: OPENAI_API_KEY).
    backbone: the base model (``backbone`` / ``model_path``) for a neural router or
        encoder, e.g. when the checkpoint holds only an adapter (None: the checkpoint's, if
        bundled or inside the folder).
    trust_checkpoint_endpoints: use the endpoint and key variable the checkpoint records.
    """

    embedder_base_url: str | None = None
    embedder_api_key_env: str | None = None
    backbone: str | None = None
    trust_checkpoint_endpoints: bool = False

    @classmethod
    def resolve(cls, **options: Any) -> LoadOptions:
        """Arguments first, then ``PREFROUTE_*`` environment variables."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise CheckpointError(
                f"unknown load options {unknown}; known: {sorted(cls.__dataclass_fields__)}"
            )
        env = {
            "embedder_base_url": os.environ.get("PREFROUTE_EMBEDDER_BASE_URL") or None,
            "embedder_api_key_env": os.environ.get("PREFROUTE_EMBEDDER_API_KEY_ENV") or None,
            "backbone": os.environ.get("PREFROUTE_BACKBONE") or None,
            "trust_checkpoint_endpoints": _env_flag("PREFROUTE_TRUST_CHECKPOINT_ENDPOINTS"),
        }
        merged = {k: options[k] if options.get(k) is not None else v for k, v in env.items()}
        return cls(**merged)


def sanitize_config(directory: Path, config: dict[str, Any], options: LoadOptions) -> dict:
    """A copy of ``config`` that decides nothing the loading user did not (see module doc)."""
    return _walk(config, Path(directory), options, path="")


def _walk(value: Any, directory: Path, options: LoadOptions, *, path: str) -> Any:
    if isinstance(value, list):
        return [_walk(v, directory, options, path=f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    openai_spec = value.get("name") == "openai" and isinstance(value.get("params"), dict)
    clean: dict[str, Any] = {}
    for key, item in value.items():
        field = f"{path}.{key}" if path else str(key)
        if openai_spec and key == "params":
            clean[key] = _openai_params(item, directory, options, field)
            continue
        if isinstance(key, str) and isinstance(item, str):
            item = _check_string(key, item, directory, options, field)
        clean[key] = _walk(item, directory, options, path=field)
    return clean


def _openai_params(
    params: dict[str, Any], directory: Path, options: LoadOptions, path: str
) -> dict[str, Any]:
    if options.trust_checkpoint_endpoints:
        return dict(params)
    where = directory / CONFIG_NAME
    recorded_url = params.get("base_url")
    if recorded_url is not None and options.embedder_base_url is None:
        raise CheckpointError(
            f"{where}: {path}.base_url: the checkpoint's openai embedder names an "
            "endpoint, which a checkpoint may not choose. Pass embedder_base_url=... "
            "(or set PREFROUTE_EMBEDDER_BASE_URL) to the server you trust, or "
            "trust_checkpoint_endpoints=True if you trust whoever made this checkpoint"
        )
    key_env = options.embedder_api_key_env or DEFAULT_API_KEY_ENV
    if params.get("api_key_env") not in (None, key_env):
        logger.warning(
            "%s: ignoring the checkpoint's API-key variable name; the key is read from %s",
            where,
            key_env,
        )
    return {
        **params,
        "base_url": options.embedder_base_url,
        "api_key_env": key_env,
    }


def _check_string(
    key: str, value: str, directory: Path, options: LoadOptions, field: str
) -> str:
    where = directory / CONFIG_NAME
    lowered = key.lower()
    if key in _LOCATION_KEYS:
        return _location(key, value, directory, options, field)
    if lowered.endswith(_FILE_SUFFIXES):
        return str(inside(directory, value, field=field))
    if lowered.endswith("_env") and not options.trust_checkpoint_endpoints:
        raise CheckpointError(
            f"{where}: {field} names the environment variable {value!r}; a checkpoint may "
            "not choose which environment variables are read"
        )
    if lowered.endswith(_URL_SUFFIXES) and not options.trust_checkpoint_endpoints:
        raise CheckpointError(
            f"{where}: {field} names a network address; a checkpoint may not choose "
            "endpoints (pass trust_checkpoint_endpoints=True if you trust its author)"
        )
    return value


def _location(key: str, value: str, directory: Path, options: LoadOptions, field: str) -> str:
    if options.backbone is not None:  # the user's base model wins, wherever it is named
        return options.backbone
    if value.startswith("bundled:"):
        return value
    candidate = Path(value)
    if not candidate.is_absolute():
        resolved = (directory.resolve() / candidate).resolve()
        inside_folder = resolved.is_relative_to(directory.resolve())
        if inside_folder and resolved != directory.resolve() and resolved.is_dir():
            return str(resolved)
    hint = "pass backbone=... (or set PREFROUTE_BACKBONE) to the base model you trust"
    raise CheckpointError(
        f"{directory / CONFIG_NAME}: {field} {value!r} is neither a bundled model nor an "
        f"existing folder inside the checkpoint; a checkpoint may not choose files or "
        f"downloads elsewhere: {hint}"
    )
