"""`prefroute augment select`: choose which prompts to label next."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute.errors import ConfigError
from prefroute.io import atomic_write_text


def select(
    pool: Path | None = typer.Option(
        None, "--pool", help="prompts to choose from: .txt (one a line) or JSONL/CSV/Parquet "
        "with a 'prompt' field (and 'prompt_id')"),
    table: str | None = typer.Option(
        None, "--table", help="or a stored outcome table as the pool (mmlu_pro, mmlu, gsm8k, "
        "...); its item ids feed `augment golden --ids-file`"),
    budget: int = typer.Option(..., "--budget", help="how many prompts to pick"),
    out: Path = typer.Option(..., "--out", help="JSONL of picks {prompt_id, prompt, rank, "
                             "uncertainty}: feed it to `augment judge --prompts`"),
    ids_out: Path | None = typer.Option(
        None, "--ids-out", help="also write the picked ids, one a line (for `augment golden "
        "--ids-file`)"),
    router: Path | None = typer.Option(
        None, "--router", help="router checkpoint: prefer prompts near its decision boundary "
        "(and where auto's members disagree)"),
    method: str = typer.Option("kmeans", "--method", help="kmeans (cluster coverage) or "
                               "kcenter (farthest first)"),
    uncertainty_weight: float = typer.Option(0.5, "--uncertainty-weight",
                                             help="0: coverage only, 1: uncertainty only"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="folder in the shared/data layout (--table)"),
) -> None:
    """Pick --budget prompts to label: diverse, and uncertain for --router if given.

    Example: prefroute augment select --table mmlu_pro --budget 200 --router runs/auto
    --out picks.jsonl --ids-out picks.txt; then prefroute augment golden --table mmlu_pro
    --ids-file picks.txt ...
    """
    import numpy as np

    from prefroute.selection import select_prompts

    if (pool is None) == (table is None):
        raise ConfigError("give exactly one of --pool (a prompts file) or --table (stored "
                          "outcomes)")
    if pool is not None:
        from data_aug.items import read_prompts

        items = read_prompts(pool)
        ids, prompts = [it.prompt_id for it in items], [it.prompt for it in items]
    else:
        from prefroute.cli.common import resolve_data_dir
        from prefroute.data.outcomes import load_outcomes

        outcomes = load_outcomes(table, resolve_data_dir(data_dir))
        ids, prompts = list(outcomes.ids), list(outcomes.prompts)
    probs = members = None
    if router is not None:
        from prefroute.router import load_router

        loaded = load_router(router)
        probs = loaded.strong_win_prob(prompts)
        member_proba = getattr(loaded.predictor, "member_proba", None)
        if member_proba is not None and len(loaded.predictor.members_) > 1:
            members = np.column_stack(list(member_proba(prompts).values()))
    picked = select_prompts(prompts, budget, seed=seed, method=method, strong_win_prob=probs,
                            member_probs=members, uncertainty_weight=uncertainty_weight)
    lines = []
    for rank, (i, u) in enumerate(zip(picked.indices, picked.uncertainty, strict=True)):
        lines.append(json.dumps({"prompt_id": ids[i], "prompt": prompts[i], "rank": rank,
                                 "uncertainty": None if np.isnan(u) else round(float(u), 6)}))
    atomic_write_text(out, "\n".join(lines) + "\n")
    if ids_out is not None:
        atomic_write_text(ids_out, "\n".join(ids[i] for i in picked.indices) + "\n")
    typer.echo(f"picked {len(picked.indices)} of {len(prompts)} prompts ({method}"
               f"{', router uncertainty' if probs is not None else ''}) -> {out}")
