"""Loaders that turn public preference data into the battle table.

Sources: Chatbot Arena in its two public schemas (from a hub name through ``datasets`` or
from a local file), LLM-judge battles (AlpacaEval), MT-Bench human / GPT-4 pair votes, and
golden-label battles from outcome tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prefroute._logging import logger
from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.outcomes import OutcomeTable, load_outcomes
from prefroute.data.tabular import RECORD_SUFFIXES, read_records
from prefroute.errors import DataError
from prefroute.validate import check_number, check_probability, numbered

ARENA_55K = "lmsys/lmsys-arena-human-preference-55k"
ARENA_CONVERSATIONS = "lmsys/chatbot_arena_conversations"


def first_user_turn(
    conversation: object,
    *,
    file: str | None = None,
    row: int | None = None,
    field: str = "conversation",
) -> str:
    """The first user message of a conversation given as a list of {role, content}."""
    if isinstance(conversation, str):
        try:
            conversation = json.loads(conversation)
        except json.JSONDecodeError:
            raise DataError(
                "conversation is not valid JSON", file=file, row=row, field=field
            ) from None
    if not isinstance(conversation, list):
        raise DataError("conversation must be a list of turns", file=file, row=row, field=field)
    for turn in conversation:
        if isinstance(turn, Mapping) and turn.get("role") == "user":
            content = turn.get("content")
            if isinstance(content, str):
                return content
    raise DataError("conversation has no user turn", file=file, row=row, field=field)


def _require(row: Mapping, fields: Sequence[str], file: str | None, index: int) -> None:
    for name in fields:
        if name not in row or row[name] is None:
            raise DataError("missing field", file=file, row=index, field=name)


def _from_55k(rows: list[dict], file: str | None) -> Battles:
    out = []
    for i, r in numbered(rows):
        _require(
            r,
            ["model_a", "model_b", "prompt", "winner_model_a", "winner_model_b", "winner_tie"],
            file,
            i,
        )
        turns = r["prompt"]
        if isinstance(turns, str):
            try:
                turns = json.loads(turns)
            except json.JSONDecodeError:
                raise DataError(
                    "prompt is not a JSON-encoded list of turns", file=file, row=i, field="prompt"
                ) from None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise DataError(
                "prompt must be a non-empty list of turns", file=file, row=i, field="prompt"
            )
        flags = [
            check_number(r[k], file=file, row=i, field=k, low=0, high=1, optional=False)
            for k in ("winner_model_a", "winner_model_b", "winner_tie")
        ]
        if sorted(flags) != [0.0, 0.0, 1.0]:
            raise DataError(
                f"exactly one of winner_model_a/b/tie must be 1, got {flags}",
                file=file,
                row=i,
                field="winner_model_a",
            )
        winner = ("model_a", "model_b", "tie")[flags.index(1)]
        responses_a = r.get("response_a")
        responses_b = r.get("response_b")
        conversation = {"turns": turns, "response_a": responses_a, "response_b": responses_b}
        out.append(
            {
                "prompt": turns[0],
                "model_a": r["model_a"],
                "model_b": r["model_b"],
                "winner": winner,
                "source": "arena-55k",
                "conversation": conversation,
            }
        )
    return Battles.from_records(out, file=file, row_numbers=[n for n, _ in numbered(rows)])


def _from_conversations(rows: list[dict], file: str | None, source: str) -> Battles:
    out = []
    for i, r in numbered(rows):
        _require(r, ["model_a", "model_b", "winner", "conversation_a"], file, i)
        prompt = first_user_turn(r["conversation_a"], file=file, row=i, field="conversation_a")
        out.append(
            {
                "prompt": prompt,
                "model_a": r["model_a"],
                "model_b": r["model_b"],
                "winner": r["winner"],
                "source": source,
                "conversation": r["conversation_a"],
            }
        )
    return Battles.from_records(out, file=file, row_numbers=[n for n, _ in numbered(rows)])


def detect_arena_schema(columns: Sequence[str]) -> str:
    """``"55k"`` or ``"conversations"`` from a table's column names."""
    cols = set(columns)
    if {"winner_model_a", "winner_model_b", "winner_tie", "prompt"} <= cols:
        return "55k"
    if {"conversation_a", "winner", "model_a", "model_b"} <= cols:
        return "conversations"
    raise DataError(
        "not a Chatbot Arena table: expected the columns of "
        f"{ARENA_55K} (prompt, winner_model_a, winner_model_b, winner_tie) or of "
        f"{ARENA_CONVERSATIONS} (conversation_a, winner); got {sorted(cols)}"
    )


