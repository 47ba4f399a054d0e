"""Battle data: the columnar battle table, loaders for real sources, cleaning, ratings."""

from prefroute._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (import stays cheap)
_EXPORTS = {
    "DEFAULT_ALIASES": "prefroute.data.aliases",
    "ModelAliases": "prefroute.data.aliases",
    "WINNERS": "prefroute.data.battles",
    "Battles": "prefroute.data.battles",
    "clean_battles": "prefroute.data.cleaning",
    "drop_duplicates": "prefroute.data.cleaning",
    "drop_short_prompts": "prefroute.data.cleaning",
    "ContaminationReport": "prefroute.data.decontamination",
    "decontaminate": "prefroute.data.decontamination",
    "find_contamination": "prefroute.data.decontamination",
    "NAMED_SOURCES": "prefroute.data.loaders",
    "apply_aliases": "prefroute.data.loaders",
    "distinct_prompts": "prefroute.data.loaders",
    "first_user_turn": "prefroute.data.loaders",
    "golden_battles": "prefroute.data.loaders",
    "load_arena": "prefroute.data.loaders",
    "load_judge_battles": "prefroute.data.loaders",
    "load_mt_bench_votes": "prefroute.data.loaders",
    "load_source": "prefroute.data.loaders",
    "OutcomeTable": "prefroute.data.outcomes",
    "load_contaminated_prompts": "prefroute.data.outcomes",
    "load_mmlu_pro": "prefroute.data.outcomes",
    "load_outcomes": "prefroute.data.outcomes",
    "load_routellm_gsm8k": "prefroute.data.outcomes",
    "load_routellm_mmlu": "prefroute.data.outcomes",
    "load_routellm_mt_bench": "prefroute.data.outcomes",
    "load_routerbench": "prefroute.data.outcomes",
    "default_data_dir": "prefroute.data.paths",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
