"""Fingerprints of a router's training prompts, kept in its checkpoint.

So that evaluation can leave out a router's own training prompts by default, even when the
checkpoint does not say where its battles came from. A fingerprint is the first 8 bytes of
BLAKE2b over the prompt with case and whitespace normalised, stored sorted as uint64 in
``training_prompts.safetensors``: the prompts themselves are not stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prefroute.checkpoint import load_tensors, save_tensors
from prefroute.errors import CheckpointError

FINGERPRINT_FILE = "training_prompts.safetensors"


def _fingerprint(prompt: str) -> int:
    text = " ".join(prompt.split()).casefold().encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def prompt_fingerprints(prompts: Sequence[str]) -> np.ndarray:
    """Sorted distinct uint64 fingerprints of ``prompts``."""
    return np.unique(np.fromiter((_fingerprint(p) for p in prompts), dtype=np.uint64,
                                 count=len(prompts)))


def contains(fingerprints: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """Boolean mask: which ``prompts`` have a fingerprint in ``fingerprints``."""
    if len(prompts) == 0 or fingerprints is None or len(fingerprints) == 0:
        return np.zeros(len(prompts), dtype=bool)
    each = np.fromiter((_fingerprint(p) for p in prompts), dtype=np.uint64, count=len(prompts))
    pos = np.minimum(np.searchsorted(fingerprints, each), len(fingerprints) - 1)
    return fingerprints[pos] == each


def save_fingerprints(directory: str | Path, fingerprints: np.ndarray) -> None:
    save_tensors(directory, {"fingerprints": fingerprints}, name=FINGERPRINT_FILE)


def load_fingerprints(directory: str | Path) -> np.ndarray | None:
    """The stored fingerprints, or None for a checkpoint written without them."""
    if not (Path(directory) / FINGERPRINT_FILE).exists():
        return None
    values = load_tensors(directory, ["fingerprints"], name=FINGERPRINT_FILE)["fingerprints"]
    if values.dtype != np.uint64 or values.ndim != 1 or (np.diff(values) <= 0).any():
        raise CheckpointError(f"{Path(directory) / FINGERPRINT_FILE}: fingerprints must be a "
                              "sorted 1-D uint64 array without repeats")
    return values
