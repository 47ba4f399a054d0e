"""Prompt sets and stored model outputs to label."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefroute._logging import logger
from prefroute.data.tabular import read_records
from prefroute.errors import DataError
from prefroute.validate import decode_utf8, numbered


@dataclass(frozen=True)
class PromptItem:
    """One prompt to label; ``item_id`` keys it in the journal."""

    item_id: str
    prompt: str


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt without one: the first 16 hex digits of its SHA-1."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def make_items(prompts: Sequence[str], ids: Sequence[str] | None = None) -> list[PromptItem]:
    """Items from prompts (ids default to :func:`prompt_id`); duplicates kept once, logged."""
    if ids is not None and len(ids) != len(prompts):
        raise DataError(f"{len(ids)} ids for {len(prompts)} prompts")
    items: dict[str, PromptItem] = {}
    duplicates = 0
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("empty prompt", row=i + 1, field="prompt")
        item_id = str(ids[i]) if ids is not None else prompt_id(prompt)
        previous = items.get(item_id)
        if previous is not None:
            if previous.prompt != prompt:
                raise DataError(f"prompt id {item_id!r} is used for two different prompts",
                                row=i + 1, field="prompt_id")
            duplicates += 1
            continue
        items[item_id] = PromptItem(item_id, prompt)
    if duplicates:
        logger.info("prompts: %d repeated prompts kept once (%d distinct)", duplicates, len(items))
    return list(items.values())


def read_prompts(path: str | Path, *, prompt_field: str = "prompt",
                 id_field: str = "prompt_id") -> list[PromptItem]:
    """Prompts from a .txt file (one a line) or a JSONL/JSON/CSV/Parquet table.

    Tables need ``prompt_field``; ``id_field`` is used when present (AlpacaEval's
    ``prompt_id``), otherwise ids are content hashes.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.exists():
            raise DataError("file not found", file=str(path))
        text = decode_utf8(path.read_bytes(), str(path))
        lines = [line.rstrip("\n") for line in text.splitlines()]
        return make_items([line for line in lines if line.strip()])
    rows = read_records(path)
    if not rows:
        raise DataError("no prompts", file=str(path))
    prompts, ids = [], []
    has_ids = all(r.get(id_field) is not None for r in rows)
    for i, r in numbered(rows):
        value = r.get(prompt_field)
        if not isinstance(value, str) or not value.strip():
            raise DataError("missing or empty prompt", file=str(path), row=i, field=prompt_field)
        prompts.append(value)
        ids.append(str(r[id_field]) if has_ids else None)
    try:
        return make_items(prompts, ids if has_ids else None)
    except DataError as e:
        raise DataError(f"{e}", file=str(path)) from None


def read_outputs(path: str | Path) -> tuple[list[PromptItem], dict[str, dict[str, str]]]:
    """Stored answers ``{prompt_id, prompt, model, output}`` (AlpacaEval's outputs.jsonl).

    Returns the prompts (in file order) and model -> {prompt_id: output}.
    """
    rows = read_records(path)
    file = str(path)
    prompts: list[str] = []
    ids: list[str] = []
    outputs: dict[str, dict[str, str]] = {}
    for i, r in numbered(rows):
        for field in ("prompt", "model", "output"):
            if not isinstance(r.get(field), str):
                raise DataError("missing or not text", file=file, row=i, field=field)
        pid = str(r["prompt_id"]) if r.get("prompt_id") is not None else prompt_id(r["prompt"])
        prompts.append(r["prompt"])
        ids.append(pid)
        by_model = outputs.setdefault(r["model"], {})
        if pid in by_model:
            raise DataError(f"second output of {r['model']!r} for prompt {pid}", file=file, row=i,
                            field="prompt_id")
        by_model[pid] = r["output"]
    try:
        items = make_items(prompts, ids)
    except DataError as e:
        raise DataError(f"{e}", file=file) from None
    return items, outputs
