"""Safe outputs: atomic file writes and output folders that never clobber what we did not make.

Every command that writes goes through here, so a failed or killed run leaves either the old
output or nothing, never a half-written file that looks complete, and ``--out`` never deletes a
folder the user did not ask to replace. Even with ``--overwrite`` only a folder prefroute wrote
is replaced (a checkpoint, whose config.json lists its files, or a folder whose
``.prefroute-output`` marker does), and only while it holds nothing else; never one holding an
input or the current folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from prefroute.errors import PrefrouteError


class OutputError(PrefrouteError):
    """An output path that cannot or must not be written."""


def current_umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_permissions(folder: Path) -> None:
    """Give what a writer left private (safetensors writes 0600) the umask's default modes;
    executable files keep their execute bits."""
    umask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~umask)
        elif path.is_file():
            executable = path.stat().st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def _temp_sibling(path: Path, *, directory: bool) -> Path:
    """A temporary sibling of ``path``. A file gets the permissions a plain ``open`` would
    (tempfile makes it 0600, which a team sharing the output or a server running as another
    user could not read); a staged folder gets them from ``_plain_permissions``."""
    prefix = f".{path.name}.tmp-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~current_umask())
    return Path(name)


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it into place on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, directory=False)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp sibling, then rename)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp sibling, then rename)."""
    with atomic_write(path, "wb", encoding=None) as handle:
        handle.write(data)
    return Path(path)


OUTPUT_MARKER = ".prefroute-output"  # lists the files of a non-checkpoint folder we wrote


def _is_protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced, whatever --overwrite says (None if it may)."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the file-system root"
    if resolved == Path.home().resolve():
        return "your home folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "the current folder"
    if cwd.is_relative_to(resolved):
        return f"a folder holding the current folder {cwd}"
    if (resolved / ".git").exists():
        return "a git repository"
    return None


def _files_under(folder: Path) -> set[str]:
    """Relative posix paths of everything but folders under ``folder`` (links not followed)."""
    found = set()
    for root, dirs, files in os.walk(folder, followlinks=False):
        names = files + [d for d in dirs if (Path(root) / d).is_symlink()]
        found.update((Path(root) / name).relative_to(folder).as_posix() for name in names)
    return found


def _recorded_files(folder: Path) -> set[str] | None:
    """The files prefroute recorded writing into ``folder``: a checkpoint's config.json
    'files' (plus config.json), or the list in an OUTPUT_MARKER; None if neither is there."""
    import json

    from prefroute.checkpoint import CONFIG_NAME, FILES_KEY, read_config

    marker = folder / OUTPUT_MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            files = json.loads(marker.read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return None
        return {*files, OUTPUT_MARKER}
    if not (folder / CONFIG_NAME).is_file():
        return None
    try:
        files = read_config(folder).get(FILES_KEY)
    except PrefrouteError:
        return None
    return {*map(str, files), CONFIG_NAME} if isinstance(files, dict) else None


def _not_ours(folder: Path) -> str | None:
    """Why the non-empty ``folder`` is not wholly a prefroute output (None if it is)."""
    recorded = _recorded_files(folder)
    if recorded is None:
        return (f"not a prefroute output (no checkpoint config.json, no {OUTPUT_MARKER}); "
                "refusing to replace it even with --overwrite: empty or move it yourself, or "
                "choose a new folder")
    foreign = sorted(_files_under(folder) - recorded)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (f"holds {len(foreign)} files prefroute did not write ({shown}); refusing to "
                "replace it even with --overwrite: move them out, or choose a new folder")
    return None


def mark_output_dir(folder: str | Path) -> None:
    """Record the files of a finished non-checkpoint output folder in its OUTPUT_MARKER, so
    a later --overwrite can tell it from a folder of the user's (checkpoints record their
    files in config.json already)."""
    import json

    from prefroute.checkpoint import is_checkpoint_folder

    folder = Path(folder)
    if is_checkpoint_folder(folder):
        return
    files = sorted(_files_under(folder) - {OUTPUT_MARKER})
    atomic_write_text(folder / OUTPUT_MARKER,
                      json.dumps({"written_by": "prefroute", "files": files}) + "\n")


def check_output_dir(
    out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Path:
    """Check, before any work, that ``out`` may be written as a new output folder.

    Refused: an existing file; an existing non-empty folder unless ``overwrite``; a folder
    that is (or holds, or lies inside) one of ``inputs``; whatever ``overwrite`` says, the
    root, home, a git repository, the current folder or one holding it, and any non-empty
    folder prefroute did not write (or that holds files it did not write). Nothing is
    created or deleted here.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is an existing file; give a folder path")
    resolved = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
            raise OutputError(
                f"--out {out} overlaps the input {source}; write the result to another folder"
            )
    protected = _is_protected(out) if out.is_dir() else None
    if protected:
        raise OutputError(f"--out {out} is {protected}; refusing to replace it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(
                f"--out {out} exists and is not empty; pass --overwrite to replace it, "
                "or choose a new folder"
            )
        foreign = _not_ours(out)
        if foreign:
            raise OutputError(f"--out {out} is {foreign}")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"--out {out}: cannot write under {parent}")
    return out


def check_output_file(
    out: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    flag: str = "--out",
) -> Path:
    """Check, before any work, that ``out`` may be written as an output file.

    Refused: a folder; an existing file unless ``overwrite``; one of ``inputs``, or a path
    inside an input folder (a checkpoint, say).
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file path")
    resolved = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if resolved == src:
            raise OutputError(f"{flag} {out} is also an input; write the result elsewhere")
        if resolved.is_relative_to(src):
            raise OutputError(
                f"{flag} {out} lies inside the input {source}; write the result elsewhere"
            )
    if out.exists() and not overwrite:
        raise OutputError(
            f"{flag} {out} exists; pass --overwrite to replace it, or choose a new path"
        )
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{flag} {out}: cannot write under {parent}")
    return out


@contextlib.contextmanager
def staged_output_dir(
    out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``out`` in one rename.

    The previous ``out`` (only when ``overwrite`` allowed it, and only a folder prefroute
    wrote) is moved aside and removed after the new folder is in place. A finished folder
    that is not a checkpoint gets an OUTPUT_MARKER listing its files. On failure the
    temporary folder is removed and ``out`` is untouched.
    """
    out = check_output_dir(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = _temp_sibling(out, directory=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        mark_output_dir(stage)
        check_output_dir(out, overwrite=overwrite, inputs=inputs)  # still ours after the work
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _plain_permissions(stage)
    old = None
    if out.exists():
        old = _temp_sibling(out, directory=True)
        old.rmdir()
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
