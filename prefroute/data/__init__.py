"""Battle data: the columnar battle table, loaders for real sources, cleaning, ratings."""

from prefroute.data.aliases import DEFAULT_ALIASES, ModelAliases
from prefroute.data.battles import WINNERS, Battles
from prefroute.data.cleaning import clean_battles, drop_duplicates, drop_short_prompts
from prefroute.data.decontaminate import ContaminationReport, decontaminate, find_contamination
from prefroute.data.loaders import (
    NAMED_SOURCES,
    apply_aliases,
    distinct_prompts,
    first_user_turn,
    golden_battles,
    load_arena,
    load_judge_battles,
    load_mt_bench_votes,
    load_source,
)
from prefroute.data.outcomes import (
    OutcomeTable,
    load_contaminated_prompts,
    load_mmlu_pro,
    load_outcomes,
    load_routellm_gsm8k,
    load_routellm_mmlu,
    load_routellm_mt_bench,
    load_routerbench,
)
from prefroute.data.paths import default_data_dir

__all__ = [
    "DEFAULT_ALIASES",
    "NAMED_SOURCES",
    "WINNERS",
    "Battles",
    "ContaminationReport",
    "ModelAliases",
    "OutcomeTable",
    "apply_aliases",
    "clean_battles",
    "decontaminate",
    "default_data_dir",
    "distinct_prompts",
    "drop_duplicates",
    "drop_short_prompts",
    "find_contamination",
    "first_user_turn",
    "golden_battles",
    "load_arena",
    "load_contaminated_prompts",
    "load_judge_battles",
    "load_mmlu_pro",
    "load_mt_bench_votes",
    "load_outcomes",
    "load_routellm_gsm8k",
    "load_routellm_mmlu",
    "load_routellm_mt_bench",
    "load_routerbench",
    "load_source",
]
