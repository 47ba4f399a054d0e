"""`prefroute update`: fold new battles into a router checkpoint, or swap in a new model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prefroute._logging import logger
from prefroute.cli.common import resolve_data_dir
from prefroute.errors import ConfigError
from prefroute.io import check_output_dir, staged_output_dir

if TYPE_CHECKING:
    from prefroute.router import Router


def _load(sources: list[str], data_dir: Path | None, strong: str, weak: str, clean: bool):
    from prefroute.training import load_training_battles

    needs_dir = any(not Path(s).exists() for s in sources)
    return load_training_battles(
        sources, resolve_data_dir(data_dir) if needs_dir else data_dir,
        strong_model=strong, weak_model=weak, clean=clean,
    )


def _files(sources: list[str]) -> list[Path]:
    """The sources that are files or folders here (named sources are not)."""
    return [Path(s) for s in sources if Path(s).exists()]


def _shown(names: list[str], limit: int = 10) -> str:
    """The names quoted (control characters escaped), the first ``limit`` of them."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _replay_sources(router: Router, replay: list[str], checkpoint: Path) -> list[str]:
    """The old battles to replay: only what the user passes with --replay. The sources a
    checkpoint records are provenance, never read (a checkpoint may not choose files)."""
    from prefroute.loop.update import recorded_training

    if replay:
        return list(replay)
    recorded = recorded_training(router, checkpoint)["sources"]
    if recorded:
        typer.echo(f"no replay battles: {checkpoint} records the training sources "
                   f"{_shown(recorded)}; update does not read sources a checkpoint names, "
                   "so pass the ones you trust with --replay SOURCE (a file, or a named "
                   "source with --data-dir): training on the new battles only", err=True)
    else:
        typer.echo("no replay battles (the checkpoint records no sources; --replay FILE "
                   "adds some): training on the new battles only", err=True)
    return []


def update(
    checkpoint: Path = typer.Argument(..., help="the fitted router checkpoint (sw_bt or mf)"),
    data: list[str] = typer.Option(
        ..., "--data", help="new battles: a file or a named source (repeat for several)"
    ),
    out: Path = typer.Option(..., "--out", help="folder for the new checkpoint"),
    strong_model: str | None = typer.Option(
        None, "--strong-model", help="swap the strong side for this model (learnt from --data)"
    ),
    weak_model: str | None = typer.Option(
        None, "--weak-model", help="swap the weak side for this model (learnt from --data)"
    ),
    replay: list[str] = typer.Option(
        [], "--replay", help="mf: old battles to replay, a file or a named source (repeat for "
        "several; the sources a checkpoint records are never read: name them here)"
    ),
    no_replay: bool = typer.Option(False, "--no-replay", help="mf: train on the new battles only"),
    replay_size: int | None = typer.Option(
        None, "--replay-size", help="mf: old battles replayed (default: as many as new ones)"
    ),
    epochs: int = typer.Option(3, "--epochs", help="mf: passes over new + replayed battles"),
    prior_strength: float = typer.Option(
        1.0, "--prior-strength", help="mf swap: weight of the prior from the known models"
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="folder of named sources"),
    no_clean: bool = typer.Option(False, "--no-clean", help="skip the short/duplicate filters"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
) -> None:
    """Update a router without retraining: sw_bt appends to its tables; mf warm-starts,
    replaying the old battles you pass with --replay (the training sources a checkpoint
    records are lineage only: they are listed, never read).

    Examples: prefroute update runs/sw_bt --data judged.jsonl --out runs/sw_bt-2;
    prefroute update runs/mf --data new.jsonl --replay old.jsonl --out runs/mf-2;
    prefroute update runs/mf --data new_model_battles.jsonl --weak-model my-new-model
    --out runs/mf-new
    """
    from prefroute.data.aliases import ModelAliases
    from prefroute.loop.update import update_router
    from prefroute.router import load_router

    if strong_model is not None and weak_model is not None:
        raise ConfigError("swap one side at a time: give --strong-model or --weak-model")
    inputs = [checkpoint, *_files(data), *_files(replay)]  # --out may never hold these
    check_output_dir(out, overwrite=overwrite, inputs=inputs)  # fail before any work
    router = load_router(checkpoint)
    aliases = ModelAliases()  # battles are canonicalised on load: so are the swapped names
    strong_model = None if strong_model is None else aliases.canonical(strong_model)
    weak_model = None if weak_model is None else aliases.canonical(weak_model)
    strong = strong_model or router.strong_model
    weak = weak_model or router.weak_model
    battles = _load(data, data_dir, strong, weak, not no_clean)
    replay_battles = None
    if router.router_type == "mf" and strong_model is None and weak_model is None and not no_replay:
        sources = _replay_sources(router, replay, checkpoint)  # --replay only: in inputs
        if sources:
            replay_battles = _load(sources, data_dir, router.strong_model, router.weak_model,
                                   not no_clean)
            logger.info("replaying from %d old battles (%s)", len(replay_battles), sources)
    new, report = update_router(
        router, battles, strong_model=strong_model, weak_model=weak_model,
        replay=replay_battles, replay_size=replay_size, epochs=epochs,
        prior_strength=prior_strength, parent=checkpoint,
        data_name=", ".join(Path(d).name for d in data), data_sources=list(data),
    )
    with staged_output_dir(out, overwrite=overwrite, inputs=inputs) as stage:
        new.save_pretrained(stage)
    typer.echo(report.line())
    typer.echo(f"saved the updated router to {out}; its threshold {new.threshold:.4f} is the "
               "parent's: recalibrate with prefroute calibrate")
