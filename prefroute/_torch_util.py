"""Small torch helpers shared by the torch-based routers (torch is imported lazily)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, restoring the process setting afterwards."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _load_malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give memory that CPU tensors freed back to the OS (glibc ``malloc_trim``).

    Forward passes over inputs of changing shapes leave glibc's heap fragmented, and it keeps
    the freed pages: scoring MMLU with bert grew ~0.25 GB per 1,024 prompts without this and
    stayed flat with it (benchmarks/RESULTS.md, issue 19). A no-op where libc has no trim.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
