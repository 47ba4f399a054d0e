"""`prefroute info`: what a checkpoint holds (type, pair, threshold, training; auto's members).

Reads config.json only: no weights are loaded, nothing is run.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute.checkpoint import read_config


def info(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    as_json: bool = typer.Option(False, "--json", help="print config.json's content as JSON"),
) -> None:
    """Describe a router checkpoint; for ``auto``: its members, weights and out-of-fold table.

    Example: prefroute info runs/auto
    """
    config = read_config(checkpoint)
    if as_json:
        typer.echo(json.dumps(config, indent=2))
        return
    router = config.get("router") or {}
    typer.echo(f"type: {config['type']}")
    typer.echo(f"pair: strong {router.get('strong_model')!r}, weak {router.get('weak_model')!r}")
    typer.echo(f"threshold: {router.get('threshold')}")
    training = router.get("training") or {}
    if training:
        typer.echo("training: " + ", ".join(f"{k}={v}" for k, v in training.items()
                                            if not isinstance(v, (list, dict)) or k == "sources"))
    if config["type"] == "auto":
        from prefroute.routers.auto import describe_auto

        typer.echo(describe_auto(config))
