"""Helpers shared by the CLI commands: logging set-up and the data directory."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from prefroute.errors import ConfigError


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("prefroute").setLevel(logging.INFO if verbose else logging.WARNING)


def resolve_data_dir(data_dir: Path | None) -> Path:
    from prefroute.data.paths import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


def renamed_option(
    value: str | None, old_value: str | None, flag: str, old_flag: str, *, required: bool = False
) -> str | None:
    """The value of ``flag``, also accepted for one release under its old hidden ``old_flag``."""
    if old_value is not None:
        if value is not None and value != old_value:
            raise ConfigError(f"{old_flag} is the old spelling of {flag}; give only {flag}")
        typer.echo(
            f"note: {old_flag} is now {flag}; the old spelling goes in the next release", err=True
        )
        value = old_value
    if required and value is None:
        raise ConfigError(f"missing option {flag}")
    return value
