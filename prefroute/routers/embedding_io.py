"""Building, fitting and reloading a router's embedder the same way in every router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefroute.embed.base import Embedder, build_embedder
from prefroute.errors import CheckpointError, ConfigError


def fitted_embedder(spec: str | dict[str, Any] | Embedder, texts: list[str]) -> Embedder:
    """The embedder of ``spec``, fitted on ``texts`` when it learns state (tf-idf, features)."""
    embedder = build_embedder(spec)
    if embedder.needs_fit:
        embedder.fit(texts)
    return embedder


def reloaded_embedder(spec: str | dict[str, Any] | Embedder, saved_spec: Any,
                      directory: Path) -> Embedder:
    """The embedder a checkpoint was made with; its spec must match the saved one."""
    where = Path(directory) / "config.json"
    try:
        embedder = build_embedder(spec)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    if embedder.spec() != saved_spec:
        raise CheckpointError(
            f"{where}: the 'embedder' parameter {embedder.spec()} does not match the embedder "
            f"the saved vectors were made with {saved_spec}"
        )
    if embedder.needs_fit:
        embedder.load_state(Path(directory))
    return embedder
