"""What the server learns from: a rotating JSONL journal of routed requests, shadow answers
and user feedback (``prefroute serve --log-dir DIR``).

Records, one JSON object a line, each with ``type``:

``request``
    ``id`` (the completion id the client got), ``time``, ``router``, ``text`` (the routing
    text), ``strong_win_prob``, ``threshold``, ``side``, ``model`` (the upstream model),
    ``strong_model`` / ``weak_model`` (the pair's upstream names), ``latency_ms``, ``usage``,
    ``stream``, ``shadow`` (whether the other side was asked too) and, with
    ``--log-responses`` only, ``response`` (the answer text).
``shadow``
    The other side's answer to a shadowed request: ``id`` (the request's), ``side``,
    ``model``, ``latency_ms``, ``usage``, ``response`` (kept: a shadow pair is only useful
    for labelling with both answers), or ``error``.
``feedback``
    ``id``, and ``preferred`` (``"this"``: the answer the client got; ``"other"``: the
    other side's) or ``score`` in [0, 1] (how good the answer the client got was).

Each record is written with one ``write`` of a whole line to a file opened for appending,
so a crash loses at most the line being written; readers skip a torn last line. Files are
``journal-000001.jsonl``, ``journal-000002.jsonl``, ...; a new one starts past ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefroute._logging import logger
from prefroute.errors import ConfigError, DataError
from prefroute.serve.errors import InvalidRequestError, ServeError, redact

FILE_PATTERN = re.compile(r"^journal-(\d{6})\.jsonl$")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def journal_files(directory: str | Path) -> list[Path]:
    """The journal files of a folder, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("journal folder not found", file=str(directory))
    return sorted(p for p in directory.iterdir() if FILE_PATTERN.match(p.name))


def iter_journal(directory: str | Path) -> Iterator[tuple[str, int, dict]]:
    """(file, line number, record) for every record, oldest first.

    A last line without its newline (a write cut by a crash) is skipped with a warning; any
    other line that is not a JSON object is a DataError naming the file and line.
    """
    files = journal_files(directory)
    for f_index, path in enumerate(files):
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"not a JSON record ({e})", file=str(path), row=number) from None
            if not isinstance(record, dict) or "type" not in record:
                raise DataError("not a journal record (an object with 'type')",
                                file=str(path), row=number)
            yield str(path), number, record
        if tail.strip():
            where = "last" if f_index == len(files) - 1 else "a rotated"
            logger.warning("journal %s: skipped a torn line at the end of the %s file "
                           "(%d bytes, a write cut short)", path, where, len(tail))


class RotatingJournal:
    """Append-only JSONL files in ``directory``, rotated at ``max_bytes``; thread-safe.

    ``fsync=True`` also survives a power cut (each line flushed to disk, much slower).
    """

    def __init__(self, directory: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 fsync: bool = False) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
            raise ConfigError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        existing = journal_files(self.directory)
        self._number = int(FILE_PATTERN.match(existing[-1].name).group(1)) if existing else 1
        self._fd: int | None = None
        self._size = 0
        self._open()

    @property
    def path(self) -> Path:
        return self.directory / f"journal-{self._number:06d}.jsonl"

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        if self._size:
            # a line torn by a crash is dropped, so the next record starts a clean line
            with open(self.path, "rb") as handle:
                data = handle.read()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning("journal %s: dropped a torn last line (%d bytes) left by a "
                               "crash", self.path, len(data) - keep)
                os.ftruncate(self._fd, keep)
                self._size = keep

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is None:
                raise ConfigError(f"journal {self.directory} is closed")
            if self._size and self._size + len(line) > self.max_bytes:
                os.close(self._fd)
                self._number += 1
                self._open()
            os.write(self._fd, line)  # one write per record: a crash tears at most this line
            if self.fsync:
                os.fsync(self._fd)
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _usage(data: dict) -> dict | None:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


