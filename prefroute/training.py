"""The training pipeline shared by the CLI, the benchmarks and the notebooks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.cleaning import clean_battles
from prefroute.data.decontamination import decontaminate
from prefroute.data.loaders import apply_aliases, load_source
from prefroute.errors import ConfigError
from prefroute.router import make_router
from prefroute.routers.base import WinPredictor

DEFAULT_STRONG = "gpt-4-1106-preview"
DEFAULT_WEAK = "mixtral-8x7b-instruct-v0.1"
# MMLU-Pro has no gpt-4-1106-preview column: gpt-4o stands in for it, said explicitly
MMLU_PRO_STAND_IN = "golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1"
DEFAULT_TRAINING_MIX = ("alpaca_eval", MMLU_PRO_STAND_IN)


def load_training_battles(
    sources: Sequence[str],
    data_dir: str | Path | None,
    *,
    strong_model: str = DEFAULT_STRONG,
    weak_model: str = DEFAULT_WEAK,
    aliases: ModelAliases | None = None,
    clean: bool = True,
    eval_prompts: Sequence[str] | None = None,
    embedder: str | dict = "wordllama",
    contamination_threshold: float = 0.95,
) -> Battles:
    """Battles from named sources and/or files, names canonicalised, cleaned, decontaminated.

    Golden sources (``golden:<table>``) use the strong and weak models' own columns; a pair
    the table lacks is an error listing its models, unless the source names stand-in
    columns explicitly (``golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1``).
    """
    aliases = aliases or ModelAliases()
    strong = aliases.canonical(strong_model)
    weak = aliases.canonical(weak_model)
    parts = []
    for source in sources:
        battles = load_source(
            source, data_dir or ".", golden_for=(strong, weak), aliases=aliases
        )
        battles = apply_aliases(battles, aliases, file=source)
        logger.info("source %s: %d battles", source, len(battles))
        parts.append(battles)
    battles = Battles.concat(parts)
    if clean:
        battles = clean_battles(battles)
    if eval_prompts:
        battles, report = decontaminate(
            battles, list(eval_prompts), embedder=embedder, threshold=contamination_threshold
        )
        logger.info("decontamination removed %d battles", len(report))
    return battles


def weight_sources(battles: Battles, source_weights: dict[str, float]) -> Battles:
    """Set each battle's ``weight`` by the prefix of its ``source`` (e.g. ``{"golden": 30}``).

    A few thousand in-distribution golden battles drown among tens of thousands of judge
    battles; weighting them up is how they get a say (golden cross-fit, GSM8K: sw_bt APGR
    0.546 at weight 1, 0.621 at weight 30; benchmarks/RESULTS.md). Battles matching no prefix
    keep their weight (1 when unset); the longest matching prefix wins.
    """
    for prefix, weight in source_weights.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"source weight for {prefix!r} must be a finite number >= 0, got {weight!r}")
    weights = battles.numeric("weight")
    weights = np.where(np.isnan(weights), 1.0, weights)
    prefixes = sorted(source_weights, key=len, reverse=True)
    counts = dict.fromkeys(prefixes, 0)
    for i, source in enumerate(battles.column("source")):
        for prefix in prefixes:
            if str(source or "").startswith(prefix):
                weights[i] *= source_weights[prefix]
                counts[prefix] += 1
                break
    for prefix, n in counts.items():
        logger.info("source weight %s x%g: %d battles", prefix, source_weights[prefix], n)
    return battles.with_column("weight", weights)


def train_router(
    name: str,
    battles: Battles,
    *,
    strong_model: str = DEFAULT_STRONG,
    weak_model: str = DEFAULT_WEAK,
    aliases: ModelAliases | None = None,
    **params: Any,
) -> WinPredictor:
    """Fit the router ``name`` (see ``prefroute.routers.ROUTERS``) on ``battles``."""
    aliases = aliases or ModelAliases()
    predictor = make_router(
        name,
        strong_model=aliases.canonical(strong_model),
        weak_model=aliases.canonical(weak_model),
        **params,
    )
    return predictor.fit(battles)
