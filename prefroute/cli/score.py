"""`prefroute score`: P(strong wins) for each prompt of a file, streamed in batches."""

from __future__ import annotations

import gc
from pathlib import Path

import typer

from prefroute.errors import check_choice, check_int

ENGINES = ("local", "ray")
# prefroute.scoring.DEFAULT_BATCH_SIZE; not imported here so `prefroute --help` stays fast
DEFAULT_BATCH_SIZE = 4096


def score(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    prompts: Path = typer.Option(
        ...,
        "--prompts",
        help="JSONL / CSV / Parquet with a prompt column, or text with one prompt per line: "
        "a file, or a folder of files of one type (read in sorted name order)",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="output .jsonl, .csv or .parquet (a folder of Parquet files with --engine ray): "
        "[id], prompt, strong_win_prob, routed_to",
    ),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="the prompt column"),
    id_field: str | None = typer.Option(
        None, "--id-field", help="an input column copied to each output row"
    ),
    with_decision: bool = typer.Option(
        False, "--with-decision", help="add the routed side (strong/weak) and the threshold"
    ),
    no_prompt: bool = typer.Option(
        False, "--no-prompt", help="leave the prompt text out of the output"
    ),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="prompts per batch"),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="local processes (default: all cores for 50,000+ rows, or 32 MiB+ when the row "
        "count is unknown; else 1)",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="scoring threads in one process (default: all cores for routers that allow it: "
        "mf and sw_bt on wordllama)",
    ),
    limit: int | None = typer.Option(None, "--limit", help="score only the first N prompts"),
    engine: str = typer.Option("local", "--engine", help="local, or ray (Ray Data)"),
    address: str | None = typer.Option(
        None, "--address", help="with --engine ray: the cluster to join (auto, ray://host:10001)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
) -> None:
    """Score prompts with a saved router; rows come out in input order.

    Examples:

        prefroute score runs/mf --prompts log.parquet --id-field request_id --out scores.parquet

        prefroute score runs/mf --prompts log.parquet --engine ray --address auto --out scores/
    """
    from prefroute.router import load_router
    from prefroute.scoring import score_file

    check_choice("engine", "prefroute score", engine, ENGINES)
    check_int("batch_size", "prefroute score (--batch-size)", batch_size)
    check_int("limit", "prefroute score (--limit)", limit, optional=True)
    check_int("workers", "prefroute score (--workers)", workers, optional=True)
    check_int("threads", "prefroute score (--threads)", threads, optional=True)
    if engine == "ray":
        if limit is not None or workers is not None or threads is not None:
            typer.echo("--limit, --workers and --threads apply to --engine local only", err=True)
            raise typer.Exit(2)
        from prefroute.scoring.ray_engine import score_with_ray

        rows = score_with_ray(
            checkpoint, prompts, out, address=address, prompt_field=prompt_field,
            id_field=id_field, with_decision=with_decision, with_prompt=not no_prompt,
            batch_size=batch_size, overwrite=overwrite,
        )
        typer.echo(f"wrote {rows:,} scores to {out}")
        return
    router = load_router(checkpoint)
    # Everything loaded so far lives until exit: keep the collector from re-traversing it
    # (a full collection over ~90k start-up objects cost 0.06 s of GIL-held time in 20k rows).
    gc.freeze()
    # Arrow's default pool (mimalloc) touched more fresh memory here than the C allocator;
    # measured in one process scoring 20k prompts, the C allocator cut CPU ~10% (RESULTS #18).
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    summary = score_file(
        router, prompts, out, prompt_field=prompt_field, id_field=id_field,
        with_decision=with_decision, with_prompt=not no_prompt, batch_size=batch_size,
        workers=workers, threads=threads, limit=limit, overwrite=overwrite,
    )
    how = f"{summary.workers} process{'es' if summary.workers > 1 else ''}"
    if summary.threads > 1:
        how += f", {summary.threads} threads"
    typer.echo(
        f"wrote {summary.rows:,} scores to {out} ({summary.strong:,} to {router.strong_model}, "
        f"{how})"
    )
