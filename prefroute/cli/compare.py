"""`prefroute compare`: gate a new router against the old one on the same prompts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute._logging import logger
from prefroute.cli.common import resolve_data_dir
from prefroute.errors import ConfigError


def _training_prompts(routers, data_dir: Path) -> list[str] | None:
    """The prompts of both routers' recorded sources (named sources or files still present)."""
    from prefroute.data.loaders import NAMED_SOURCES
    from prefroute.training import load_training_battles

    prompts: set[str] = set()
    for router in routers:
        for source in (router.training or {}).get("sources") or []:
            is_named = source in NAMED_SOURCES
            if not is_named and not Path(source).is_file():
                logger.warning("compare: training source %r is not here; its prompts are not "
                               "decontaminated against", source)
                continue
            battles = load_training_battles([source], data_dir, clean=False,
                                            strong_model=router.strong_model,
                                            weak_model=router.weak_model)
            prompts.update(battles.prompts)
    return sorted(prompts) or None


def compare(
    old: Path = typer.Argument(..., help="the current router checkpoint"),
    new: Path = typer.Argument(..., help="the candidate router checkpoint"),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="stored outcomes: mt-bench, mmlu, gsm8k, mmlu_pro, routerbench"
    ),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="file with prompt, strong_score, weak_score per row"
    ),
    strong_model: str | None = typer.Option(
        None, "--strong-model", help="--benchmark: the table's strong column (default: its pair)"
    ),
    weak_model: str | None = typer.Option(
        None, "--weak-model", help="--benchmark: the table's weak column"
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    decontaminate: bool = typer.Option(
        True, "--decontaminate/--no-decontaminate",
        help="--benchmark: drop prompts within 0.95 cosine of either router's training prompts",
    ),
    n_bootstrap: int = typer.Option(2000, "--bootstrap", help="paired resamples"),
    level: float = typer.Option(0.95, "--level", help="confidence level of the CI"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
) -> None:
    """APGR of OLD and NEW on the same prompts and a paired bootstrap CI of NEW - OLD.

    Exits with status 1 when NEW is significantly worse (the CI lies below 0), so a CI job
    can gate a release. Example: prefroute compare runs/mf runs/mf-2 --benchmark gsm8k
    """
    from prefroute.evaluate import prepare_eval_set
    from prefroute.loop.compare import compare_probabilities, probabilities, read_outcomes_file
    from prefroute.router import load_router

    if (benchmark is None) == (outcomes is None):
        raise ConfigError("give exactly one of --benchmark NAME or --outcomes FILE")
    old_router, new_router = load_router(old), load_router(new)
    if outcomes is not None:
        prompts, strong_scores, weak_scores = read_outcomes_file(outcomes)
        name = outcomes.name
    else:
        data_dir = resolve_data_dir(data_dir)
        train_prompts = (_training_prompts([old_router, new_router], data_dir)
                         if decontaminate else None)
        eval_set = prepare_eval_set(benchmark, data_dir, strong_model=strong_model,
                                    weak_model=weak_model, train_prompts=train_prompts,
                                    decontaminate=train_prompts is not None)
        prompts, strong_scores, weak_scores = (eval_set.prompts, eval_set.strong_scores,
                                               eval_set.weak_scores)
        name = benchmark
    result = compare_probabilities(
        name, strong_scores, weak_scores, probabilities(old_router, prompts),
        probabilities(new_router, prompts), n_bootstrap=n_bootstrap, seed=seed, level=level,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines():
            typer.echo(line)
    if result.new_is_worse:
        raise typer.Exit(1)
