"""Where the reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

from prefroute.errors import DataError

ENV_VAR = "PREFROUTE_DATA_DIR"


def default_data_dir() -> Path:
    """``$PREFROUTE_DATA_DIR``, else the first ``shared/data`` found beside or above the cwd."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        for candidate in (folder / "shared" / "data", folder / "../shared/data"):
            if (candidate / "README.md").exists() or (candidate / "alpaca_eval").is_dir():
                return candidate.resolve()
    raise DataError(
        f"no data directory found: set {ENV_VAR} or pass --data-dir (a folder in the "
        "shared/data layout: alpaca_eval/, routellm_evals/, mmlu_pro/, ...)"
    )
