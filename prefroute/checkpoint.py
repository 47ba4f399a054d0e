"""Checkpoint folders: config.json + safetensors (+ other plain files). Never pickle."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.errors import CheckpointError

CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "model.safetensors"


def write_config(directory: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` (with the format version) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"prefroute_version": CHECKPOINT_VERSION, **config}
    path = directory / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def read_config(directory: str | Path, *, expected_type: str | None = None) -> dict[str, Any]:
    """Read and check ``config.json``; every failure says what is wrong and where."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    path = directory / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a prefroute checkpoint")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e}); the checkpoint is corrupted"
        ) from None
    if not isinstance(config, dict) or "type" not in config:
        raise CheckpointError(f"{path} has no 'type' key: not a prefroute router checkpoint")
    version = config.get("prefroute_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this prefroute reads "
            f"version {CHECKPOINT_VERSION}"
        )
    if expected_type is not None and config["type"] != expected_type:
        raise CheckpointError(
            f"{path} holds a {config['type']!r} router, not {expected_type!r}; load it with "
            "prefroute.load_router or the matching class"
        )
    return config


def save_tensors(
    directory: str | Path, tensors: dict[str, np.ndarray], name: str = TENSORS_NAME
) -> None:
    """Write numpy arrays to a safetensors file."""
    from safetensors.numpy import save_file

    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(Path(directory) / name))


def load_tensors(
    directory: str | Path, expected: Iterable[str] | None = None, name: str = TENSORS_NAME
) -> dict[str, np.ndarray]:
    """Read a safetensors file; with ``expected``, name missing and unexpected keys."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(directory) / name
    if not path.exists():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if expected is not None:
        expected = set(expected)
        missing = sorted(expected - tensors.keys())
        unexpected = sorted(tensors.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not match the router: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
    return tensors


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in config.json")
