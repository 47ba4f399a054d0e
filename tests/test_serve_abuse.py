"""The routing server under abuse, over real HTTP on 127.0.0.1 (issue 12, items 6-7).

Client auth, body limits, slow clients, redaction before truncation, no upstream address in
errors, and the keep-alive race behind the once-flaky 200-request test. Upstreams are real
servers (tests/upstream_server.py); the router is the mf router of test_serve.py, trained on
the real AlpacaEval battles.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import test_serve
from serve_helpers import oai, serving
from test_serve import SECRET, STRONG, WEAK, make_settings, user

from prefroute.errors import ConfigError
from prefroute.serve.auth import API_KEYS_ENV, ClientAuth
from prefroute.serve.errors import client_message, shorten
from prefroute.serve.upstream import Upstream

CLIENT_KEY = "client-key-7d1e9b3a55"
# the fixtures of test_serve.py (the trained router is shared, not trained twice)
alpaca_prompts = test_serve.alpaca_prompts
mf_checkpoint = test_serve.mf_checkpoint
upstreams = test_serve.upstreams


# A. abuse: auth, body size, slow clients, redaction -------------------------------------
def test_client_auth_401_and_the_client_key_never_goes_upstream(
    mf_checkpoint, upstreams, tmp_path, monkeypatch
):
    _, router = mf_checkpoint
    strong, weak = upstreams
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# team keys\n{CLIENT_KEY}\n\nsecond-key-0000\n")
    monkeypatch.setenv(API_KEYS_ENV, "env-key-12345678")
    settings = make_settings({"mf": router}, strong, weak, api_key_file=key_file)
    with serving(settings) as url:
        for key in (CLIENT_KEY, "second-key-0000", "env-key-12345678"):
            reply = oai(url, key).chat.completions.create(model="router-mf-0", messages=user("a"))
            assert reply.model == STRONG
        with pytest.raises(openai.AuthenticationError) as info:
            oai(url, "wrong-key-123456").chat.completions.create(
                model="router-mf-0", messages=user("hi")
            )
        assert info.value.code == "invalid_api_key"
        assert "wrong-key-123456" not in str(info.value.body)
        for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer"}):
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "router-mf-0", "messages": user("hi")},
                headers=headers,
                timeout=10,
            )
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error" and error["code"] == "missing_api_key"
        for path in ("/v1/models", "/v1/responses", "/v1/completions"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    # only the upstream's own key ever reached the upstreams; 3 requests got through
    assert strong.authorizations == {f"Bearer {SECRET}"} and strong.count() == 3
    assert weak.count() == 0


def test_key_files_are_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    assert ClientAuth.from_sources(None) is None
    bad = tmp_path / "keys.txt"
    bad.write_text("good-key-12345\nshort\n")
    with pytest.raises(ConfigError, match=r"keys.txt, line 2: an API key must be at least 8"):
        ClientAuth.from_sources(bad)
    bad.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="holds no key"):
        ClientAuth.from_sources(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        ClientAuth.from_sources(tmp_path / "missing.txt")
    bad.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ClientAuth.from_sources(bad)


def _raw_request(port: int, head: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, time.perf_counter() - started


def test_oversized_bodies_get_413_at_once_while_other_requests_succeed(mf_checkpoint, upstreams):
    _, router = mf_checkpoint
    strong, weak = upstreams
    limit = 64 * 1024
    settings = make_settings({"mf": router}, strong, weak, max_body_bytes=limit)
    with serving(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        # declares 1 GB and sends nothing: answered from the headers alone
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        answer, elapsed = _raw_request(port, head)
        assert answer.startswith(b"HTTP/1.1 413") and elapsed < 5.0
        # endless headers sent fast are cut off at 64 KiB, long before the 10 s header timeout
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            with pytest.raises(OSError):  # reset or broken pipe once the server closes
                for i in range(10_000):
                    s.sendall(f"X-Filler-{i}: {'y' * 1000}\r\n".encode())
                    if i > 200:
                        time.sleep(0.001)
        assert time.perf_counter() - started < 8.0
        big = {"model": "router-mf-0", "messages": user("x" * (limit + 10))}

        def chunked():  # no Content-Length: capped while it streams in
            data = httpx.Request("POST", "/", json=big).content
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        def normal(i: int) -> str:
            return (
                oai(url)
                .chat.completions.create(model="router-mf-1", messages=user(f"small {i}"))
                .model
            )

        with ThreadPoolExecutor(4) as pool:
            small = pool.map(normal, range(20))
            for _ in range(3):
                response = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=10)
                assert response.status_code == 413
                assert response.json()["error"]["code"] == "request_too_large"
                response = httpx.post(f"{url}/v1/chat/completions", content=chunked(), timeout=10)
                assert response.status_code == 413
            assert list(small) == [WEAK] * 20
        # just under the limit is fine
        fits = {"model": "router-mf-1", "messages": user("y" * (limit - 200))}
        assert httpx.post(f"{url}/v1/chat/completions", json=fits, timeout=10).status_code == 200
        metrics = httpx.get(f"{url}/metrics.json", timeout=10).json()
    assert metrics["requests"]["by_status"]["413"] == 7
    assert weak.count() == 21 and strong.count() == 0


def test_bodies_no_upstream_could_take_are_400_not_500(mf_checkpoint, upstreams):
    """A lone surrogate or NaN in the JSON body is the client's error, not the router's."""
    _, router = mf_checkpoint
    strong, weak = upstreams
    with serving(make_settings({"mf": router}, strong, weak)) as url:
        bodies = [
            b'{"model": "router-mf-0", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
            b'{"model": "router-mf-0", "temperature": NaN, "messages": [{"role": "user", '
            b'"content": "hi"}]}',
        ]
        for body in bodies:
            answer = httpx.post(f"{url}/v1/chat/completions", content=body,
                                headers={"Content-Type": "application/json"}, timeout=30)
            assert answer.status_code == 400, (body, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
        # a valid body still routes
        fine = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          json={"model": "router-mf-0", "messages": user("hi \u00e9")})
        assert fine.status_code == 200, fine.text


def test_slow_clients_do_not_pin_the_server(mf_checkpoint, upstreams):
    """Slowloris: connections that trickle headers (or a body) in are cut off, and until then
    they neither block other requests nor keep the connection cap full."""
    _, router = mf_checkpoint
    strong, weak = upstreams
    settings = make_settings(
        {"mf": router},
        strong,
        weak,
        header_timeout_s=3.0,
        body_timeout_s=1.0,
        max_client_connections=12,
    )
    with serving(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        # a body that never completes gets 408 after the body timeout
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model": '
        )
        answer, elapsed = _raw_request(port, head)
        assert answer.startswith(b"HTTP/1.1 408") and 0.8 <= elapsed < 5.0
        slow = []
        for _ in range(11):  # 11 connections: with one more the server is at its cap of 12
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        opened = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:  # one more header line every 0.2 s, never the blank line
            while not stop.is_set():
                for i, s in enumerate(slow):
                    try:
                        s.sendall(f"X-Slow-{i}: y\r\n".encode())
                    except OSError:
                        pass
                time.sleep(0.2)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            # they hold the cap: a new request is refused at once (503), not left waiting
            pinned = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "router-mf-1", "messages": user("a")},
                timeout=10,
            )
            if time.monotonic() - opened < 3.0:  # (a very busy machine may be past the timeout)
                assert pinned.status_code == 503
            time.sleep(max(0.0, opened + 4.5 - time.monotonic()))
            closed = 0
            for s in slow:
                try:
                    s.settimeout(5)
                    closed += s.recv(1024) == b""
                except OSError:  # reset by the server
                    closed += 1
            assert closed == len(slow)  # the header timeout closed every trickling connection
            # and the cap is free again: 11 requests at once are all answered
            with ThreadPoolExecutor(11) as pool, oai(url) as shared:
                models = list(
                    pool.map(
                        lambda i: (
                            shared.chat.completions.create(
                                model="router-mf-1", messages=user(f"b{i}")
                            ).model
                        ),
                        range(11),
                    )
                )
            assert models == [WEAK] * 11
        finally:
            stop.set()
            trickler.join(5)
            for s in slow:
                s.close()


def test_secrets_are_redacted_before_messages_are_cut(
    mf_checkpoint, upstreams, caplog, capfd, monkeypatch
):
    _, router = mf_checkpoint
    strong, weak = upstreams
    # the unit: a key straddling the cut leaves nothing of itself
    text = "x" * 490 + SECRET + " then more"
    assert SECRET[:7] in shorten(text)  # cutting first would leak part of the key
    cut = client_message(text, [SECRET], limit=500)
    assert SECRET[:4] not in cut and cut == "x" * 490 + "*** the..."
    assert client_message("Bearer abcdefgh123 at https://up.internal:9000/v1") == (
        "Bearer *** at <url>"
    )
    assert client_message("key sk-unknownsecret12345 and ?api_key=zzz") == (
        "key sk-*** and ?api_key=***"
    )
    # end to end: an upstream quotes the key right where the 500-character cut falls
    caplog.set_level(logging.DEBUG)
    # an earlier in-process uvicorn (default log config) may have cut the access logger off
    # from the root logger that caplog listens on
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "disabled", False)
    access_lines: list[str] = []
    listener = logging.Handler(logging.DEBUG)
    listener.emit = lambda record: access_lines.append(record.getMessage())
    access.addHandler(listener)
    strong.name = "s" * 440  # the key then straddles the 500-character cut
    strong.mode = "fail"
    weak.mode = "break_stream"
    weak.crash_message = f"crashed near https://10.0.0.7:8000/v1 with Bearer {SECRET} " * 30
    settings = make_settings({"mf": router}, strong, weak, failover=False)
    with serving(settings) as url:
        failed = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "router-mf-0", "messages": user("hi")},
            timeout=10,
        )
        assert failed.status_code == 502 and "Bearer ***" in failed.text
        body = {"model": "router-mf-1", "messages": user("hi there"), "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as r:
            events = [line for line in r.iter_lines() if line]
        assert '"error"' in events[-1] and "failed mid-stream" in events[-1]
        responses_body = {"model": "router-mf-1", "input": "hi there", "stream": True}
        with httpx.stream("POST", f"{url}/v1/responses", json=responses_body, timeout=10) as r:
            responses_events = [line for line in r.iter_lines() if line]
        assert responses_events[-2:][0] == "event: error"
        # a key in a query string does not reach the access log
        httpx.get(f"{url}/v1/models?api_key={SECRET}&x=1", timeout=10)
    access.removeHandler(listener)
    # (litellm, once imported, adds its own filter that writes REDACTED where ours writes ***)
    query_lines = [line for line in access_lines if "/v1/models?" in line and "&x=1" in line]
    assert query_lines, access_lines
    assert not any(SECRET[:10] in line or SECRET[-10:] in line for line in access_lines)
    assert any(("api_key=***" in line) or ("REDACTED" in line) for line in query_lines)
    out, err = capfd.readouterr()
    client_visible = [failed.text, *events, *responses_events]
    server_log = "\n".join(  # (the test's own httpx client logs its URLs: not the server's)
        r.getMessage() for r in caplog.records if r.name.startswith(("prefroute", "uvicorn"))
    )
    assert "upstream failure" in server_log and "stream failed" in server_log
    for text in [*client_visible, server_log, out, err]:
        assert SECRET[:10] not in text and SECRET[-10:] not in text
    for text in client_visible:
        assert "10.0.0.7" not in text and "127.0.0.1" not in text


# B. the keep-alive race of the once-flaky test ----------------------------------------------
class DroppingServer:
    """A raw HTTP/1.1 server that answers the first request of each connection and closes the
    connection when a second one arrives, as an upstream whose keep-alive timer fired in the
    same instant the client reused the connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n")
                     if h.lower().startswith(b"content-length")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                if served == 1:
                    self.dropped += 1
                    break
                served += 1
                body = b'{"id": "x", "object": "chat.completion", "model": "m", "choices": []}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> DroppingServer:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_connection_dropped_on_reuse_is_retried_once():
    with DroppingServer() as server:
        upstream = Upstream("weak", f"http://127.0.0.1:{server.port}/v1", None, timeout=10)

        async def calls() -> list[dict]:
            try:
                return [await upstream.complete({"model": "m"}) for _ in range(3)]
            finally:
                await upstream.aclose()

        answers = asyncio.run(calls())
    assert [a["object"] for a in answers] == ["chat.completion"] * 3
    # calls 2 and 3 each met a dropped connection and were retried on a new one
    assert server.dropped == 2 and upstream.retried == 2 and server.connections == 3
    assert upstream.keepalive_s < 5.0  # expires before uvicorn's 5 s keep-alive closes it
