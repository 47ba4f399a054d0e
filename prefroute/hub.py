"""Share routers through the Hugging Face Hub, the way models are shared.

``resolve_checkpoint("org/name")`` downloads (or, with ``HF_HUB_OFFLINE=1``, finds in the local
hub cache) a checkpoint snapshot and returns its folder; a path that exists locally is used
as is. What comes from the hub is data like any checkpoint: config.json, safetensors and a
README, loaded by the same checks; nothing in it picks a URL, an env var, code or a path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from prefroute.errors import CheckpointError

if TYPE_CHECKING:
    from prefroute.router import Router

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


def looks_like_repo_id(source: str | Path) -> bool:
    return isinstance(source, str) and bool(_REPO_ID.match(source)) and ".." not in source


def resolve_checkpoint(source: str | Path, *, revision: str | None = None) -> Path:
    """A local checkpoint folder for ``source``: a folder, or a hub repo id ``org/name``."""
    path = Path(source)
    # "runs/typo" names a missing local folder (its parent exists), not a hub repo: no network
    if path.exists() or path.parent.is_dir() or not looks_like_repo_id(source):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id=str(source), revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{source!r} is not a local checkpoint folder, and the Hugging Face Hub has no "
            f"such router repo reachable from here ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return _without_links(snapshot)


def _without_links(snapshot: Path) -> Path:
    """The snapshot as plain files: the hub cache links files to blobs, and a checkpoint
    folder must hold regular files only. Copied once beside the cache's snapshots."""
    if not any(p.is_symlink() for p in snapshot.rglob("*")):
        return snapshot
    target = snapshot.parent.parent / "prefroute_files" / snapshot.name
    if not target.is_dir():
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copytree(snapshot, staging, symlinks=False)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(staging)
    return target


def push_to_hub(
    router: Router,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload prefroute router",
) -> str:
    """Save ``router`` (with its model card) and upload it to the hub repo; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefroute-push-") as folder:
        router.save_pretrained(folder, card_name=repo_id)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message
        )
    return str(getattr(commit, "repo_url", f"https://huggingface.co/{repo_id}"))
