"""Safe outputs: atomic file writes and output folders that never clobber what we did not make.

Every command that writes goes through here, so a failed or killed run leaves either the old
output or nothing, never a half-written file that looks complete, and ``--out`` never deletes a
folder the user did not ask to replace.
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


def _is_protected(path: Path) -> str | None:
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the file-system root"
    if resolved == Path.home().resolve():
        return "your home folder"
    if resolved == Path.cwd().resolve():
        return "the current folder"
    if (resolved / ".git").exists():
        return "a git repository"
    return None


def check_output_dir(
    out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Path:
    """Check, before any work, that ``out`` may be written as a new output folder.

    Refused: an existing file; an existing non-empty folder unless ``overwrite``; a folder
    that is (or holds, or lies inside) one of ``inputs``; the root, home, current folder or a
    git repository whatever ``overwrite`` says. Nothing is created or deleted here.
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
    if out.is_dir() and any(out.iterdir()):
        protected = _is_protected(out)
        if protected:
            raise OutputError(f"--out {out} is {protected}; refusing to replace it")
        if not overwrite:
            raise OutputError(
                f"--out {out} exists and is not empty; pass --overwrite to replace it, "
                "or choose a new folder"
            )
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

    Refused: a folder; an existing file unless ``overwrite``; one of ``inputs``.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file path")
    resolved = out.resolve()
    for source in inputs:
        if resolved == Path(source).resolve():
            raise OutputError(f"{flag} {out} is also an input; write the result elsewhere")
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

    The previous ``out`` (only when ``overwrite`` allowed it) is moved aside and removed after
    the new folder is in place. On failure the temporary folder is removed and ``out`` is
    untouched.
    """
    out = check_output_dir(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = _temp_sibling(out, directory=True)
    try:
        yield stage
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
