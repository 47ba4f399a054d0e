"""`prefroute info`: what a checkpoint is, from its config (the model card's facts)."""

from __future__ import annotations

import typer


def info(
    checkpoint: str = typer.Argument(
        ..., help="checkpoint folder, or a Hugging Face Hub repo id such as org/name"
    ),
    revision: str | None = typer.Option(None, "--revision", help="hub revision (branch, tag)"),
) -> None:
    """Print a checkpoint's pair, training data, calibration, evaluation and files.

    Example: prefroute info runs/sw_bt
    """
    from prefroute.hub import resolve_checkpoint
    from prefroute.model_card import describe_checkpoint

    typer.echo(describe_checkpoint(resolve_checkpoint(checkpoint, revision=revision)))
