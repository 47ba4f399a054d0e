"""Checkpoint folders: config.json + safetensors (+ other plain files). Never pickle.

A checkpoint is data. Reading one checks ``config.json`` before parsing it (a regular file,
bounded size and nesting), verifies the sha256 of every file recorded at save time, checks
that tensors are finite, and resolves every file name a config gives inside the folder.
What a config may *not* choose (endpoints, environment variables, backbones outside the
folder) is enforced by ``prefroute.checkpoint_policy``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.errors import CheckpointError, TrainingError
from prefroute.io import atomic_write_text

CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "model.safetensors"
FILES_KEY = "files"  # {relative path: sha256} of every file but config.json
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_CONFIG_DEPTH = 64
_HASH_CHUNK = 1 << 20


def write_config(directory: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` (with the format version) into ``directory``, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"prefroute_version": CHECKPOINT_VERSION, **config}
    path = directory / CONFIG_NAME
    atomic_write_text(
        path, json.dumps(config, indent=2, sort_keys=False, default=_json_default) + "\n"
    )
    return path


def read_config(directory: str | Path, *, expected_type: str | None = None) -> dict[str, Any]:
    """Read and check ``config.json``; every failure says what is wrong and where."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    path = directory / CONFIG_NAME
    if not os.path.lexists(path):
        raise CheckpointError(f"{path} is missing: {directory} is not a prefroute checkpoint")
    text = _read_regular_file(path, MAX_CONFIG_BYTES)
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e}); the checkpoint is corrupted"
        ) from None
    except RecursionError:
        config = None  # reported as too deeply nested just below
    if config is None or _depth(config) > MAX_CONFIG_DEPTH:
        raise CheckpointError(
            f"{path} is nested more than {MAX_CONFIG_DEPTH} levels deep; not a prefroute config"
        )
    if not isinstance(config, dict) or "type" not in config:
        raise CheckpointError(f"{path} has no 'type' key: not a prefroute router checkpoint")
    if not isinstance(config["type"], str):
        raise CheckpointError(
            f"{path}: 'type' must be a router name, got {type(config['type']).__name__}"
        )
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


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a link, FIFO or device) <= max_bytes."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(
                f"{path} is not a regular file (a link, FIFO or device); refusing to read it"
            )
        # O_NONBLOCK: a file swapped for a FIFO after the check cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path} is not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise CheckpointError(
                f"{path} is {info.st_size:,} bytes; a checkpoint config is at most "
                f"{max_bytes:,} bytes"
            )
        return handle.read(max_bytes + 1)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile config can be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_CONFIG_DEPTH:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, (dict, list)):
            children = ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def inside(directory: str | Path, name: object, *, field: str) -> Path:
    """The path ``name`` (from a config) names inside ``directory``; anything else is refused.

    Refused: non-strings, absolute paths, ``..`` and links that lead out of the folder.
    """
    directory = Path(directory)
    where = directory / CONFIG_NAME
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{where}: {field} must be a file name inside the checkpoint, "
                              f"got {name!r}")
    candidate = Path(name)
    root = directory.resolve()
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root) or resolved == root:
        raise CheckpointError(
            f"{where}: {field} {name!r} lies outside the checkpoint folder; a checkpoint may "
            "only name its own files"
        )
    return resolved


# file checksums ------------------------------------------------------------------------
def file_digests(directory: str | Path) -> dict[str, str]:
    """sha256 of every regular file under ``directory`` except config.json (posix paths)."""
    directory = Path(directory)
    digests = {}
    for path in sorted(_walk_files(directory)):
        relative = path.relative_to(directory).as_posix()
        if relative != CONFIG_NAME:
            digests[relative] = _sha256(path)
    return digests


