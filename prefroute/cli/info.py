"""`prefroute info`: what a checkpoint is, from its config (the model card's facts).

Reads config.json only: no weights are loaded, nothing is run. For an ``auto`` router it also
prints the members, their weights and the out-of-fold table.
"""

from __future__ import annotations

from pathlib import Path

import typer


def info(
    checkpoint: str = typer.Argument(
        ..., help="checkpoint folder, or a Hugging Face Hub repo id such as org/name"
    ),
    revision: str | None = typer.Option(None, "--revision", help="hub revision (branch, tag)"),
    as_json: bool = typer.Option(False, "--json", help="print config.json's content as JSON"),
) -> None:
    """Print a checkpoint's pair, training data, calibration, evaluation and files.

    Example: prefroute info runs/sw_bt
    """
    import json

    from prefroute.checkpoint import read_config
    from prefroute.hub import resolve_checkpoint
    from prefroute.model_card import describe_checkpoint

    folder = resolve_checkpoint(checkpoint, revision=revision)
    config = read_config(folder)
    if as_json:
        typer.echo(json.dumps(config, indent=2))
        return
    typer.echo(describe_checkpoint(folder))
    if config["type"] == "auto":
        from prefroute.routers.auto import describe_auto

        typer.echo(describe_auto(config, str(Path(folder) / "config.json")))
