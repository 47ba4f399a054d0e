"""`prefroute augment select`: choose which prompts to label next."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute.errors import ConfigError
from prefroute.io import OutputError, atomic_write_text, check_output_file


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
    labelled: Path | None = typer.Option(
        None, "--labelled", help="battles labelled so far (JSONL/CSV/Parquet, e.g. from "
        "`augment golden`): they leave the pool, and the default method becomes "
        "disagreement"),
    method: str | None = typer.Option(
        None, "--method", help="kmeans (a stratified sample over k-means strata, which keeps the "
        "pool's mix; the default without --labelled), "
        "kcenter (farthest first), or disagreement (where the two models are predicted to "
        "disagree; needs --labelled; the default with it)"),
    uncertainty_weight: float = typer.Option(
        0.5, "--uncertainty-weight",
        help="with --router: 0 plain stratified draws, 1 draws inside a stratum by "
        "uncertainty alone"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="folder in the shared/data layout (--table)"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace existing --out / --ids-out files"),
) -> None:
    """Pick --budget prompts to label: diverse, and uncertain for --router if given; with
    --labelled, where the two models are likely to disagree (ties teach a router nothing).

    Example: prefroute augment select --table mmlu_pro --budget 200 --router runs/auto
    --out picks.jsonl --ids-out picks.txt; then prefroute augment golden --table mmlu_pro
    --ids-file picks.txt ...; next round: add --labelled with the battles labelled so far.
    """
    import numpy as np

    from prefroute.selection import select_prompts

    if (pool is None) == (table is None):
        raise ConfigError("give exactly one of --pool (a prompts file) or --table (stored "
                          "outcomes)")
    _check_outputs(out, ids_out, overwrite, [p for p in (pool, labelled, router) if p])
    if pool is not None:
        from data_aug.items import read_prompts

        items = read_prompts(pool)
        ids, prompts = [it.item_id for it in items], [it.prompt for it in items]
    else:
        from prefroute.cli.common import resolve_data_dir
        from prefroute.data.outcomes import load_outcomes

        outcomes = load_outcomes(table, resolve_data_dir(data_dir))
        ids, prompts = list(outcomes.ids), list(outcomes.prompts)
    method = method or ("disagreement" if labelled is not None else "kmeans")
    vectors = disagreement = None
    if labelled is not None:
        ids, prompts, vectors, disagreement = _with_labels(ids, prompts, labelled)
    elif method == "disagreement":
        raise ConfigError("--method disagreement needs --labelled (the battles labelled so "
                          "far)")
    probs = members = None
    if router is not None:
        from prefroute.router import load_router

        loaded = load_router(router)
        probs = loaded.strong_win_prob(prompts)
        member_proba = getattr(loaded.predictor, "member_proba", None)
        if member_proba is not None and len(loaded.predictor.members_) > 1:
            members = np.column_stack(list(member_proba(prompts).values()))
    picked = select_prompts(prompts, budget, seed=seed, method=method, vectors=vectors,
                            strong_win_prob=probs, member_probs=members,
                            uncertainty_weight=uncertainty_weight, disagreement=disagreement)
    lines = []
    for rank, (i, u) in enumerate(zip(picked.indices, picked.uncertainty, strict=True)):
        lines.append(json.dumps({"prompt_id": ids[i], "prompt": prompts[i], "rank": rank,
                                 "uncertainty": None if np.isnan(u) else round(float(u), 6)}))
    atomic_write_text(out, "\n".join(lines) + "\n")
    if ids_out is not None:
        atomic_write_text(ids_out, "\n".join(ids[i] for i in picked.indices) + "\n")
    typer.echo(f"picked {len(picked.indices)} of {len(prompts)} prompts ({method}"
               f"{', router uncertainty' if probs is not None else ''}) -> {out}")


def _check_outputs(out: Path, ids_out: Path | None, overwrite: bool,
                   inputs: list[Path]) -> None:
    """Before any work: --out and --ids-out are two different new files (or --overwrite),
    neither of them an input."""
    check_output_file(out, overwrite=overwrite, inputs=inputs)
    if ids_out is None:
        return
    if ids_out.resolve() == out.resolve():
        raise OutputError(f"--ids-out {ids_out} is also --out; give two different files")
    check_output_file(ids_out, overwrite=overwrite, inputs=inputs, flag="--ids-out")


def _with_labels(ids: list[str], prompts: list[str], labelled: Path) -> tuple:
    """The pool without prompts labelled already, its vectors, and each prompt's predicted
    P(the models disagree), from a model of the labelled battles' outcomes."""
    import numpy as np

    from prefroute.data.battles import Battles
    from prefroute.selection import disagreement_probability, pool_embedder

    battles = Battles.read(labelled)
    winners = np.array(battles.column("winner"), dtype=object)
    decided = np.isin(winners, ["model_a", "model_b"]).astype(np.float64)
    by_prompt: dict[str, list[float]] = {}
    for prompt, d in zip(battles.column("prompt"), decided, strict=True):
        by_prompt.setdefault(prompt, []).append(float(d))
    keep = [i for i, p in enumerate(prompts) if p not in by_prompt]
    dropped = len(prompts) - len(keep)
    if dropped:
        typer.echo(f"left out {dropped} pool prompts labelled already in {labelled}", err=True)
    ids, prompts = [ids[i] for i in keep], [prompts[i] for i in keep]
    embedder = pool_embedder(prompts)
    labelled_prompts = list(by_prompt)
    share = np.array([np.mean(v) for v in by_prompt.values()])
    vectors = embedder.encode(prompts)
    disagreement = disagreement_probability(vectors, embedder.encode(labelled_prompts), share)
    return ids, prompts, vectors, disagreement
