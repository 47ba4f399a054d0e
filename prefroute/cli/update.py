"""`prefroute update`: fold new battles into a router checkpoint, or swap in a new model."""

from __future__ import annotations

from pathlib import Path

import typer

from prefroute._logging import logger
from prefroute.cli.common import resolve_data_dir
from prefroute.errors import ConfigError
from prefroute.io import check_output_dir, staged_output_dir


def _load(sources: list[str], data_dir: Path | None, strong: str, weak: str, clean: bool):
    from prefroute.training import load_training_battles

    needs_dir = any(not Path(s).exists() for s in sources)
    return load_training_battles(
        sources, resolve_data_dir(data_dir) if needs_dir else data_dir,
        strong_model=strong, weak_model=weak, clean=clean,
    )


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
        [], "--replay", help="mf: old battles to replay (default: the checkpoint's sources)"
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
    """Update a router without retraining: sw_bt appends to its tables; mf warm-starts.

    Examples: prefroute update runs/sw_bt --data judged.jsonl --out runs/sw_bt-2;
    prefroute update runs/mf --data new_model_battles.jsonl --weak-model my-new-model
    --out runs/mf-new
    """
    from prefroute.data.aliases import ModelAliases
    from prefroute.loop.update import update_router
    from prefroute.router import load_router

    if strong_model is not None and weak_model is not None:
        raise ConfigError("swap one side at a time: give --strong-model or --weak-model")
    check_output_dir(out, overwrite=overwrite, inputs=[checkpoint])  # fail before any work
    router = load_router(checkpoint)
    aliases = ModelAliases()  # battles are canonicalised on load: so are the swapped names
    strong_model = None if strong_model is None else aliases.canonical(strong_model)
    weak_model = None if weak_model is None else aliases.canonical(weak_model)
    strong = strong_model or router.strong_model
    weak = weak_model or router.weak_model
    battles = _load(data, data_dir, strong, weak, not no_clean)
    replay_battles = None
    if router.router_type == "mf" and strong_model is None and weak_model is None and not no_replay:
        sources = replay or list((router.training or {}).get("sources") or [])
        if sources:
            replay_battles = _load(sources, data_dir, router.strong_model, router.weak_model,
                                   not no_clean)
            logger.info("replaying from %d old battles (%s)", len(replay_battles), sources)
        else:
            typer.echo("no replay battles (the checkpoint records no sources; --replay FILE "
                       "adds some): training on the new battles only", err=True)
    new, report = update_router(
        router, battles, strong_model=strong_model, weak_model=weak_model,
        replay=replay_battles, replay_size=replay_size, epochs=epochs,
        prior_strength=prior_strength, parent=checkpoint,
        data_name=", ".join(Path(d).name for d in data), data_sources=list(data),
    )
    with staged_output_dir(out, overwrite=overwrite, inputs=[checkpoint]) as stage:
        new.save_pretrained(stage)
    typer.echo(report.line())
    typer.echo(f"saved the updated router to {out}; its threshold {new.threshold:.4f} is the "
               "parent's: recalibrate with prefroute calibrate")
