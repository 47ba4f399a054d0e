"""`prefroute eval`: routing quality of a checkpoint on stored benchmark outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute._logging import logger
from prefroute.cli.common import resolve_data_dir
from prefroute.errors import check_int
from prefroute.io import check_output_file


def evaluate(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    benchmark: str = typer.Option(..., "--benchmark", help="mt-bench, mmlu or gsm8k"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
    plot: Path | None = typer.Option(None, "--plot", help="write the routing curve PNG here"),
    decontaminate: bool = typer.Option(
        True,
        "--decontaminate/--no-decontaminate",
        help="drop eval prompts within 0.95 cosine of the router's recorded training prompts",
    ),
    n_bootstrap: int = typer.Option(1000, "--bootstrap", help="resamples for the APGR 95% CI"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --plot file"),
) -> None:
    """APGR (with CI), CPT and the routing curve, beside the random and oracle routers.

    Example: prefroute eval runs/mf --benchmark gsm8k --data-dir ../shared/data --json
    """
    import numpy as np

    from prefroute.evaluate import evaluate_router, plot_routing_curves, prepare_eval_set
    from prefroute.router import load_router
    from prefroute.training import load_training_battles

    check_int("--bootstrap", "prefroute eval", n_bootstrap)
    if plot is not None:
        check_output_file(plot, overwrite=overwrite, inputs=[checkpoint], flag="--plot")
    data_dir = resolve_data_dir(data_dir)
    router = load_router(checkpoint)
    train_prompts = None
    sources = named_sources((router.training or {}).get("sources") or [], checkpoint)
    if decontaminate and sources:
        battles = load_training_battles(
            sources,
            data_dir,
            strong_model=router.strong_model,
            weak_model=router.weak_model,
            clean=False,
        )
        train_prompts = sorted(set(battles.prompts))
        logger.info(
            "decontaminating against %d training prompts from %s", len(train_prompts), sources
        )
    eval_set = prepare_eval_set(
        benchmark,
        data_dir,
        train_prompts=train_prompts,
        decontaminate=decontaminate and train_prompts is not None,
    )
    result = evaluate_router(
        router, benchmark, data_dir, eval_set=eval_set, n_bootstrap=n_bootstrap
    )
    if plot is not None:
        plot_routing_curves([result], plot)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(result.to_markdown())
    typer.echo(
        "CPT: the first crossing on the curve over every strong-call rate, not RouteLLM's "
        "interpolation between its 11 decile points (that one is 'cpt_routellm' in --json)"
    )
    dropped = ", ".join(f"{k}: {v}" for k, v in result.dropped.items() if v)
    typer.echo(
        f"\n{result.n_prompts} prompts evaluated" + (f" (dropped {dropped})" if dropped else "")
    )
    probs = router.strong_win_prob(eval_set.prompts)
    strong = probs >= router.threshold
    quality = np.where(strong, eval_set.strong_scores, eval_set.weak_scores).mean()
    typer.echo(
        f"at the checkpoint's threshold {router.threshold:.4f}: {100 * strong.mean():.1f}% "
        f"strong calls, quality {quality:.3f} (weak {result.weak_quality:.3f}, "
        f"strong {result.strong_quality:.3f})"
    )


def named_sources(sources: list, checkpoint: Path) -> list[str]:
    """The recorded training sources that are named data sets; a checkpoint may not make us
    read files it names, so recorded file paths are skipped (and said so)."""
    from prefroute.data.loaders import NAMED_SOURCES

    named = [
        s for s in sources
        if isinstance(s, str) and (s in NAMED_SOURCES or s.startswith("golden:"))
    ]
    skipped = [s for s in sources if s not in named]
    if skipped:
        logger.warning(
            "%s records training files %s; not reading files a checkpoint names, so "
            "decontamination uses only the named sources %s",
            checkpoint, skipped, named,
        )
    return named
