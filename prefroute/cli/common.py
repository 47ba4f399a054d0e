"""Helpers shared by the CLI commands: logging set-up and the data directory."""

from __future__ import annotations

import logging
from pathlib import Path

from prefroute.data.paths import default_data_dir


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("prefroute").setLevel(logging.INFO if verbose else logging.WARNING)


def resolve_data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else default_data_dir()
