"""Query prompts for the speed benchmarks, and a fixed tokenizer-cache state to time them in.

The wordllama embedder caches the tokens of every text segment it has seen (see
``prefroute.embed.segment_tokenizer``), so a prompt that was embedded before, or whose words
were, costs less the second time. Timing it honestly needs prompts the process has never
embedded, and the same cache state for every method compared: ``reset_token_cache`` empties
the caches and embeds a fixed warm-up set (other prompts from the same pool, standing in for
the traffic a running router has already seen) before each timed run, and the timed prompts
are never part of any warm-up set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefroute.data.outcomes import load_outcomes
from prefroute.embed.base import Embedder
from prefroute.embed.wordllama_embedder import clear_token_caches

# The three benchmarks routers are evaluated on (15,441 prompts, mean ~450 characters); the
# speed benchmarks train on AlpacaEval, so none of these is a training prompt there.
QUERY_TABLES = ("mt-bench", "gsm8k", "mmlu")


def query_pool(data_dir: Path, seed: int = 0) -> list[str]:
    """Every distinct prompt of ``QUERY_TABLES``, shuffled."""
    prompts: dict[str, None] = {}
    for name in QUERY_TABLES:
        prompts.update(dict.fromkeys(load_outcomes(name, data_dir).prompts))
    pool = list(prompts)
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order]


def split_pool(pool: list[str], **sizes: int) -> dict[str, list[str]]:
    """Disjoint consecutive slices of ``pool``, named and sized by ``sizes``."""
    if sum(sizes.values()) > len(pool):
        raise ValueError(f"the query pool has {len(pool):,} prompts; {sizes} need more")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = pool[start : start + size]
        start += size
    return out


def reset_token_cache(embedder: Embedder, warm_up: list[str]) -> None:
    """Empty the tokenizer caches, then embed ``warm_up`` (empty: a cold start), in one batch
    and one text at a time: each fills the cache of its own path (segments and words)."""
    clear_token_caches()
    if warm_up:
        embedder.encode(warm_up)
        for text in warm_up:
            embedder.encode(text)