def load_arena(source: str | Path, *, split: str = "train", language: str | None = None) -> Battles:
    """Chatbot Arena battles from a local file or a Hugging Face hub name.

    Parameters
    ----------
    source: a local .json/.jsonl/.csv/.parquet file in either public schema, or a hub name
        such as ``lmsys/lmsys-arena-human-preference-55k`` (needs network and, for gated
        sets, a logged-in token).
    split: the hub split to read.
    language: keep only battles in this language (``conversations`` schema only).
    """
    path = Path(source)
    if path.suffix.lower() in RECORD_SUFFIXES or path.exists():
        rows = read_records(path)
        file = str(path)
    else:
        import datasets  # heavy import: only for the online path

        rows = datasets.load_dataset(str(source), split=split).to_list()
        file = str(source)
    if not rows:
        raise DataError("no rows", file=file)
    schema = detect_arena_schema(rows[0].keys())
    if schema == "55k":
        battles = _from_55k(rows, file)
    else:
        if language is not None:
            before = len(rows)
            rows = [r for r in rows if r.get("language") == language]
            logger.info("arena: kept %d of %d battles in language %r", len(rows), before, language)
        battles = _from_conversations(rows, file, source="arena")
    logger.info("arena: loaded %d battles from %s (%s schema)", len(battles), file, schema)
    return battles


def load_judge_battles(path: str | Path) -> Battles:
    """LLM-judge battles (AlpacaEval layout) with the judge's soft label ``p_b_wins``."""
    path = Path(path)
    rows = read_records(path)
    prompts, a, b, winners, p_b, sources, numbers = [], [], [], [], [], [], []
    for i, r in numbered(rows):
        _require(r, ["prompt", "model_a", "model_b", "winner"], str(path), i)
        prompts.append(r["prompt"])
        a.append(r["model_a"])
        b.append(r["model_b"])
        winners.append(r["winner"])
        p_b.append(check_probability(r.get("p_b_wins"), file=str(path), row=i, field="p_b_wins",
                                     text_ok=getattr(rows, "text_cells", False)))
        sources.append(f"judge:{r['source']}" if r.get("source") else "judge")
        numbers.append(i)
    return Battles.from_columns(
        prompts, a, b, winners, file=str(path), row_numbers=numbers, p_b_wins=p_b,
        source=sources,
    )


def load_mt_bench_votes(path: str | Path, *, turn: int | None = None) -> Battles:
    """MT-Bench pairwise votes (human or GPT-4 pair) in the Hugging Face dataset schema."""
    path = Path(path)
    rows = read_records(path)
    if turn is not None:
        before = len(rows)
        rows = [r for r in rows if r.get("turn") == turn]
        logger.info("mt-bench votes: kept %d of %d votes of turn %d", len(rows), before, turn)
    inconsistent = 0
    for r in rows:
        # FastChat's GPT-4 pair judge writes this when its two position-swapped verdicts
        # disagree: a tie by its own definition.
        if r.get("winner") == "tie (inconsistent)":
            r["winner"] = "tie"
            inconsistent += 1
    if inconsistent:
        logger.info(
            "mt-bench votes: %d 'tie (inconsistent)' verdicts counted as ties", inconsistent
        )
    return _from_conversations(rows, str(path), source=f"mt_bench:{path.stem}")


def golden_battles(
    outcomes: OutcomeTable,
    strong: str,
    weak: str,
    *,
    ties: str = "keep",
    strong_name: str | None = None,
    weak_name: str | None = None,
) -> Battles:
    """Battles from known outcomes: strong right & weak wrong -> strong wins, and so on.

    The strong model is ``model_a``. Rows missing either model's result are dropped and
    counted in the log. ``ties="drop"`` removes items where both did equally well.
    """
    if ties not in ("keep", "drop"):
        raise DataError(f"ties must be 'keep' or 'drop', got {ties!r}")
    s = outcomes.column(strong)
    w = outcomes.column(weak)
    known = ~(np.isnan(s) | np.isnan(w))
    if (~known).any():
        missing = np.flatnonzero(~known)
        shown = ", ".join(str(outcomes.ids[i]) for i in missing[:5])
        logger.warning(
            "golden %s: %d of %d items lack a result for %s or %s; skipped (ids %s%s)",
            outcomes.name,
            len(missing),
            len(outcomes),
            strong,
            weak,
            shown,
            ", ..." if len(missing) > 5 else "",
        )
    winner = np.where(s > w, "model_a", np.where(s < w, "model_b", "tie")).astype(object)
    keep = known.copy()
    if ties == "drop":
        keep &= winner != "tie"
        logger.info(
            "golden %s: dropped %d tied items",
            outcomes.name,
            int((known & (winner == "tie")).sum()),
        )
    idx = np.flatnonzero(keep)
    n = len(idx)
    return Battles.from_columns(
        [outcomes.prompts[i] for i in idx],
        [strong_name or strong] * n,
        [weak_name or weak] * n,
        list(winner[idx]),
        source=[f"golden:{outcomes.name}"] * n,
    )


def apply_aliases(battles: Battles, aliases: ModelAliases, *, file: str | None = None) -> Battles:
    """Canonicalise model names; in strict mode an unknown model raises (row and field named)."""
    mapping: dict[str, str] = {}
    for field in ("model_a", "model_b"):
        for i, name in enumerate(battles.column(field), start=1):
            if name not in mapping:
                mapping[name] = aliases.canonical(name, file=file, row=i, field=field)
    return battles.rename_models(mapping)


DEFAULT_GOLDEN_PAIRS = {
    "mmlu_pro": ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"),
    "mmlu": ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    "gsm8k": ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    "routerbench": ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"),
}

