"""The compiled loops of prefroute.embed.kernels against plain numpy/scipy references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from prefroute.embed import kernels
from prefroute.embed.segment_tokenizer import (
    _ALPHABET,
    _HASH_BASE,
    _LENGTH_MIX,
    _OTHER,
    _SMALL_OF_BMP,
)

REPO = Path(__file__).resolve().parents[1]


def _reference_segments(codes: np.ndarray, text_starts: np.ndarray, cuttable: np.ndarray):
    """Cut points and hashes computed the slow, obvious way."""
    small = [_OTHER if c > 0xFFFF else int(_SMALL_OF_BMP[c]) for c in codes.tolist()]
    starts = [
        i for i in range(len(codes))
        if i == 0 or i in set(text_starts.tolist()) or cuttable[small[i - 1] * _ALPHABET + small[i]]
    ]
    ends = starts[1:] + [len(codes)]
    hashes = []
    for a, b in zip(starts, ends):
        h = sum(int(c) * pow(_HASH_BASE, k, 1 << 64) for k, c in enumerate(codes[a:b].tolist()))
        hashes.append((h % (1 << 64)) ^ ((b - a) * int(_LENGTH_MIX) % (1 << 64)))
    first = [starts.index(t) for t in text_starts.tolist()]
    return starts, [b - a for a, b in zip(starts, ends)], hashes, first


@pytest.mark.parametrize("seed", range(5))
def test_segment_hashes_match_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = [0x2581, 0x61, 0x62, 0x2E, 0x0A, 0xE9, 0x4E2D, 0x1F600, 0x20]
    codes = rng.choice(alphabet, size=300).astype(np.uint32)
    text_starts = np.unique(np.concatenate([[0], rng.integers(1, 300, size=6)])).astype(np.int64)
    cuttable = rng.random(_ALPHABET * _ALPHABET) < 0.4
    starts, lengths, hashes, first = kernels.segment_hashes(
        codes, text_starts, _SMALL_OF_BMP, cuttable, _ALPHABET, _OTHER,
        np.uint64(_HASH_BASE), _LENGTH_MIX,
    )
    expected = _reference_segments(codes, text_starts, cuttable)
    assert starts.tolist() == expected[0]
    assert lengths.tolist() == expected[1]
    assert hashes.tolist() == expected[2]
    assert first.tolist() == expected[3]


def test_hash_table_finds_every_key_and_only_those() -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, size=3_000, dtype=np.int64).astype(np.uint64))
    # a small table, kept under half full as the tokenizer keeps it: many probes collide
    bits = 13
    table_keys, table_slots = np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64)
    kernels.table_insert(table_keys, table_slots, keys[:2_000], 0, bits)
    kernels.table_insert(table_keys, table_slots, keys[2_000:2_500], 2_000, bits)
    found = kernels.table_lookup(table_keys, table_slots, keys, bits)
    assert found[:2_500].tolist() == list(range(2_500))
    assert (found[2_500:] == -1).all()


def test_mean_rows_equals_the_sparse_product_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    table = rng.standard_normal((500, 64)).astype(np.float32)
    counts = rng.integers(0, 40, size=200).astype(np.int64)
    counts[:3] = [0, 1, 0]
    ids = rng.integers(0, 500, size=int(counts.sum())).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    weights = np.repeat((1.0 / np.maximum(counts, 1)).astype(np.float32), counts)
    indptr = np.concatenate([offsets, [len(ids)]])
    bag = sparse.csr_matrix((weights, ids, indptr), shape=(len(counts), len(table)))
    expected = np.asarray(bag @ table, dtype=np.float32)
    got = kernels.mean_rows(table, ids, offsets, counts)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_join_segments_builds_separated_chunks() -> None:
    codes = np.frombuffer("▁ab▁cd.e\x00f".encode("utf-32-le"), np.uint32)
    starts, lengths = np.array([0, 3, 6, 7], np.int64), np.array([3, 3, 1, 1], np.int64)
    joined, ends, clash = kernels.join_segments(codes, starts, lengths, 3, 0)
    text = joined.tobytes().decode("utf-32-le")
    assert text == "▁ab\x00▁cd\x00.e" and ends.tolist() == [9, 10] and not clash
    _, _, clash = kernels.join_segments(codes, np.array([8], np.int64), np.ones(1, np.int64), 3, 0)
    assert clash  # the segment holds the separator itself


def test_contains_any() -> None:
    codes = np.frombuffer("▁a</s>b".encode("utf-32-le"), np.uint32)
    patterns = np.frombuffer("<s></s><unk>".encode("utf-32-le"), np.uint32)
    assert kernels.contains_any(codes, patterns, np.array([0, 3, 7, 12], np.int64))
    assert not kernels.contains_any(codes, patterns, np.array([0, 3], np.int64))
    assert not kernels.contains_any(codes[:4], patterns, np.array([0, 3, 7, 12], np.int64))


def test_the_loops_run_where_numba_cannot_cache(tmp_path: Path) -> None:
    """With no writable cache folder numba refuses ``cache=True`` at import; the loops are
    then compiled in the process and give the same vectors."""
    code = (
        "import numpy as np, sys\n"
        "from prefroute.embed import WordLlamaEmbedder\n"
        "texts = ['Route this prompt to the cheaper model.', 'x' * 40, 'é 中 😀'] * 3\n"
        "np.save(sys.argv[1], WordLlamaEmbedder().encode(texts))\n"
    )
    outputs = {}
    for name, locators in (("cached", None), ("uncached", "IPythonCacheLocator")):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
        if locators:  # a locator that never applies outside IPython: no cache folder at all
            env["NUMBA_CACHE_LOCATOR_CLASSES"] = locators
        out = tmp_path / f"{name}.npy"
        subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, env=env, check=True,
                       capture_output=True, timeout=600)
        outputs[name] = np.load(out)
    assert np.array_equal(outputs["cached"], outputs["uncached"])
