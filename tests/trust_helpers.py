"""Shared pieces of the trust tests: a real embeddings server, the CLI in a subprocess,
folder snapshots (to prove nothing was deleted or half-written) and checkpoint tampering."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


class EmbeddingServer:
    """A real OpenAI-compatible ``POST /v1/embeddings`` server on 127.0.0.1 (port 0).

    Answers deterministic ``dim``-d vectors and records every request's Authorization header.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.requests: list[dict] = []
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization")}
                )
                texts = body["input"]
                data = []
                for i, text in enumerate(texts):
                    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
                    vector = np.random.default_rng(seed).standard_normal(server.dim)
                    data.append({"object": "embedding", "index": i, "embedding": vector.tolist()})
                payload = json.dumps(
                    {"object": "list", "data": data, "model": body["model"],
                     "usage": {"prompt_tokens": 1, "total_tokens": 1}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> EmbeddingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RecordingEnviron(dict):
    """A stand-in for ``os.environ`` that records every name looked up."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.read: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.read.append(key)
        return super().__getitem__(key)

    def get(self, key: str, default: object = None) -> object:
        self.read.append(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.append(str(key))
        return super().__contains__(key)


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m prefroute.cli.main ARGS`` with this checkout first on the path."""
    environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    environ.pop("PREFROUTE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "prefroute.cli.main", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The command failed with ``code``, one error line (plus hint) naming every needle."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (and its siblings' names)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(parent: Path) -> list[str]:
    """Temporary siblings a failed write might leave behind (``.NAME.tmp-*``)."""
    return sorted(p.name for p in Path(parent).iterdir() if ".tmp-" in p.name)


def copy_checkpoint(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def edit_config(folder: Path, edit) -> dict:
    """Apply ``edit(config)`` to a checkpoint's config.json in place (a tampering author)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return config


def walk_specs(value: object) -> Iterator[dict]:
    """Every embedder spec ({"name", "params"}) nested in a config."""
    if isinstance(value, dict):
        if isinstance(value.get("name"), str) and isinstance(value.get("params"), dict):
            yield value
        for item in value.values():
            yield from walk_specs(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_specs(item)


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 (a free port) serving ``handler`` in a thread, for
    use as a context manager; ``base_url`` ends in /v1 as OpenAI-style clients expect."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ScriptedChatServer(LocalHTTPServer):
    """A real ``POST /v1/chat/completions`` server on 127.0.0.1 answering 200 with the raw
    bodies ``script(n)`` returns for the n-th request (bytes, content type)."""

    def __init__(self, script) -> None:
        self.script = script
        self.count = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    n = server.count
                    server.count += 1
                body, content_type = server.script(n)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


def chat_body(content: object = "[[A]]", usage: object = "default") -> bytes:
    """A chat-completion JSON body; ``usage=None`` leaves usage out."""
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "judge-m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
    }
    if usage == "default":
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The real ``prefroute`` entry point in this process: (exit code, stdout, stderr)."""
    from prefroute.cli.main import main

    monkeypatch.setattr(sys, "argv", ["prefroute", *args])
    monkeypatch.delenv("PREFROUTE_DEBUG", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
