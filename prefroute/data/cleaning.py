"""Cleaning in RouteLLM's manner: short prompts out, duplicates out, each step counted.

One difference: RouteLLM drops battles whose stripped first turn has fewer than 16
characters; prefroute's default minimum is 8 (short requests such as "Define GDP" or
"Fix: x=+1" are real traffic a router must score). Pass ``min_chars=16`` /
``min_prompt_chars=16`` to clean exactly as RouteLLM does; both count characters after
stripping leading and trailing whitespace.

Nothing is dropped silently: each step that removes rows logs one warning (shown without
``-v``) with the reason, the count and the first rows, e.g. "battles of a model against
itself: removed 3 of 40 battles (file battles.csv, rows 4, 17, 52)".
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
import pyarrow.compute as pc

from prefroute.data.battles import Battles


def drop_short_prompts(battles: Battles, min_chars: int = 8) -> Battles:
    """Remove battles whose routing prompt has fewer than ``min_chars`` non-blank characters."""
    lengths = pc.utf8_length(pc.utf8_trim_whitespace(battles.table["prompt"])).to_numpy()
    return battles.log_filter(
        lengths >= min_chars, f"prompts shorter than {min_chars} characters", level=WARNING
    )


def drop_duplicates(
    battles: Battles,
    *,
    keys: tuple[str, ...] = ("prompt", "model_a", "model_b", "winner", "source"),
) -> Battles:
    """Remove exact repeats of the same battle (same values in ``keys``), keeping the first."""
    seen: set[tuple] = set()
    columns = [battles.column(k) for k in keys]
    keep = np.zeros(len(battles), dtype=bool)
    for i, key in enumerate(zip(*columns)):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return battles.log_filter(keep, "duplicate battles", level=WARNING)


def drop_self_battles(battles: Battles) -> Battles:
    """Remove battles of a model against itself (they carry no preference)."""
    same = pc.equal(battles.table["model_a"], battles.table["model_b"]).to_numpy(
        zero_copy_only=False
    )
    return battles.log_filter(~same, "battles of a model against itself", level=WARNING)


def clean_battles(battles: Battles, *, min_prompt_chars: int = 8, dedupe: bool = True) -> Battles:
    """Short prompts, self-battles and (optionally) exact duplicates removed, each reported."""
    battles = drop_short_prompts(battles, min_prompt_chars)
    battles = drop_self_battles(battles)
    if dedupe:
        battles = drop_duplicates(battles)
    return battles
