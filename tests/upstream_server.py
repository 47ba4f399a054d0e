"""A real OpenAI-compatible HTTP server on 127.0.0.1 to stand in for an LLM provider.

``FakeUpstream`` answers ``POST /v1/chat/completions``, ``/v1/completions`` and
``/v1/responses`` (JSON, or SSE with ``stream: true``) with a deterministic echo of the last
user turn, and can be switched at any time to fail with 500, refuse with 429 or hang. It
counts requests per model and status, records the headers it got, and notices clients that
leave while it hangs. Its error messages quote the Authorization header it received, like a
careless provider, so a test can check that the router never passes a key on.

``ServerThread`` runs any ASGI app with uvicorn in a background thread on a free port.
Run this file to serve a FakeUpstream from the command line (prints ``PORT <n>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODES = ("ok", "fail", "rate_limit", "hang", "break_stream", "stall_stream")


class ServerThread:
    """Serve ``app`` with uvicorn in a daemon thread; ``port`` is known once ``start`` returns."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 20.0,
        **uvicorn_options: Any,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            log_level="debug",
            access_log=True,
            lifespan="on",
            timeout_graceful_shutdown=2,
            **uvicorn_options,
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn-test")
        self.port: int | None = None

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeUpstream:
    """An OpenAI-compatible chat completions endpoint with switchable failure modes.

    mode: "ok", "fail" (500), "rate_limit" (429 with Retry-After: 1), "hang" (answers
        nothing for ``hang_s`` seconds or until ``stop``); for streams only, "break_stream"
        (the role chunk and two words, then an error event) or "stall_stream" (the same, then
        silence).
    delay_s: added before every answer (simulated model latency).
    """

    def __init__(
        self,
        name: str = "upstream",
        *,
        mode: str = "ok",
        delay_s: float = 0.0,
        hang_s: float = 30.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.name = name
        self.mode = mode
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.crash_message = "the model crashed"  # what "break_stream" reports
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.requests = 0
        self.by_model: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.authorizations: set[str] = set()
        self.request_ids: list[str] = []
        self.paths: Counter[str] = Counter()
        self.disconnects = 0  # clients that left while a "hang" was holding their answer
        self.last_body: dict[str, Any] | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._chat, methods=["POST"]),
                Route("/v1/responses", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        self._thread: ServerThread | None = None

    # lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._released.clear()
        self._thread = ServerThread(self.app).start()
        return self

    def stop(self) -> None:
        self._released.set()  # let hanging handlers return so shutdown is quick
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._thread is not None, "start the server first"
        return f"{self._thread.url}/v1"

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return self.requests if status is None else self.by_status[status]

    # handlers -------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model"}]})

    def _record(self, request: Request, body: dict[str, Any], status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_model[str(body.get("model"))] += 1
            self.by_status[status] += 1
            self.authorizations.add(request.headers.get("authorization", ""))
            self.request_ids.append(request.headers.get("x-request-id", ""))
            self.paths[request.url.path] += 1
            self.last_body = body

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        authorization = request.headers.get("authorization", "")
        mode = self.mode
        status = {"fail": 500, "rate_limit": 429, "hang": 0}.get(mode, 200)
        self._record(request, body, status)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if mode == "hang":
            deadline = time.monotonic() + self.hang_s
            while not self._released.is_set() and time.monotonic() < deadline:
                if await request.is_disconnected():
                    with self._lock:
                        self.disconnects += 1
                    break
                await asyncio.sleep(0.05)
            return JSONResponse(
                {"error": {"message": "hung", "type": "server_error"}}, status_code=500
            )
        if mode in ("fail", "rate_limit"):
            # a careless provider that quotes the credentials it got
            message = f"{self.name} failed for request with Authorization: {authorization}"
            kind = "server_error" if mode == "fail" else "rate_limit_error"
            headers = {"retry-after": "1"} if mode == "rate_limit" else {}
            return JSONResponse(
                {"error": {"message": message, "type": kind, "param": None, "code": None}},
                status_code=status,
                headers=headers,
            )
        path = request.url.path
        if path.endswith("/responses"):
            if body.get("stream"):
                return StreamingResponse(
                    self._responses_stream(body, mode), media_type="text/event-stream"
                )
            return JSONResponse(self._response_object(body, "completed"))
        if body.get("stream"):
            stream = self._stream(body, mode)
            if path.endswith("/v1/completions"):
                stream = self._as_text_completion(stream)
            return StreamingResponse(stream, media_type="text/event-stream")
        if path.endswith("/v1/completions"):
            return JSONResponse(self._text_completion(body))
        return JSONResponse(self._completion(body))

    def _reply_text(self, body: dict[str, Any]) -> str:
        if "prompt" in body:  # completions
            prompt = body["prompt"]
            last = prompt if isinstance(prompt, str) else str(prompt[-1])
        elif "input" in body:  # responses
            items = body["input"]
            if isinstance(items, str):
                last = items
            else:
                users = [i.get("content") for i in items if i.get("role") == "user"]
                content = users[-1] if users else ""
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content)
                last = content
        else:
            users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
            last = users[-1] if users and isinstance(users[-1], str) else ""
        return f"{self.name}/{body.get('model')} echoes: {last[:60]}"

    def _text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._reply_text(body)
        return {
            "id": f"cmpl-{self.name}-{self.requests}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": f"{body.get('model')}-upstream-version",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }

    async def _as_text_completion(self, chat_stream):
        """The chat stream's events re-shaped as legacy completions chunks."""
        async for event in chat_stream:
            if event.startswith("data: {"):
                chunk = json.loads(event[6:])
                if "choices" in chunk:
                    chunk["object"] = "text_completion"
                    chunk["choices"] = [
                        {
                            "index": 0,
                            "text": c["delta"].get("content", ""),
                            "finish_reason": c["finish_reason"],
                            "logprobs": None,
                        }
                        for c in chunk["choices"]
                    ]
                event = f"data: {json.dumps(chunk)}\n\n"
            yield event

    def _response_object(self, body: dict[str, Any], status: str, text: str | None = None):
        text = self._reply_text(body) if text is None else text
        output = []
        if text:
            output = [
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        return {
            "id": f"resp_{self.name}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": f"{body.get('model')}-upstream-version",
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 10,
                "output_tokens": len(text.split()),
                "total_tokens": 10 + len(text.split()),
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }

    async def _responses_stream(self, body: dict[str, Any], mode: str = "ok"):
        """Responses API events: created, output_text deltas, completed (or an error event)."""
        seq = 0

        def event(data: dict[str, Any]) -> str:
            nonlocal seq
            data["sequence_number"] = seq
            seq += 1
            return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"

        created = self._response_object(body, "in_progress", text="")
        yield event({"type": "response.created", "response": created})
        words = self._reply_text(body).split(" ")
        for i, word in enumerate(words):
            if i == 2 and mode == "break_stream":
                crash = self.crash_message
                yield event({"type": "error", "code": "server_error", "message": crash})
                return
            yield event({
                "type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": word if i == 0 else " " + word, "logprobs": [],
            })  # fmt: skip
        done = self._response_object(body, "completed")
        yield event({"type": "response.completed", "response": done})

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._reply_text(body)
        return {
            "id": f"chatcmpl-{self.name}-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{body.get('model')}-upstream-version",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": len(text.split()),
                "total_tokens": 10 + len(text.split()),
            },
        }

    async def _stream(self, body: dict[str, Any], mode: str = "ok"):
        words = self._reply_text(body).split(" ")
        base = {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": f"{body.get('model')}-upstream-version",
        }
        first = {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        yield f"data: {json.dumps(first)}\n\n"
        for i, word in enumerate(words):
            if i == 2 and mode == "break_stream":
                error = {"error": {"message": self.crash_message, "type": "server_error"}}
                yield f"data: {json.dumps(error)}\n\n"
                return
            if i == 2 and mode == "stall_stream":
                deadline = time.monotonic() + self.hang_s
                try:
                    while not self._released.is_set() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                except asyncio.CancelledError:  # the client (the router) closed the stream
                    with self._lock:
                        self.disconnects += 1
                    raise
                return
            piece = word if i == 0 else " " + word
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a fake OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    upstream = FakeUpstream(args.name, mode=args.mode, delay_s=args.delay_s)
    config = uvicorn.Config(
        upstream.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                return
            await asyncio.sleep(0.01)
        print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task

    asyncio.run(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