NAMED_SOURCES = (
    "alpaca_eval",
    "mt_bench_human",
    "mt_bench_gpt4",
    "golden:mmlu_pro",
    "golden:mmlu",
    "golden:gsm8k",
    "golden:routerbench",
)


def golden_columns(
    source: str,
    outcomes: OutcomeTable,
    pair: tuple[str, str],
    aliases: ModelAliases | None = None,
) -> tuple[str, str]:
    """The table columns a ``golden:<table>[@STRONG,WEAK]`` source uses for ``pair``.

    Without ``@`` the requested pair's own columns (matched by name or alias); with
    ``@STRONG,WEAK`` those columns stand in for the pair, explicitly. A pair the table does
    not hold is an error listing the models it has, never a silent relabel.
    """
    aliases = aliases or ModelAliases()
    _, _, stand_ins = source.partition("@")
    if stand_ins:
        wanted = [name.strip() for name in stand_ins.split(",")]
        if len(wanted) != 2 or not all(wanted):
            raise DataError(
                f"source {source!r}: after '@' give the two stand-in columns as STRONG,WEAK"
            )
    else:
        wanted = list(pair)
    found = []
    for role, model in zip(("strong", "weak"), wanted, strict=True):
        exact = [m for m in outcomes.models if m == model]
        same = exact or [
            m for m in outcomes.models if aliases.canonical(m) == aliases.canonical(model)
        ]
        if len(same) != 1:
            how = "stand-in" if stand_ins else "requested"
            raise DataError(
                f"source {source!r}: the {how} {role} model {model!r} is "
                f"{'ambiguous' if same else 'not'} in the {outcomes.name} table; it has "
                f"{outcomes.models}. Train on a pair it holds, or name stand-in columns "
                f"explicitly: golden:{outcomes.name}@STRONG,WEAK"
            )
        found.append(same[0])
    if found[0] == found[1]:
        raise DataError(f"source {source!r}: strong and weak are both column {found[0]!r}")
    return found[0], found[1]


def load_source(
    name: str,
    data_dir: str | Path,
    *,
    golden_pair: tuple[str, str] | None = None,
    golden_as: tuple[str, str] | None = None,
    golden_for: tuple[str, str] | None = None,
    aliases: ModelAliases | None = None,
) -> Battles:
    """A named source under ``data_dir`` (the ``shared/data`` layout) or a battles file.

    ``golden:<table>`` builds golden battles. With ``golden_for=(strong, weak)`` (what
    training uses) they come from those models' own columns, or from the stand-ins a
    ``golden:<table>@STRONG,WEAK`` source names, labelled as the requested pair; a pair
    the table lacks is an error (see ``golden_columns``). Otherwise ``golden_pair`` (default:
    the table's usual pair) is used and ``golden_as`` renames it, for code that relabels
    on purpose.
    """
    data_dir = Path(data_dir)
    if name == "alpaca_eval":
        return load_judge_battles(data_dir / "alpaca_eval" / "judge_battles.jsonl")
    if name == "mt_bench_human":
        return load_mt_bench_votes(data_dir / "mt_bench_human_judgments" / "human.jsonl")
    if name == "mt_bench_gpt4":
        return load_mt_bench_votes(data_dir / "mt_bench_human_judgments" / "gpt4_pair.jsonl")
    if name.startswith("golden:"):
        table = name.split(":", 1)[1].partition("@")[0]
        if golden_for is not None:
            outcomes = load_outcomes(table, data_dir)
            strong, weak = golden_columns(name, outcomes, golden_for, aliases)
            if (strong, weak) != tuple(golden_for):
                logger.info("%s: columns %s / %s as %s / %s", name, strong, weak, *golden_for)
            return golden_battles(
                outcomes, strong, weak, strong_name=golden_for[0], weak_name=golden_for[1]
            )
        if "@" in name:
            raise DataError(f"source {name!r}: stand-in columns need the pair they stand for")
        strong, weak = golden_pair or DEFAULT_GOLDEN_PAIRS.get(table, (None, None))
        if strong is None:
            raise DataError(f"no default strong/weak pair for {table!r}; pass golden_pair")
        outcomes = load_outcomes(table, data_dir)
        names = golden_as or (None, None)
        return golden_battles(outcomes, strong, weak, strong_name=names[0], weak_name=names[1])
    path = Path(name)
    if path.exists():
        return Battles.read(path)
    raise DataError(
        f"unknown data source {name!r}: not a file and not one of {list(NAMED_SOURCES)}"
    )


def distinct_prompts(data_dir: str | Path) -> list[str]:
    """Every distinct prompt under ``data_dir`` (battles and outcome tables), first seen first."""
    prompts: dict[str, None] = {}
    for source in ("alpaca_eval", "mt_bench_human"):
        prompts.update(dict.fromkeys(load_source(source, data_dir).prompts))
    for table in ("mt-bench", "mmlu", "gsm8k", "mmlu_pro", "routerbench"):
        prompts.update(dict.fromkeys(load_outcomes(table, data_dir).prompts))
    return list(prompts)
