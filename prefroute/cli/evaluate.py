"""`prefroute eval`: routing quality of a checkpoint on stored benchmark outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute._logging import logger
from prefroute.cli.common import resolve_data_dir
from prefroute.errors import check_int
from prefroute.io import OutputError, check_output_file

# Resamples beyond this change the CI's third decimal by nothing and take minutes.
MAX_BOOTSTRAP = 100_000


def evaluate(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="stored outcomes: mt-bench, mmlu, gsm8k, mmlu_pro, routerbench"
    ),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="or your own outcome table: a correctness CSV or JSONL "
        "(prompt + one column per model)"
    ),
    strong_model: str | None = typer.Option(
        None, "--strong-model", help="strong model's column (default: the checkpoint's pair)"
    ),
    weak_model: str | None = typer.Option(
        None, "--weak-model", help="weak model's column (default: the checkpoint's pair)"
    ),
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

    Decontamination is on by default: the checkpoint's own training prompts (stored as
    fingerprints) and prompts within 0.95 cosine of its recorded training sources are left
    out, and the counts are printed. A warning says when the evaluated pair is not the
    checkpoint's.

    Example: prefroute eval runs/mf --benchmark gsm8k --data-dir ../shared/data --json
    Example: prefroute eval runs/auto --benchmark mmlu_pro --strong-model gpt-4o-2024-05-13
    --weak-model Mixtral-8x7B-Instruct-v0.1
    """
    import numpy as np

    from prefroute.data.outcome_files import load_outcome_file
    from prefroute.errors import ConfigError
    from prefroute.evaluate import evaluate_router, plot_routing_curves, prepare_eval_set
    from prefroute.router import load_router
    from prefroute.training import load_training_battles

    check_int("--bootstrap", "prefroute eval", n_bootstrap, high=MAX_BOOTSTRAP)
    if plot is not None:
        _check_plot(plot, overwrite, [p for p in (checkpoint, outcomes) if p])
    if (benchmark is None) == (outcomes is None):
        raise ConfigError("give exactly one of --benchmark (stored outcomes) or --outcomes FILE")
    router = load_router(checkpoint)
    table = load_outcome_file(outcomes) if outcomes is not None else None
    data_dir = resolve_data_dir(data_dir) if table is None or data_dir else data_dir
    strong_model, weak_model = _pair(table or benchmark, data_dir, router, strong_model,
                                     weak_model)
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
    from prefroute.evaluate.benchmarks import training_fingerprints

    eval_set = prepare_eval_set(
        table or benchmark,
        data_dir,
        strong_model=strong_model,
        weak_model=weak_model,
        train_prompts=train_prompts,
        decontaminate=decontaminate,
        train_fingerprints=training_fingerprints(router) if decontaminate else None,
    )
    result = evaluate_router(
        router, table or benchmark, data_dir, eval_set=eval_set, n_bootstrap=n_bootstrap
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


def _check_plot(plot: Path, overwrite: bool, inputs: list[Path]) -> None:
    """--plot is a new .png file (or one --overwrite may replace), never an input or a file
    inside an input folder such as the checkpoint."""
    check_output_file(plot, overwrite=overwrite, inputs=inputs, flag="--plot")
    if plot.suffix.lower() != ".png":
        raise OutputError(f"--plot {plot}: the routing curve is a PNG; give a path ending in "
                          ".png")


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


def _pair(benchmark, data_dir, router, strong: str | None, weak: str | None
          ) -> tuple[str | None, str | None]:
    """--strong-model/--weak-model, else the checkpoint's pair where the table has it, else
    the table's default pair."""
    from prefroute.data.aliases import ModelAliases
    from prefroute.data.outcomes import OutcomeTable, load_outcomes

    if strong and weak:
        return strong, weak
    table = benchmark if isinstance(benchmark, OutcomeTable) else load_outcomes(benchmark,
                                                                                data_dir)
    aliases = ModelAliases()
    by_canonical = {aliases.canonical(m): m for m in table.models}

    def column(name: str | None, own: str) -> str | None:
        return name or by_canonical.get(aliases.canonical(own))

    return column(strong, router.strong_model), column(weak, router.weak_model)
