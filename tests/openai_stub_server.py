"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It speaks ``POST /v1/chat/completions`` over HTTP from a ``ThreadingHTTPServer`` in a
background thread (port 0 = a free port), answers with a user-supplied function, counts
tokens deterministically (whitespace-separated words), and injects faults on demand:
HTTP 429 / 500 / 401, answers slower than the client's timeout, and a gate that holds
requests (to kill a client at a known point). Every request is logged with what was
delivered, so tests can compute exact expected token totals.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def count_tokens(text: str) -> int:
    """The stub's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass
class Request:
    """One chat request as the handler sees it."""

    model: str
    messages: list[dict]
    max_tokens: int | None
    attempt: int  # 1 for the first request with this (model, messages), 2 for the next...

    @property
    def user(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def key(self) -> str:
        return request_key(self.model, self.messages)


def request_key(model: str, messages: list[dict]) -> str:
    blob = json.dumps([model, messages], sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()


@dataclass
class Fault:
    """What to do instead of a normal answer: ``status`` 429/500/401, or ``slow``."""

    status: int | None = None
    slow_s: float | None = None
    retry_after: float | None = None


@dataclass
class Served:
    """A log line: the request and what happened to it."""

    model: str
    user: str
    attempt: int
    outcome: str  # "ok", "429", "500", "401", "slow", "dropped"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    content: str = ""
    messages: list[dict] = field(default_factory=list)


Handler = Callable[[Request], "str | Fault"]


class Gate:
    """Holds requests while closed; servers that share one stop answering together."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.held = 0  # requests waiting at the gate now
        self.lock = threading.Lock()


class StubOpenAIServer:
    """Serve ``handler(request) -> text | Fault`` as an OpenAI chat-completions endpoint.

    Examples
    --------
    >>> with StubOpenAIServer(lambda r: "hello there") as server:  # doctest: +SKIP
    ...     openai.OpenAI(base_url=server.base_url, api_key="x").chat.completions.create(...)
    """

    def __init__(self, handler: Handler, *, gate: Gate | None = None) -> None:
        self.handler = handler
        self.log: list[Served] = []
        self.attempts: Counter = Counter()
        self._lock = threading.Lock()
        self.gate = gate or Gate()
        self._hold_after: int | None = None
        self.active = 0  # requests past the gate whose answer is not fully written yet
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # gate -----------------------------------------------------------------------------
    def hold_after(self, delivered: int) -> None:
        """Once this server delivered ``delivered`` answers, close the gate: it and every
        server sharing the gate hold further requests until release()."""
        with self._lock:
            self._hold_after = delivered
            if self.delivered_count() >= delivered:
                self.gate.open.clear()

    def release(self) -> None:
        """Open the gate; held requests are dropped (connection closed, nothing served)."""
        with self._lock:
            self._hold_after = None
        self.gate.open.set()

    @property
    def held(self) -> int:
        with self.gate.lock:
            return self.gate.held

    # accounting -----------------------------------------------------------------------
    def delivered(self) -> list[Served]:
        with self._lock:
            return [s for s in self.log if s.outcome == "ok"]

    def quiet(self) -> bool:
        """No request is being answered right now (held ones do not count)."""
        with self._lock:
            return self.active == 0

    def delivered_count(self) -> int:
        return sum(1 for s in self.log if s.outcome == "ok")

    def tokens(self) -> tuple[int, int]:
        ok = self.delivered()
        return sum(s.prompt_tokens for s in ok), sum(s.completion_tokens for s in ok)

    def outcomes(self) -> Counter:
        with self._lock:
            return Counter(s.outcome for s in self.log)

    # HTTP -----------------------------------------------------------------------------
    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client went away mid-request: nothing to answer
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                messages = body.get("messages", [])
                model = body.get("model", "")
                with stub._lock:
                    key = request_key(model, messages)
                    stub.attempts[key] += 1
                    request = Request(model, messages, body.get("max_tokens"), stub.attempts[key])
                    with stub.gate.lock:
                        held = not stub.gate.open.is_set()
                        if held:
                            stub.gate.held += 1
                    if not held:
                        stub.active += 1
                if held:
                    stub.gate.open.wait()
                    with stub.gate.lock:
                        stub.gate.held -= 1
                    with stub._lock:
                        stub.log.append(Served(model, request.user, request.attempt, "dropped"))
                    self.close_connection = True
                    return
                try:
                    self._answer(request)
                finally:
                    with stub._lock:
                        stub.active -= 1

            def _answer(self, request: Request) -> None:
                model, messages = request.model, request.messages
                reply = stub.handler(request)
                if isinstance(reply, Fault):
                    if reply.slow_s is not None:
                        with stub._lock:
                            stub.log.append(Served(model, request.user, request.attempt, "slow"))
                        time.sleep(reply.slow_s)
                        self.close_connection = True
                        return
                    with stub._lock:
                        stub.log.append(Served(model, request.user, request.attempt,
                                               str(reply.status)))
                    headers = {}
                    if reply.retry_after is not None:
                        headers["retry-after"] = str(reply.retry_after)
                    self._send(reply.status, {"error": {"message": f"injected {reply.status}",
                                                        "type": "injected", "code": reply.status}},
                               headers)
                    return
                prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
                completion_tokens = count_tokens(reply)
                served = Served(model, request.user, request.attempt, "ok", prompt_tokens,
                                completion_tokens, reply, messages)
                with stub._lock:
                    stub.log.append(served)
                    if stub._hold_after is not None and stub.delivered_count() >= stub._hold_after:
                        stub.gate.open.clear()
                self._send(200, {
                    "id": f"chatcmpl-{len(stub.log)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })

        return _Handler
