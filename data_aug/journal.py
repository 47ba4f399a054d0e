"""An append-only JSONL journal that makes a paid labelling run resumable.

Records (one JSON object a line, each fsync'd before the next call can count on it):

- ``{"type": "header", "config": {...}}``: first line; a resumed run must match it.
- ``{"type": "call", "item_id", "role", "model", "prompt_tokens", "completion_tokens",
  "content", ...}``: one finished (paid) request. Calls let a resumed run reuse answers it
  already bought for an unfinished item, and make token totals exact across interruptions.
- ``{"type": "error", "item_id", "role", "model", "error", "attempt"}``: one failed attempt
  (429, 500, timeout...), written when it happens so retries are counted even if killed.
- ``{"type": "battle", "item_id", "battle": {...}, ...}`` or ``{"type": "failure",
  "item_id", "reason", ...}``: an item's end. A resumed run skips items that have one.

A run killed mid-write leaves at most a torn last line; reading drops it (with a warning)
and the next append first cuts the file back to the last complete line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prefroute._logging import logger
from prefroute.errors import ConfigError, DataError

try:  # POSIX advisory lock: two runs must not append to one journal
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TERMINAL = ("battle", "failure")


@dataclass
class JournalState:
    """What a journal says so far."""

    header: dict | None = None
    calls: dict[str, list[dict]] = field(default_factory=dict)  # item_id -> call records
    finished: dict[str, dict] = field(default_factory=dict)  # item_id -> last terminal record
    errors: list[dict] = field(default_factory=list)  # failed attempts
    records: int = 0
    torn_bytes: int = 0  # length of a torn last line that was dropped
    valid_bytes: int = 0  # file length up to the end of the last complete record

    def all_calls(self) -> list[dict]:
        return [c for calls in self.calls.values() for c in calls]


def read_journal(path: str | Path) -> JournalState:
    """Parse a journal; a torn (unparsable, unterminated) last line is dropped, not fatal."""
    path = Path(path)
    state = JournalState()
    if not path.exists():
        return state
    data = path.read_bytes()
    lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        end = offset + len(raw) + (0 if is_last else 1)
        if not raw.strip():
            offset = end
            if not is_last:
                state.valid_bytes = end
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError("not a journal record")
        except (ValueError, UnicodeDecodeError) as e:
            if is_last:
                state.torn_bytes = len(raw)
                logger.warning("journal %s: dropped a torn last line (%d bytes) left by an "
                               "interrupted run", path, len(raw))
                break
            raise DataError(f"corrupt journal line ({e}); only a torn LAST line can be "
                            "repaired", file=str(path), row=number) from None
        _apply(state, record, str(path), number)
        offset = end
        state.valid_bytes = end
    return state


def _apply(state: JournalState, record: dict, file: str, row: int) -> None:
    kind = record["type"]
    state.records += 1
    if kind == "header":
        if state.header is None:
            state.header = record
        return
    item = record.get("item_id")
    if not isinstance(item, str):
        raise DataError("journal record without item_id", file=file, row=row, field="item_id")
    if kind == "call":
        state.calls.setdefault(item, []).append(record)
    elif kind == "error":
        state.errors.append(record)
    elif kind in TERMINAL:
        state.finished[item] = record
    else:
        raise DataError(f"unknown journal record type {kind!r}", file=file, row=row, field="type")


def config_diff(old: Mapping, new: Mapping) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: journal has {old.get(k)!r}, this run has {new.get(k)!r}"
            for k in keys if old.get(k) != new.get(k)]


class Journal:
    """Open a journal for appending (lock, repair a torn tail, check the header).

    Use as a context manager::

        with Journal(path, config) as journal:
            state = journal.state          # what earlier runs finished
            journal.append({"type": "call", ...})
    """

    def __init__(self, path: str | Path, config: Mapping) -> None:
        self.path = Path(path)
        self.config = dict(config)
        self.state = JournalState()
        self._file = None

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> JournalState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the whole run
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.close()
                self._file = None
                raise ConfigError(f"journal {self.path} is in use by another run") from None
        self.state = read_journal(self.path)
        size = self.path.stat().st_size
        if self.state.valid_bytes < size:
            # cut a torn tail so the next record starts on a fresh line
            self._file.truncate(self.state.valid_bytes)
            self._fsync()
        elif size and not self.path.read_bytes().endswith(b"\n"):
            self._file.write(b"\n")
            self._fsync()
        if self.state.header is None:
            self.append({"type": "header", "config": self.config})
            self.state.header = {"type": "header", "config": self.config}
        else:
            diff = config_diff(self.state.header.get("config", {}), self.config)
            if diff:
                raise ConfigError(f"journal {self.path} was written by a run with other settings "
                                  f"({'; '.join(diff)}); use another --journal to start afresh")
        return self.state

    def append(self, record: Mapping) -> None:
        """Write one record and fsync it: once this returns, the record survives a crash."""
        if self._file is None:
            raise ConfigError("journal is not open")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._file.write(line.encode("utf-8"))
        self._fsync()

    def _fsync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
