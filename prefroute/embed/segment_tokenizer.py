"""Exact, vectorised tokenisation of whole batches for Llama-style SentencePiece BPE.

WordLlama's tokenizer (the Llama-2 vocabulary) replaces spaces with "▁", prepends one "▁" and
runs BPE over the *whole* text as a single word, so the Rust tokenizer cannot reuse work
between the words of a text or between texts: most of an embedding's cost is BPE merging.

A text may be cut between two characters that no vocabulary piece holds next to each other
("d▁", "e\\n", ".\\n", ...): no merge can join them, so the two sides tokenise independently and
their tokens concatenate to the text's tokens. Cut at every such point, a text falls into
short *segments* ("▁the", "▁answer", ".", "\\n") that repeat across texts, so
``SegmentTokenizer`` tokenises each distinct segment once with the real tokenizer and
afterwards finds its tokens in compiled loops (``prefroute.embed.kernels``, no GIL): cut points
from a character-pair table and a 64-bit polynomial hash per segment in one pass, an
open-addressing hash-table lookup, and a gather. Python runs per *new* segment, never per
segment occurrence. ``tests/test_embed.py`` checks that every prompt
of the shared data gets exactly the token ids of the tokenizer it wraps.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

SPACE = "▁"
_SPACE_CODE = ord(SPACE)
# Segments longer than this are tokenised on every call instead of being cached: they are rare
# (URLs, base64, long code lines) and leaving them out bounds the hash's collision risk, which
# for a polynomial hash modulo 2**64 grows with length.
MAX_CACHED_SEGMENT_CHARS = 64
# Distinct segments cached before the cache is emptied (see SegmentTokenizer): measured, the
# bench_score_cli RSS series grew 0.5 GB per million prompts with a 2M limit and two workers.
DEFAULT_MAX_SEGMENTS = 262_144
# New segments are tokenised this many at a time, joined by SEPARATOR (see _segment_tokens).
SEGMENTS_PER_CHUNK = 256
SEPARATOR = "\x00"
_SEPARATOR_CODE = ord(SEPARATOR)
# Entries of a fresh segment table (it doubles as the cache grows, kept at most half full).
MIN_TABLE_SIZE = 1 << 16
# Calls with at most this many texts take the word-dict path (see _encode_few), whose cache
# holds at most MAX_CACHED_WORDS words (~150 bytes each).
FEW_TEXTS = 4
MAX_CACHED_WORDS = 200_000
_WORD = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")
# Texts are processed in slices of about this many characters, which bounds the hash arrays.
MAX_CHARS_PER_PASS = 1 << 20
_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_LENGTH_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
# Characters are mapped to a small alphabet for the pair table: Latin-1 keeps its code, "▁"
# is 256, every other character 257 ("may join anything", which only means fewer cuts).
_SPACE_SMALL, _OTHER, _ALPHABET = 256, 257, 258
_SMALL_OF_BMP = np.full(1 << 16, _OTHER, dtype=np.int32)
_SMALL_OF_BMP[:256] = np.arange(256)
_SMALL_OF_BMP[_SPACE_CODE] = _SPACE_SMALL
EXPECTED_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
    ],
}


def compiled_loops() -> Any:
    """``prefroute.embed.kernels``, imported on first use: numba costs ~0.2 s to import, which
    ``import prefroute`` and embedders that are only built need not pay."""
    from prefroute.embed import kernels

    return kernels


def supports_segment_tokenization(tokenizer: Any) -> bool:
    """Whether ``SegmentTokenizer`` reproduces ``tokenizer`` (a ``tokenizers.Tokenizer``) exactly.

    True for a BPE model with the Llama "prepend ▁, spaces to ▁" normaliser and no
    pre-tokeniser, where merges are deterministic (no dropout) and NUL, in no piece, falls
    back to its byte token.
    """
    config = json.loads(tokenizer.to_str())
    if config.get("normalizer") != EXPECTED_NORMALIZER or config.get("pre_tokenizer") is not None:
        return False
    model = config.get("model", {})
    if model.get("type") != "BPE" or model.get("dropout") or not model.get("byte_fallback"):
        return False
    vocab = model["vocab"]
    return "<0x00>" in vocab and not any(SEPARATOR in piece for piece in vocab)


@dataclass
class TokenBatch:
    """Token ids of a batch of texts, flat: text i owns ``counts[i]`` ids from ``offsets[i]``."""

    ids: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    def to_lists(self) -> list[list[int]]:
        bounds = zip(self.offsets.tolist(), self.counts.tolist())
        return [self.ids[o : o + c].tolist() for o, c in bounds]


class SegmentTokenizer:
    """Batch tokeniser that caches the tokens of each distinct segment (see module docstring).

    Parameters
    ----------
    tokenizer: the ``tokenizers.Tokenizer`` to reproduce; ``supports_segment_tokenization``
        must hold for it.
    max_tokens: keep the first ``max_tokens`` tokens of each text (None: all).
    max_segments: the cache is emptied when it would hold more distinct segments than this,
        which bounds memory on endless streams of new text (ids, numbers, names). A segment
        costs about 200 bytes of RSS with its index, so the default holds ~55 MB per process;
        20,000 MMLU-Pro prompts hold 45k segments.
    """

    def __init__(
        self, tokenizer: Any, *, max_tokens: int | None = None,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        from tokenizers import Tokenizer

        if not supports_segment_tokenization(tokenizer):
            raise ValueError(
                "SegmentTokenizer needs a Llama-style SentencePiece BPE tokenizer "
                "(see supports_segment_tokenization)."
            )
        self.max_tokens = max_tokens
        self.max_segments = max_segments
        self._reference = Tokenizer.from_str(tokenizer.to_str())
        self._reference.no_padding()
        self._reference.no_truncation()
        # Segments arrive already normalised, so the segment tokenizer skips the normaliser.
        self._segment_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._segment_tokenizer.normalizer = None
        self._segment_tokenizer.no_padding()
        self._segment_tokenizer.no_truncation()
        # Texts containing an added token ("<s>", "</s>", "<unk>") are split around it before
        # normalisation, which segmenting does not mimic: those go to the reference tokenizer.
        self._added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._added_codes = _pattern_codes([a for a in self._added if a])
        vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
        self._cuttable = ~_joinable_pairs(vocab)
        self._separator_id = vocab["<0x00>"]
        # Cutting before a "▁" that follows another character is one of the cuts above; the
        # few-texts path makes only those, with a regex, when the vocabulary allows them.
        self._word_cuts_exact = not any(SPACE in piece.lstrip(SPACE) for piece in vocab)
        self._lock = threading.RLock()
        self._generation = 0  # bumped by every clear
        self.clear()
        # loaded (or compiled, the first time) now rather than inside the first large batch
        compiled_loops().warm_up_segments(_SMALL_OF_BMP, self._cuttable, _ALPHABET, _OTHER)

    def clear(self) -> None:
        """Forget every cached segment."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        # Slot s of the cache is the s-th segment added; an open-addressing table maps each
        # cached segment's hash to its slot.
        self._hashes = _GrowingArray(np.uint64)
        self._token_starts = _GrowingArray(np.int64)
        self._token_counts = _GrowingArray(np.int64)
        self._tokens = _GrowingArray(np.int64)
        self._words: dict[str, tuple[int, ...]] = {}
        self._generation += 1
        self._table_keys, self._table_slots, self._table_bits = _empty_table(MIN_TABLE_SIZE)

    @property
    def cached_segments(self) -> int:
        return len(self._token_counts)

    def encode_batch(self, texts: list[str]) -> TokenBatch:
        """Token ids of ``texts`` (no special tokens), identical to the wrapped tokenizer's.

        Thread-safe; concurrent calls share the cache and overlap everything but the cache
        lookup itself (the compiled loops release the GIL), so two threads use two cores.
        """
        if len(texts) <= FEW_TEXTS and self._word_cuts_exact:
            with self._lock:
                return self._encode_few(texts)
        # A pass ends before the text that would take it past MAX_CHARS_PER_PASS, which
        # bounds the per-pass arrays (code points, segment starts and hashes).
        parts, start, chars = [], 0, 0
        for end, text in enumerate(texts):
            size = len(text) + 1
            if chars + size > MAX_CHARS_PER_PASS and end > start:
                parts.append(self._encode_pass(texts[start:end]))
                start, chars = end, 0
            chars += size
        parts.append(self._encode_pass(texts[start:]))
        if len(parts) == 1:
            return parts[0]
        counts = np.concatenate([p.counts for p in parts])
        return TokenBatch(np.concatenate([p.ids for p in parts]), _exclusive_cumsum(counts), counts)

    def _encode_few(self, texts: list[str]) -> TokenBatch:
        """The path for a few texts, where the batch path's ~0.3 ms of fixed numpy cost would
        dominate: split at spaces with a regex and look each word up in a dict."""
        rows = [self._word_tokens(text) for text in texts]
        counts = np.array([len(row) for row in rows], dtype=np.int64)
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        offsets = _exclusive_cumsum(counts)
        if self.max_tokens is not None:
            flat, offsets, counts = _truncate(flat, offsets, counts, self.max_tokens)
        return TokenBatch(flat, offsets, counts)

    def _word_tokens(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=np.int64)
        if any(a in text for a in self._added):
            ids = self._reference.encode(text, add_special_tokens=False).ids
            return np.array(ids, dtype=np.int64)
        words = _WORD.findall(SPACE + text.replace(" ", SPACE))
        get = self._words.get
        found = [get(w) for w in words]
        if None in found:
            new = list(dict.fromkeys(w for w, f in zip(words, found) if f is None))
            tokens_of = dict(zip(new, self._few_segment_tokens(new)))
            if len(self._words) + len(new) > MAX_CACHED_WORDS:
                self._words.clear()
            self._words.update(
                (w, t) for w, t in tokens_of.items() if len(w) <= MAX_CACHED_SEGMENT_CHARS
            )
            found = [tokens_of[w] if f is None else f for w, f in zip(words, found)]
        return np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64)

    def _encode_pass(self, texts: list[str]) -> TokenBatch:
        # Empty texts have no tokens and texts with added tokens are spliced in afterwards.
        skipped = {i for i, t in enumerate(texts) if not t} if "" in texts else set()
        kept = [t for i, t in enumerate(texts) if i not in skipped] if skipped else texts
        joined = (SPACE + SPACE.join(kept)).replace(" ", SPACE) if kept else ""
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        special = []
        if compiled_loops().contains_any(codes, *self._added_codes):  # added tokens hold no space
            special = [i for i, t in enumerate(texts) if any(a in t for a in self._added)]
            skipped.update(special)
            kept = [t for i, t in enumerate(texts) if i not in skipped]
            joined = (SPACE + SPACE.join(kept)).replace(" ", SPACE) if kept else ""
            codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)

        text_chars = np.fromiter(map(len, kept), dtype=np.int64, count=len(kept)) + 1
        text_starts = _exclusive_cumsum(text_chars)
        seg_starts, seg_chars, hashes, first_segment = compiled_loops().segment_hashes(
            codes, text_starts, _SMALL_OF_BMP, self._cuttable, _ALPHABET, _OTHER,
            np.uint64(_HASH_BASE), _LENGTH_MIX,
        )

        long_segments = seg_chars > MAX_CACHED_SEGMENT_CHARS
        slots, (token_starts, token_counts, tokens) = self._cached_slots(
            joined, codes, seg_starts, seg_chars, hashes, long_segments
        )
        if long_segments.any():
            where = np.flatnonzero(long_segments)
            long_tokens, lengths = self._tokens_of_segments(
                joined, codes, seg_starts[where], seg_chars[where]
            )
            slots[where] = np.arange(len(token_counts), len(token_counts) + len(where))
            token_starts = np.concatenate([token_starts, len(tokens) + _exclusive_cumsum(lengths)])
            token_counts = np.concatenate([token_counts, lengths])
            tokens = np.concatenate([tokens, long_tokens])

        flat, kept_counts = compiled_loops().gather_text_tokens(
            slots, token_starts, token_counts, tokens, first_segment
        )
        counts = np.zeros(len(texts), dtype=np.int64)
        if skipped:
            kept_index = [i for i in range(len(texts)) if i not in skipped]
            counts[np.array(kept_index, dtype=np.int64)] = kept_counts
        else:
            counts[:] = kept_counts
        if special:
            flat, counts = self._splice_reference(texts, special, flat, counts)
        offsets = _exclusive_cumsum(counts)
        if self.max_tokens is not None:
            flat, offsets, counts = _truncate(flat, offsets, counts, self.max_tokens)
        return TokenBatch(flat, offsets, counts)

    def _cached_slots(
        self,
        joined: str,
        codes: np.ndarray,
        seg_starts: np.ndarray,
        seg_chars: np.ndarray,
        hashes: np.ndarray,
        long_segments: np.ndarray,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Cache slot of every segment (new ones tokenised and added; -1 for long ones) and
        views of the cache's (token starts, token counts, tokens) that hold those slots.

        The lock is held for the lookups and the insert only: new segments are tokenised
        outside it, so concurrent calls tokenise in parallel (two threads may then tokenise
        the same new segment; the second insert skips it). The cache's arrays only grow, so
        the views stay valid after the lock is released; a clear in between bumps
        ``_generation`` and the lookup is redone.
        """
        while True:
            with self._lock:
                if self.cached_segments > self.max_segments:
                    self._clear()
                generation, size = self._generation, self.cached_segments
                slots = self._lookup(hashes)
                missing = (slots < 0) & ~long_segments
                if not missing.any():
                    return slots, self._views()
            new_hashes, first, inverse = np.unique(
                hashes[missing], return_index=True, return_inverse=True
            )
            where = np.flatnonzero(missing)[first]
            flat, lengths = self._tokens_of_segments(
                joined, codes, seg_starts[where], seg_chars[where]
            )
            with self._lock:
                if generation != self._generation:
                    continue  # cleared meanwhile: the slots above point into nothing
                # nothing cached since the lookup (the usual case): every hash is still new
                all_new = self.cached_segments == size
                slots[missing] = self._insert(new_hashes, flat, lengths, all_new)[
                    inverse.reshape(-1)]
                return slots, self._views()

    def _views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._token_starts.values, self._token_counts.values, self._tokens.values

    def _lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Cache slot of each hash, -1 where absent."""
        return compiled_loops().table_lookup(
            self._table_keys, self._table_slots, hashes, self._table_bits
        )

    def _insert(
        self, hashes: np.ndarray, flat: np.ndarray, lengths: np.ndarray, all_new: bool
    ) -> np.ndarray:
        """Cache distinct ``hashes`` whose segments have tokens ``flat`` (``lengths`` each);
        the slot of each. Unless ``all_new``, hashes another call cached meanwhile keep their
        slot."""
        slots = np.full(len(hashes), -1, np.int64) if all_new else self._lookup(hashes)
        new = slots < 0
        if not new.any():
            return slots
        if not new.all():
            starts = _exclusive_cumsum(lengths)[new]
            hashes, lengths = hashes[new], lengths[new]
            flat = _gather_runs(flat, starts, lengths)
        first_slot = self.cached_segments
        self._token_starts.extend(len(self._tokens) + _exclusive_cumsum(lengths))
        self._token_counts.extend(lengths)
        self._tokens.extend(flat)
        self._hashes.extend(hashes)
        to_index, first_indexed = hashes, first_slot
        if 2 * self.cached_segments > len(self._table_keys):  # keep the table half empty
            self._table_keys, self._table_slots, self._table_bits = _empty_table(
                4 * self.cached_segments
            )
            to_index, first_indexed = self._hashes.values, 0
        compiled_loops().table_insert(
            self._table_keys, self._table_slots, to_index, first_indexed, self._table_bits
        )
        slots[new] = np.arange(first_slot, first_slot + len(lengths))
        return slots

    def _few_segment_tokens(self, segments: list[str]) -> list[tuple[int, ...]]:
        """Tokens of a few segments: one NUL-joined encode (see ``_segment_tokens``), split
        in plain Python, which beats numpy's per-call cost at this size."""
        joined = SEPARATOR.join(segments)
        if joined.count(SEPARATOR) != len(segments) - 1:
            flat, lengths = self._segment_tokens(segments)
            bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            tokens = flat.tolist()
            return [tuple(tokens[a:b]) for a, b in zip(bounds, bounds[1:])]
        out: list[tuple[int, ...]] = []
        current: list[int] = []
        separator = self._separator_id
        for token in self._segment_tokenizer.encode(joined, add_special_tokens=False).ids:
            if token == separator:
                out.append(tuple(current))
                current = []
            else:
                current.append(token)
        out.append(tuple(current))
        return out

    def _tokens_of_segments(
        self, joined: str, codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``_segment_tokens`` of the segments of ``joined`` (code points ``codes``) that start
        at ``starts``, with the NUL-joined chunks built by one compiled pass over the codes."""
        chunk_codes, chunk_ends, clash = compiled_loops().join_segments(
            codes, starts, lengths, SEGMENTS_PER_CHUNK, _SEPARATOR_CODE
        )
        if clash:
            return self._segment_tokens(_segment_texts(joined, starts, lengths))
        text = chunk_codes.tobytes().decode("utf-32-le")
        bounds = [0, *chunk_ends.tolist()]
        return self._split_chunks([text[a:b] for a, b in zip(bounds, bounds[1:])])

    def _segment_tokens(self, segments: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of each segment, flat, and their counts.

        Segments are tokenised in chunks joined by NUL: no vocabulary piece holds NUL, so it
        cuts like any unjoinable pair and comes back as its own byte-fallback token, which
        marks where one segment's tokens end. That is ~8x cheaper than one encode per
        segment. The rare segments that contain NUL themselves are encoded one by one.
        """
        if SEPARATOR in "".join(segments):
            encoded = self._segment_tokenizer.encode_batch_fast(segments, add_special_tokens=False)
            lengths = np.fromiter((len(e.ids) for e in encoded), np.int64, len(segments))
            flat = np.fromiter((t for e in encoded for t in e.ids), np.int64, int(lengths.sum()))
            return flat, lengths
        return self._split_chunks([
            SEPARATOR.join(segments[i : i + SEGMENTS_PER_CHUNK])
            for i in range(0, len(segments), SEGMENTS_PER_CHUNK)
        ])

    def _split_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of NUL-joined chunks of segments, split at the NUL tokens: flat, and each
        segment's count."""
        encoded = self._segment_tokenizer.encode_batch_fast(chunks, add_special_tokens=False)
        flats, lengths = [], []
        for chunk in encoded:
            ids = np.asarray(chunk.ids, dtype=np.int64)
            separators = np.flatnonzero(ids == self._separator_id)
            lengths.append(np.diff(np.concatenate([[-1], separators, [len(ids)]])) - 1)
            flats.append(np.delete(ids, separators))
        return np.concatenate(flats), np.concatenate(lengths)

    def _splice_reference(
        self, texts: list[str], special: list[int], flat: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Put the reference tokenizer's tokens in the (empty) runs of the ``special`` texts."""
        encoded = self._reference.encode_batch_fast(
            [texts[i] for i in special], add_special_tokens=False
        )
        offsets = _exclusive_cumsum(counts)
        counts = counts.copy()
        pieces, start = [], 0
        for i, e in zip(special, encoded):
            pieces += [flat[start : offsets[i]], np.asarray(e.ids, dtype=np.int64)]
            start = offsets[i]
            counts[i] = len(e.ids)
        pieces.append(flat[start:])
        return np.concatenate(pieces), counts


class _GrowingArray:
    """A 1-d array that doubles its capacity when full, so appending k values costs O(k)."""

    def __init__(self, dtype: type) -> None:
        self._data = np.zeros(1024, dtype=dtype)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def extend(self, values: np.ndarray) -> None:
        end = self._size + len(values)
        if end > len(self._data):
            grown = np.zeros(max(end, 2 * len(self._data)), dtype=self._data.dtype)
            grown[: self._size] = self.values
            self._data = grown
        self._data[self._size : end] = values
        self._size = end


def _joinable_pairs(vocab: dict[str, int]) -> np.ndarray:
    """Flat [_ALPHABET**2] mask: may characters a, b (small alphabet) sit next to each other
    inside one vocabulary piece? Where not, a text may be cut between them."""
    joinable = np.zeros((_ALPHABET, _ALPHABET), dtype=bool)
    joinable[_OTHER, :] = joinable[:, _OTHER] = True
    for piece in vocab:
        if len(piece) > 1:
            small = _SMALL_OF_BMP[np.minimum([ord(c) for c in piece], 0xFFFF)]
            joinable[small[:-1], small[1:]] = True
    return joinable.ravel()


def _empty_table(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Keys, slots and log2 size of an empty open-addressing table of at least ``size``
    entries."""
    bits = max(size - 1, 1).bit_length()
    return np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64), bits


def _pattern_codes(patterns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``patterns`` as one array of code points and the start of each (and the end)."""
    flat = np.frombuffer("".join(patterns).encode("utf-32-le"), dtype=np.uint32)
    return flat, _exclusive_cumsum([len(p) for p in patterns] + [0])


def _segment_texts(joined: str, starts: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [joined[s : s + n] for s, n in zip(starts, lengths)]


def _exclusive_cumsum(values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    out = np.zeros(len(values), dtype=np.int64)
    np.cumsum(values[:-1], out=out[1:])
    return out


def _gather_runs(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([values[s:s + n] for s, n in zip(starts, lengths)])`` without a loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=values.dtype)
    index = np.repeat(starts - _exclusive_cumsum(lengths), lengths)
    index += np.arange(total)
    return values[index]


def _truncate(
    flat: np.ndarray, offsets: np.ndarray, counts: np.ndarray, max_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    position = np.arange(len(flat)) - np.repeat(offsets, counts)
    flat = flat[position < max_tokens]
    counts = np.minimum(counts, max_tokens)
    return flat, _exclusive_cumsum(counts), counts
