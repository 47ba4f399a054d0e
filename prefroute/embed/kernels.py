"""Compiled loops (numba, GIL released) for the segment tokenizer and mean pooling.

Each loop replaces several whole-array numpy passes with one pass that keeps its running
values in registers, and runs without the GIL, so the scoring threads of ``prefroute score``
use both cores. Compiled code is cached on disk (numba's ``cache=True``: ``__pycache__``
beside this file, else the user's cache folder, or ``NUMBA_CACHE_DIR``): a process loads it
(~0.1 s) instead of compiling it again (~3 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit


def _compiled(function: Callable) -> Callable:
    """``function`` compiled without the GIL, cached on disk where numba finds a writable
    folder; where it finds none (a read-only install and home), compiled in each process."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)


_EMPTY = -1
# Fibonacci hashing: the top bits of hash * this constant index the open-addressing table.
_SPREAD = np.uint64(0x9E3779B97F4A7C15)


@_compiled
def segment_hashes(
    codes: np.ndarray,
    text_starts: np.ndarray,
    small_of_bmp: np.ndarray,
    cuttable: np.ndarray,
    alphabet: int,
    other: int,
    base: np.uint64,
    length_mix: np.uint64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start, length and hash of every segment of ``codes`` (code points of the joined texts),
    and the index of each text's first segment.

    A segment starts at every text start and between every pair of characters no
    vocabulary piece holds next to each other (``cuttable``, indexed by small-alphabet
    pair). Its hash is sum(code[k] * base**(k - start)) modulo 2**64, xor length * length_mix.
    """
    n = len(codes)
    starts = np.empty(n, np.int64)
    hashes = np.empty(n, np.uint64)
    first_segment = np.empty(len(text_starts), np.int64)
    count = 0
    next_text = 0
    next_text_start = text_starts[0] if len(text_starts) else n
    previous_small = other
    h = np.uint64(0)
    power = np.uint64(1)
    start = 0
    for i in range(n):
        code = codes[i]
        small = other if code > 0xFFFF else small_of_bmp[code]
        if i == next_text_start:
            cut = True
            first_segment[next_text] = count
            next_text += 1
            next_text_start = text_starts[next_text] if next_text < len(text_starts) else n
        else:
            cut = i == 0 or cuttable[previous_small * alphabet + small]
        if cut:
            start = i
            starts[count] = i
            count += 1
            h = np.uint64(0)
            power = np.uint64(1)
        h += np.uint64(code) * power
        power *= base
        # written at every character; the last write of a segment is its hash
        hashes[count - 1] = h ^ (np.uint64(i + 1 - start) * length_mix)
        previous_small = small
    lengths = np.empty(count, np.int64)
    for s in range(count - 1):
        lengths[s] = starts[s + 1] - starts[s]
    if count > 0:
        lengths[count - 1] = n - starts[count - 1]
    return starts[:count], lengths, hashes[:count], first_segment


@_compiled
def contains_any(codes: np.ndarray, patterns: np.ndarray, pattern_starts: np.ndarray) -> bool:
    """Whether ``codes`` holds any of the patterns (``patterns[pattern_starts[k]:
    pattern_starts[k + 1]]``, each non-empty) as a substring."""
    for i in range(len(codes)):
        for k in range(len(pattern_starts) - 1):
            a, b = pattern_starts[k], pattern_starts[k + 1]
            if codes[i] != patterns[a] or i + b - a > len(codes):
                continue
            match = True
            for j in range(1, b - a):
                if codes[i + j] != patterns[a + j]:
                    match = False
                    break
            if match:
                return True
    return False


@_compiled
def join_segments(
    codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, per_chunk: int, separator: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The code points of the given segments, ``per_chunk`` at a time joined by
    ``separator`` (chunks back to back), the end of each chunk, and whether any segment
    holds the separator itself."""
    chunks = (len(starts) + per_chunk - 1) // per_chunk
    out = np.empty(lengths.sum() + len(starts), np.uint32)
    chunk_ends = np.empty(chunks, np.int64)
    position = 0
    clash = False
    for s in range(len(starts)):
        if s % per_chunk != 0:
            out[position] = separator
            position += 1
        for k in range(lengths[s]):
            code = codes[starts[s] + k]
            clash |= code == separator
            out[position] = code
            position += 1
        if (s + 1) % per_chunk == 0 or s + 1 == len(starts):
            chunk_ends[s // per_chunk] = position
    return out[:position], chunk_ends, clash


@_compiled
def table_lookup(
    keys: np.ndarray, values: np.ndarray, hashes: np.ndarray, bits: int
) -> np.ndarray:
    """Value stored for each hash in the open-addressing table (``keys``, ``values``: 2**bits
    entries), or -1."""
    mask = len(keys) - 1
    shift = np.uint64(64 - bits)
    out = np.empty(len(hashes), np.int64)
    for i in range(len(hashes)):
        h = hashes[i]
        j = np.int64((h * _SPREAD) >> shift)
        while True:
            v = values[j]
            if v == _EMPTY or keys[j] == h:
                out[i] = v
                break
            j = (j + 1) & mask
    return out


@_compiled
def table_insert(
    keys: np.ndarray, values: np.ndarray, hashes: np.ndarray, first: int, bits: int
) -> None:
    """Store ``first + i`` for ``hashes[i]`` (absent from the table, distinct)."""
    mask = len(keys) - 1
    shift = np.uint64(64 - bits)
    for i in range(len(hashes)):
        h = hashes[i]
        j = np.int64((h * _SPREAD) >> shift)
        while values[j] != _EMPTY:
            j = (j + 1) & mask
        keys[j] = h
        values[j] = first + i


@_compiled
def gather_text_tokens(
    slots: np.ndarray,
    token_starts: np.ndarray,
    token_counts: np.ndarray,
    tokens: np.ndarray,
    first_segment: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Every segment's cached tokens, concatenated, and each text's token count (text t owns
    the segments from ``first_segment[t]`` to the next text's first)."""
    total = 0
    for s in range(len(slots)):
        total += token_counts[slots[s]]
    flat = np.empty(total, np.int64)
    counts = np.zeros(len(first_segment), np.int64)
    position = 0
    for t in range(len(first_segment)):
        end = first_segment[t + 1] if t + 1 < len(first_segment) else len(slots)
        text_start = position
        for s in range(first_segment[t], end):
            slot = slots[s]
            start = token_starts[slot]
            for k in range(token_counts[slot]):
                flat[position] = tokens[start + k]
                position += 1
        counts[t] = position - text_start
    return flat, counts


@_compiled
def mean_rows(
    table: np.ndarray, ids: np.ndarray, offsets: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Mean of ``table`` rows ``ids[offsets[i]:offsets[i] + counts[i]]`` for each i (zeros
    where a count is 0), accumulated in token order as 1/n-weighted float32 sums, which is
    what a sparse 1/n-weighted bag-of-ids product gives, bit for bit."""
    dim = table.shape[1]
    out = np.zeros((len(counts), dim), np.float32)
    for i in range(len(counts)):
        n = counts[i]
        if n == 0:
            continue
        weight = np.float32(1.0 / n)
        row_sum = out[i]
        for k in range(offsets[i], offsets[i] + n):
            row = table[ids[k]]
            for d in range(dim):
                row_sum[d] += weight * row[d]
    return out


def warm_up_segments(
    small_of_bmp: np.ndarray, cuttable: np.ndarray, alphabet: int, other: int
) -> None:
    """Load (or compile, the first time) the segment tokenizer's loops for the argument types
    it uses, so that cost falls at start-up rather than inside the first large batch."""
    # read-only, like the codes the tokenizer takes from a str's bytes (numba compiles
    # read-only and writable arrays apart)
    codes = np.frombuffer(np.array([0x2581, 0x61, 0x62], np.uint32).tobytes(), np.uint32)
    starts, lengths, hashes, first = segment_hashes(
        codes, np.zeros(1, np.int64), small_of_bmp, cuttable, alphabet, other, np.uint64(3),
        np.uint64(5),
    )
    contains_any(codes, codes, np.array([0, 1], np.int64))
    join_segments(codes, starts, lengths, 2, 0)
    keys, values = np.zeros(4, np.uint64), np.full(4, -1, np.int64)
    table_insert(keys, values, hashes, 0, 2)
    slots = table_lookup(keys, values, hashes, 2)
    zeros = np.zeros(len(slots), np.int64)
    gather_text_tokens(slots, zeros, zeros + 1, zeros, first)


def warm_up_pooling(table: np.ndarray) -> None:
    """Load (or compile) ``mean_rows`` for ``table``'s type."""
    mean_rows(table, np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.int64))