def _answer_text(data: dict) -> str | None:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class RequestLog:
    """The serving side of the loop: journals requests, runs shadow calls, takes feedback.

    Parameters
    ----------
    journal: where records go.
    log_responses: keep the answer text of routed requests (shadow pairs always keep both).
    shadow_rate: fraction of requests also sent to the other side, in the background.
    seed: seeds the shadow sampling (None: nondeterministic).
    secrets: redacted from logged error messages.
    """

    def __init__(self, journal: RotatingJournal, *, log_responses: bool = False,
                 shadow_rate: float = 0.0, seed: int | None = None,
                 secrets: list[str | None] | None = None) -> None:
        if isinstance(shadow_rate, bool) or not isinstance(shadow_rate, (int, float)) or not (
                0.0 <= shadow_rate <= 1.0):
            raise ConfigError(f"shadow_rate must be in [0, 1], got {shadow_rate!r}")
        self.journal = journal
        self.log_responses = log_responses
        self.shadow_rate = float(shadow_rate)
        self.secrets = secrets or []
        self._random = random.Random(seed)
        self._tasks: set[asyncio.Task] = set()
        self.known_ids: set[str] = {
            r["id"] for _, _, r in iter_journal(journal.directory)
            if r.get("type") == "request" and isinstance(r.get("id"), str)
        }
        self.shadow_calls = 0

    # requests -------------------------------------------------------------------------
    def completion_id(self, data: dict) -> str:
        """The id the client sees: the upstream's when it is new, else a fresh one."""
        upstream_id = data.get("id")
        if isinstance(upstream_id, str) and upstream_id and upstream_id not in self.known_ids:
            return upstream_id
        return f"chatcmpl-pr-{uuid.uuid4().hex}"

    def record_request(self, *, request_id: str, router_name: str, text: str,
                       strong_win_prob: float, threshold: float, side: str, model: str,
                       strong_model: str, weak_model: str, started: float,
                       usage: dict | None, response: str | None, stream: bool) -> bool:
        """Journal one routed request; returns whether it is to be shadowed."""
        shadow = self.shadow_rate > 0 and self._random.random() < self.shadow_rate
        record = {
            "type": "request", "id": request_id, "time": time.time(), "router": router_name,
            "text": text, "strong_win_prob": strong_win_prob, "threshold": threshold,
            "side": side, "model": model, "strong_model": strong_model,
            "weak_model": weak_model, "latency_ms": round((time.perf_counter() - started) * 1e3,
                                                          3),
            "usage": usage, "stream": stream, "shadow": shadow,
        }
        if self.log_responses or shadow:
            record["response"] = response
        self.known_ids.add(request_id)
        self.journal.append(record)
        return shadow

    def shadow(self, upstream: Any, body: dict, *, request_id: str, side: str,
               model: str) -> None:
        """Ask ``upstream`` the same request in the background; the client does not wait."""
        task = asyncio.get_running_loop().create_task(
            self._shadow(upstream, {**body, "model": model, "stream": False},
                         request_id=request_id, side=side, model=model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, upstream: Any, body: dict, *, request_id: str, side: str,
                      model: str) -> None:
        started = time.perf_counter()
        record: dict[str, Any] = {"type": "shadow", "id": request_id, "time": time.time(),
                                  "side": side, "model": model}
        try:
            data = await upstream.complete(body)
            record.update(response=_answer_text(data), usage=_usage(data))
        except Exception as e:  # a failed shadow call never reaches the client
            message = e.message if isinstance(e, ServeError) else repr(e)
            record["error"] = redact(str(message), self.secrets)[:500]
        record["latency_ms"] = round((time.perf_counter() - started) * 1e3, 3)
        self.shadow_calls += 1
        self.journal.append(record)

    # feedback -------------------------------------------------------------------------
    def record_feedback(self, body: dict) -> dict:
        """Journal a user's verdict; 404 for an id this server never answered."""
        request_id = body.get("id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequestError("'id' must be the completion id (a string)", param="id",
                                      code="invalid_id")
        has_pref, has_score = "preferred" in body, "score" in body
        if has_pref == has_score:
            raise InvalidRequestError(
                "give exactly one of 'preferred' ('this' or 'other') or 'score' (0..1)",
                code="invalid_feedback")
        record: dict[str, Any] = {"type": "feedback", "id": request_id, "time": time.time()}
        if has_pref:
            if body["preferred"] not in ("this", "other"):
                raise InvalidRequestError("'preferred' must be 'this' or 'other'",
                                          param="preferred", code="invalid_feedback")
            record["preferred"] = body["preferred"]
        else:
            score = body["score"]
            if (isinstance(score, bool) or not isinstance(score, (int, float))
                    or not 0.0 <= score <= 1.0):
                raise InvalidRequestError("'score' must be a number in [0, 1]", param="score",
                                          code="invalid_feedback")
            record["score"] = float(score)
        if request_id not in self.known_ids:
            raise ServeError(f"no completion with id {request_id!r} in this server's journal",
                             status=404, error_type="invalid_request_error", code="unknown_id")
        self.journal.append(record)
        return {"object": "feedback", "id": request_id, "status": "recorded"}

    # streaming ------------------------------------------------------------------------
    async def tee_stream(self, chunks: Any, on_done: Any) -> Any:
        """Relay SSE strings unchanged; collect the answer text and call ``on_done(text)``."""
        parts: list[str] = []
        try:
            async for chunk in chunks:
                if chunk.startswith("data: {"):
                    try:
                        delta = json.loads(chunk[6:])["choices"][0].get("delta", {})
                        if isinstance(delta.get("content"), str):
                            parts.append(delta["content"])
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        pass
                yield chunk
        finally:
            on_done("".join(parts))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let running shadow calls finish (up to ``timeout`` s), then close the journal."""
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        self.journal.close()


# --- hooks for the app (kept here so app.py only calls them) ---------------------------------
def build_request_log(settings: Any, secrets: list[str | None]) -> RequestLog | None:
    """The RequestLog of ``ServeSettings`` (None without ``log_dir``)."""
    if getattr(settings, "log_dir", None) is None:
        if getattr(settings, "shadow_rate", 0.0) or getattr(settings, "log_responses", False):
            raise ConfigError("--shadow-rate and --log-responses need --log-dir")
        return None
    return RequestLog(RotatingJournal(settings.log_dir), log_responses=settings.log_responses,
                      shadow_rate=settings.shadow_rate, seed=settings.shadow_seed,
                      secrets=secrets)


def _pair(state: Any, decision: Any) -> tuple[str, str]:
    router = state.table.routers[decision.router_name]
    return (state.table.upstream_model(router, "strong"),
            state.table.upstream_model(router, "weak"))


def after_completion(state: Any, decision: Any, body: dict, text: str, data: dict,
                     started: float) -> None:
    """Journal a non-streaming answer (its id becomes the journal's) and maybe shadow it."""
    log: RequestLog = state.request_log
    data["id"] = log.completion_id(data)
    strong_model, weak_model = _pair(state, decision)
    shadow = log.record_request(
        request_id=data["id"], router_name=decision.router_name, text=text,
        strong_win_prob=decision.strong_win_prob, threshold=decision.threshold,
        side=decision.side, model=decision.upstream_model, strong_model=strong_model,
        weak_model=weak_model, started=started, usage=_usage(data),
        response=_answer_text(data), stream=False)
    if shadow:
        other = "weak" if decision.side == "strong" else "strong"
        log.shadow(state.upstreams[other], body, request_id=data["id"], side=other,
                   model=weak_model if other == "weak" else strong_model)


def journal_stream(state: Any, decision: Any, body: dict, text: str, chunks: Any,
                   started: float) -> Any:
    """Wrap a relayed SSE stream so that it is journalled (and maybe shadowed) when done."""
    log: RequestLog = state.request_log
    request_id = f"chatcmpl-pr-{uuid.uuid4().hex}"
    strong_model, weak_model = _pair(state, decision)

    def done(answer: str) -> None:
        shadow = log.record_request(
            request_id=request_id, router_name=decision.router_name, text=text,
            strong_win_prob=decision.strong_win_prob, threshold=decision.threshold,
            side=decision.side, model=decision.upstream_model, strong_model=strong_model,
            weak_model=weak_model, started=started, usage=None, response=answer, stream=True)
        if shadow:
            other = "weak" if decision.side == "strong" else "strong"
            log.shadow(state.upstreams[other], body, request_id=request_id, side=other,
                       model=weak_model if other == "weak" else strong_model)

    return log.tee_stream(chunks, done), request_id