def _walk_files(directory: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise CheckpointError(
                    f"{path} is a link or special file; a checkpoint holds only plain files"
                )
            if stat.S_ISREG(mode):
                yield path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(directory: str | Path, config: dict[str, Any]) -> None:
    """Check the folder against the checksums recorded at save time, and tensors are finite.

    Every file in the folder (config.json aside) must be recorded with a matching sha256,
    and nothing recorded may be missing; links and special files are refused.
    """
    directory = Path(directory)
    where = directory / CONFIG_NAME
    recorded = config.get(FILES_KEY)
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()
    ):
        raise CheckpointError(
            f"{where}: '{FILES_KEY}' (the sha256 of each file, written at save time) is missing "
            "or malformed; re-save the checkpoint with this prefroute"
        )
    present = {p.relative_to(directory).as_posix(): p for p in _walk_files(directory)}
    present.pop(CONFIG_NAME, None)
    missing = sorted(set(recorded) - set(present))
    unrecorded = sorted(set(present) - set(recorded))
    if missing or unrecorded:
        raise CheckpointError(
            f"{directory}: files do not match config.json '{FILES_KEY}': missing {missing}, "
            f"not recorded {unrecorded}"
        )
    for relative, path in sorted(present.items()):
        if _sha256(path) != recorded[relative]:
            raise CheckpointError(
                f"{path}: sha256 does not match the one recorded at save time; the file was "
                "changed or corrupted"
            )
        if path.suffix == ".safetensors":
            _check_finite_file(path)


_TORCH_ONLY_DTYPES = {"BF16", "F8_E4M3", "F8_E5M2"}


def _check_finite_file(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        # numpy reads every dtype but bfloat16 / float8; only those files need torch (whose
        # import costs seconds, so loading an mf or sw_bt router stays torch-free)
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())  # noqa: SIM118 - safe_open is not a mapping
            dtypes = {handle.get_slice(key).get_dtype() for key in keys}
            if not dtypes & _TORCH_ONLY_DTYPES:
                for key in keys:
                    array = handle.get_tensor(key)
                    if array.dtype.kind in "fc" and not np.isfinite(array).all():
                        raise CheckpointError(
                            f"{path}: tensor {key!r} holds NaN or infinite values"
                        )
                return
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                    raise CheckpointError(
                        f"{path}: tensor {key!r} holds NaN or infinite values"
                    )
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


# tensors -------------------------------------------------------------------------------
def check_finite_state(tensors: dict[str, Any], owner: str) -> None:
    """Raise TrainingError if a float tensor of a freshly trained model is NaN or infinite."""
    for key, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise TrainingError(
                f"{owner}: training produced {int((~np.isfinite(array)).sum())} NaN or "
                f"infinite values in {key!r} (diverged: lower the learning rate, check the "
                "weights of the data); nothing was saved"
            )


def save_tensors(
    directory: str | Path, tensors: dict[str, np.ndarray], name: str = TENSORS_NAME
) -> None:
    """Write numpy arrays to a safetensors file (finite values only)."""
    from safetensors.numpy import save_file

    check_finite_state(tensors, str(Path(directory) / name))
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(Path(directory) / name))


def load_tensors(
    directory: str | Path, expected: Iterable[str] | None = None, name: str = TENSORS_NAME
) -> dict[str, np.ndarray]:
    """Read a safetensors file; with ``expected``, name missing and unexpected keys."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(directory) / name
    if not path.is_file():
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
    for key, array in tensors.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return tensors


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in config.json")


def is_checkpoint_folder(directory: str | Path) -> bool:
    """Whether ``directory`` holds a prefroute checkpoint (so replacing it loses no user file)."""
    path = Path(directory) / CONFIG_NAME
    try:
        return '"prefroute_version"' in _read_regular_file(path, MAX_CONFIG_BYTES).decode(
            "utf-8", "replace"
        )
    except CheckpointError:
        return False


def save_checkpoint(
    directory: str | Path,
    config: dict[str, Any],
    write_files: Any,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint folder atomically: files go to a temporary sibling, are hashed into
    config.json, and the folder is renamed into place only once complete.

    ``write_files(folder)`` writes everything but config.json. An existing non-empty folder
    is replaced only with ``overwrite`` or when it is itself a prefroute checkpoint.
    """
    from prefroute.io import staged_output_dir

    directory = Path(directory)
    replace = overwrite or is_checkpoint_folder(directory)
    with staged_output_dir(directory, overwrite=replace) as stage:
        write_files(stage)
        for path in sorted(stage.rglob("*.safetensors")):  # e.g. a fine-tuned transformer
            try:
                _check_finite_file(path)
            except CheckpointError as e:
                raise TrainingError(f"{e}; nothing was saved") from None
        config = {**config, FILES_KEY: file_digests(stage)}
        write_config(stage, config)
    return directory


def record_files(directory: str | Path) -> None:
    """Re-hash a checkpoint we are writing after adding a companion file (e.g. a split)."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    config.pop("prefroute_version", None)
    config[FILES_KEY] = file_digests(directory)
    write_config(directory, config)
