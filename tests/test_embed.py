"""Embedders against the real models, a real local HTTP server and a real on-disk cache."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from prefroute.embed import (
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    CachedEmbedder,
    Embedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    TfidfEmbedder,
    WordLlamaEmbedder,
    build_embedder,
)
from prefroute.embed import minilm as minilm_module
from prefroute.embed import wordllama_embedder as wordllama_module
from prefroute.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
BATTLES = Path("/work/shared/data/alpaca_eval/judge_battles.jsonl")

SIMILAR = ("How do I bake a chocolate cake?", "What is a good recipe for chocolate cake?")
UNRELATED = "Explain the difference between TCP and UDP network protocols."


@pytest.fixture(scope="module")
def alpaca_prompts() -> list[str]:
    if not BATTLES.is_file():
        pytest.skip(f"{BATTLES} is not available")
    prompts: list[str] = []
    with BATTLES.open(encoding="utf-8") as handle:
        for line in handle:
            prompt = json.loads(line)["prompt"]
            if prompt not in prompts:
                prompts.append(prompt)
            if len(prompts) == 40:
                break
    return prompts


def _check_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def _semantic_gap(embedder: Embedder) -> tuple[float, float]:
    a, b, c = embedder.encode([*SIMILAR, UNRELATED])
    return float(a @ b), float(a @ c)


def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ------------------------------------------------------------------ registry
def test_registry_and_default() -> None:
    assert DEFAULT_EMBEDDER == "wordllama"
    assert {"wordllama", "minilm", "openai", "tfidf"} <= set(EMBEDDERS)
    assert isinstance(build_embedder(DEFAULT_EMBEDDER), WordLlamaEmbedder)
    with pytest.raises(ConfigError, match="embedder"):
        build_embedder("no-such-embedder")


@pytest.mark.parametrize(
    "embedder",
    [
        WordLlamaEmbedder(dim=128, max_tokens=512),
        SentenceTransformerEmbedder(batch_size=16, max_seq_length=128),
        OpenAIEmbedder(
            model="text-embedding-3-large",
            base_url="http://127.0.0.1:9/v1",
            dimensions=256,
            batch_size=100,
        ),
        TfidfEmbedder(n_components=32, ngram_range=(1, 1), min_df=2),
    ],
    ids=lambda e: e.name,
)
def test_spec_round_trip(embedder: Embedder) -> None:
    spec = json.loads(json.dumps(embedder.spec()))  # specs must survive a JSON checkpoint
    rebuilt = build_embedder(spec)
    assert type(rebuilt) is type(embedder)
    assert rebuilt.spec() == embedder.spec()
    assert rebuilt.dim == embedder.dim


def test_import_is_cheap() -> None:
    # Building embedders must not import their model libraries either (only encoding does).
    # torch is left out: other prefroute modules import it when the package loads.
    code = (
        "import sys, prefroute.embed as e\n"
        "for name in ('wordllama', 'minilm', 'openai', 'tfidf'): e.build_embedder(name)\n"
        "heavy = ('sentence_transformers', 'transformers', 'wordllama', 'openai', 'numba')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------- wordllama
def test_wordllama_vectors(alpaca_prompts: list[str]) -> None:
    embedder = WordLlamaEmbedder()
    vectors = embedder.encode(alpaca_prompts, batch_size=16)
    _check_unit_rows(vectors, len(alpaca_prompts), 256)
    # Length-sorted chunking must not change the per-text result.
    np.testing.assert_allclose(embedder.encode(alpaca_prompts[::-1])[::-1], vectors, atol=1e-6)
    similar, unrelated = _semantic_gap(embedder)
    assert similar > unrelated + 0.1


def test_wordllama_matryoshka_and_params() -> None:
    full = WordLlamaEmbedder().encode(SIMILAR[0])
    small = WordLlamaEmbedder(dim=64).encode(SIMILAR[0])
    _check_unit_rows(small, 1, 64)
    np.testing.assert_allclose(small[0], full[0, :64] / np.linalg.norm(full[0, :64]), atol=1e-6)
    text = ["one two three four five six seven"]
    assert not np.allclose(
        WordLlamaEmbedder(max_tokens=4).encode(text), WordLlamaEmbedder().encode(text)
    )
    for bad in ({"dim": 100}, {"dim": 1024}, {"config": "l3_supercat"}, {"max_tokens": 0}):
        with pytest.raises(ConfigError):
            WordLlamaEmbedder(**bad)


def test_wordllama_empty_inputs() -> None:
    embedder = WordLlamaEmbedder()
    assert embedder.encode([]).shape == (0, 256)
    vectors = embedder.encode(["", "hello"])
    assert vectors.shape == (2, 256) and np.isfinite(vectors).all()


def test_wordllama_names_the_text_that_is_not_valid_unicode() -> None:
    from prefroute.errors import DataError

    texts = ["fine"] * 5 + ["broken \ud800 text"] * 10  # a lone surrogate, as from bad decoding
    for segment_cache in (True, False):
        embedder = WordLlamaEmbedder(segment_cache=segment_cache)
        with pytest.raises(DataError, match=r"row 5, field 'text': is not valid Unicode"):
            embedder.encode(texts)
        with pytest.raises(DataError, match="row 0"):
            embedder.encode(texts[5])


def test_wordllama_makes_no_network_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_network(monkeypatch)
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("127.0.0.1", 9))  # the block is in place
    wordllama_module.clear_model_cache()
    vectors = build_embedder("wordllama").encode([*SIMILAR, UNRELATED])
    _check_unit_rows(vectors, 3, 256)


EDGE_TEXTS = [
    "",
    " ",
    "   ",
    "a  b",
    "   leading",
    "trailing   ",
    "x\n\n  y",
    "tab\tsep",
    "emoji 😀 ok",
    "中文 字",
    "    def f():\n        return 1\n",
    "\u2581already",
    "a\u2581\u2581b",
    "a \u2581 b\u2581 c",  # spaces and "▁" side by side: both normalise to "▁"
    "same \u2581same same\u2581 \u2581same",  # one segment written both ways
    " " * 40 + "z",
    "a</s>b",
    "x <s> y",
    "<unk>",
    "x" * 200,
    "y " * 100,
    "z" * 65 + " q",
    "\x00\x01 control",
    "café naïve — “quotes” …",
    "http://example.com/a_b?c=d&e=f",
]


def _all_shared_prompts(data_dir: Path) -> list[str]:
    from prefroute.data import distinct_prompts

    return distinct_prompts(data_dir)


def _wordllama_tokenizer():  # the tokenizer exactly as the wheel ships it, no padding
    from tokenizers import Tokenizer

    path = wordllama_module.wordllama_package_dir() / "tokenizers"
    tokenizer = Tokenizer.from_file(str(path / "l2_supercat_tokenizer_config.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def test_segment_tokenizer_is_exact_on_every_shared_prompt(data_dir: Path) -> None:
    from prefroute.embed.segment_tokenizer import SegmentTokenizer

    reference = _wordllama_tokenizer()
    texts = EDGE_TEXTS + _all_shared_prompts(data_dir) + EDGE_TEXTS
    assert len(texts) > 27_000
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    segmented = SegmentTokenizer(reference)
    assert segmented.encode_batch(texts).to_lists() == expected  # cold cache
    assert segmented.encode_batch(texts).to_lists() == expected  # every segment cached
    assert 10_000 < segmented.cached_segments < 200_000
    # One text per call takes the word-dict path: the same tokens again.
    one_by_one = SegmentTokenizer(reference)
    assert [one_by_one.encode_batch([t]).ids.tolist() for t in texts] == expected
    # Batches of other sizes, and a cache that keeps being emptied, give the same tokens.
    small_cache = SegmentTokenizer(reference, max_segments=500)
    for size in (1, 7, 333):
        for start in range(0, 3000, size * 3):
            batch = texts[start : start + size]
            assert small_cache.encode_batch(batch).to_lists() == expected[start : start + size]


def test_segment_tokenizer_is_exact_from_several_threads(data_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from prefroute.embed.segment_tokenizer import SegmentTokenizer

    texts = EDGE_TEXTS + _all_shared_prompts(data_dir)[:12_000]
    reference = _wordllama_tokenizer()
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    # A small cache is emptied while other threads read it; 4 threads on a cold cache insert
    # the same new segments at once.
    for max_segments in (200_000, 3_000):
        shared = SegmentTokenizer(reference, max_segments=max_segments)
        slices = [texts[i : i + 700] for i in range(0, len(texts), 700)]
        with ThreadPoolExecutor(4) as pool:
            batches = list(pool.map(shared.encode_batch, slices))
        got = [row for batch in batches for row in batch.to_lists()]
        assert got == expected


@pytest.mark.parametrize("meanwhile", ["clear", "insert"])
def test_segment_tokenizer_survives_what_happens_while_it_tokenises(
    data_dir: Path, meanwhile: str
) -> None:
    """New segments are tokenised outside the cache lock. If another call empties the cache
    in that window, the lookup is redone; if another call caches some of the same segments,
    they keep the slot it gave them. Either way the tokens are exact."""
    from prefroute.embed.segment_tokenizer import SegmentTokenizer

    texts = _all_shared_prompts(data_dir)[:400]
    other = _all_shared_prompts(data_dir)[200:600]  # shares segments with texts
    reference = _wordllama_tokenizer()
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    shared = SegmentTokenizer(reference)
    tokenise = shared._tokens_of_segments
    calls = []

    def tokenise_while_another_call_runs(joined, codes, starts, lengths):
        calls.append(len(starts))
        if len(calls) == 1:
            if meanwhile == "clear":
                shared.clear()
            else:
                shared.encode_batch(other)
        return tokenise(joined, codes, starts, lengths)

    shared._tokens_of_segments = tokenise_while_another_call_runs
    assert shared.encode_batch(texts).to_lists() == expected
    if meanwhile == "clear":
        assert len(calls) == 2  # the lookup was redone after the clear
    else:
        assert shared.cached_segments < calls[0] + calls[1]  # shared segments cached once
    assert shared.encode_batch(texts).to_lists() == expected


def test_segment_tokenizer_passes_stay_within_their_size(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is cut into passes of at most MAX_CHARS_PER_PASS characters (one longer text
    alone), which bounds the per-pass arrays; the tokens stay exact."""
    from prefroute.embed import segment_tokenizer as module

    monkeypatch.setattr(module, "MAX_CHARS_PER_PASS", 3_000)
    texts = _all_shared_prompts(data_dir)[:300] + ["", "w " * 2_000, ""] + EDGE_TEXTS
    reference = _wordllama_tokenizer()
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    tokenizer = module.SegmentTokenizer(reference)
    passes: list[int] = []
    encode_pass = tokenizer._encode_pass
    monkeypatch.setattr(tokenizer, "_encode_pass",
                        lambda batch: passes.append(sum(len(t) + 1 for t in batch))
                        or encode_pass(batch))
    assert tokenizer.encode_batch(texts).to_lists() == expected
    assert len(passes) > 10 and sum(passes) == sum(len(t) + 1 for t in texts)
    assert max(p for p in passes if p != 4_001) <= 3_000 and 4_001 in passes


def test_segment_tokenizer_truncates_like_the_reference(data_dir: Path) -> None:
    from prefroute.embed.segment_tokenizer import SegmentTokenizer

    texts = EDGE_TEXTS + _all_shared_prompts(data_dir)[:2000]
    reference = _wordllama_tokenizer()
    reference.enable_truncation(48)
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    batch = SegmentTokenizer(_wordllama_tokenizer(), max_tokens=48).encode_batch(texts)
    assert batch.to_lists() == expected
    assert batch.counts.max() == 48


def test_segment_tokenizer_refuses_other_tokenizers() -> None:
    from tokenizers import Tokenizer

    from prefroute.embed.minilm import bundled_minilm_dir
    from prefroute.embed.segment_tokenizer import SegmentTokenizer, supports_segment_tokenization

    wordpiece = Tokenizer.from_file(str(bundled_minilm_dir() / "tokenizer.json"))
    assert not supports_segment_tokenization(wordpiece)
    with pytest.raises(ValueError, match="SentencePiece BPE"):
        SegmentTokenizer(wordpiece)
    assert supports_segment_tokenization(_wordllama_tokenizer())


def test_wordllama_vectors_equal_wordllamas_own(data_dir: Path) -> None:
    # The segment-cached, unpadded path must give the vectors of WordLlama.embed itself.
    texts = EDGE_TEXTS[1:] + _all_shared_prompts(data_dir)[::50]
    ours = WordLlamaEmbedder().encode(texts)
    model = wordllama_module._load_model("l2_supercat", 256, None)
    theirs = np.concatenate(
        [model.embed(texts[i : i + 64], norm=True) for i in range(0, len(texts), 64)]
    )
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    one_by_one = np.concatenate([WordLlamaEmbedder().encode(t) for t in texts[:40]])
    np.testing.assert_allclose(one_by_one, ours[:40], atol=2e-6)


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_network(), reason="needs unshare -rn (user namespaces)")
def test_offline_embedders_in_a_process_without_network() -> None:
    # A fresh network namespace has no route anywhere: any download attempt would fail.
    code = (
        "import prefroute.embed as e\n"
        "for name, dim in (('wordllama', 256), ('minilm', 384)):\n"
        "    v = e.build_embedder(name).encode(['hello world', 'routing prompts'])\n"
        "    assert v.shape == (2, dim), v.shape\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# -------------------------------------------------------------------- minilm
def test_minilm_vectors(alpaca_prompts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _block_network(monkeypatch)
    minilm_module.clear_model_cache()
    embedder = SentenceTransformerEmbedder()
    assert embedder.params()["model_path"] == "bundled:all-MiniLM-L6-v2"
    assert embedder.dim == 384
    vectors = embedder.encode(alpaca_prompts[:10])
    _check_unit_rows(vectors, 10, 384)
    similar, unrelated = _semantic_gap(embedder)
    assert similar > 0.6 and similar > unrelated + 0.3


def test_minilm_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-minilm"
    shutil.copytree(minilm_module.bundled_minilm_dir(), folder)
    local = SentenceTransformerEmbedder(model_path=str(folder))
    assert local.dim == 384
    bundled = SentenceTransformerEmbedder()
    np.testing.assert_allclose(local.encode(SIMILAR), bundled.encode(SIMILAR), atol=1e-5)
    with pytest.raises(ConfigError, match="model_path"):
        SentenceTransformerEmbedder(model_path="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="batch_size"):
        SentenceTransformerEmbedder(batch_size=0)


# --------------------------------------------------------------------- tfidf
def test_tfidf_fit_save_load(alpaca_prompts: list[str], tmp_path: Path) -> None:
    embedder = TfidfEmbedder(n_components=16)
    with pytest.raises(ConfigError, match="not fitted"):
        embedder.encode(["anything"])
    embedder.fit(alpaca_prompts)
    vectors = embedder.encode(alpaca_prompts[:12] + ["words never seen zzqx"])
    assert vectors.shape == (13, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:12], axis=1), 1.0, atol=1e-5)

    embedder.save_state(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pickle"))
    restored = build_embedder(json.loads(json.dumps(embedder.spec())))
    restored.load_state(tmp_path)
    assert np.array_equal(restored.encode(alpaca_prompts[:12] + ["words never seen zzqx"]), vectors)
    assert restored.state_fingerprint() == embedder.state_fingerprint()

    with pytest.raises(CheckpointError, match="fitted with"):
        TfidfEmbedder(n_components=8).load_state(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        TfidfEmbedder(n_components=16).load_state(tmp_path / "nowhere")


def test_tfidf_without_svd(alpaca_prompts: list[str], tmp_path: Path) -> None:
    embedder = TfidfEmbedder(n_components=0, max_features=300).fit(alpaca_prompts)
    assert embedder.dim <= 300
    vectors = embedder.encode(alpaca_prompts[:5])
    _check_unit_rows(vectors, 5, embedder.dim)
    embedder.save_state(tmp_path)
    restored = TfidfEmbedder(n_components=0, max_features=300)
    restored.load_state(tmp_path)
    assert np.array_equal(restored.encode(alpaca_prompts[:5]), vectors)


def test_tfidf_tiny_corpus_keeps_dim() -> None:
    embedder = TfidfEmbedder(n_components=64).fit(["red apples", "green apples", "blue sky"])
    assert embedder.encode(["red sky"]).shape == (1, 64)


# -------------------------------------------------------------------- openai
class _FakeEmbeddingsServer:
    """POST /v1/embeddings in the OpenAI response shape; fails the first request with 429."""

    dim = 8

    def __init__(self, failures: int = 1, status: int = 429) -> None:
        self.requests: list[dict] = []
        self.failures, self.status = failures, status
        self.auth: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/embeddings":
                    self._reply(404, {"error": {"message": "not found"}})
                elif server.failures > 0:
                    server.failures -= 1
                    self._reply(
                        server.status, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"}
                    )
                else:
                    data = [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": _FakeEmbeddingsServer.vector(text).tolist(),
                        }
                        for i, text in enumerate(body["input"])
                    ]
                    data.reverse()  # the client must order by "index", not by position
                    self._reply(
                        200,
                        {
                            "object": "list",
                            "data": data,
                            "model": body["model"],
                            "usage": {"prompt_tokens": 1, "total_tokens": 1},
                        },
                    )

            def _reply(self, code: int, payload: dict, headers: dict | None = None) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") + len(text)
        return np.random.default_rng(seed).normal(size=_FakeEmbeddingsServer.dim)

    def __enter__(self) -> _FakeEmbeddingsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_only_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("PREFROUTE_TEST_KEY", "sk-test-123")


def test_openai_batches_and_retries(alpaca_prompts: list[str], local_only_env: None) -> None:
    texts = alpaca_prompts[:10]
    with _FakeEmbeddingsServer(failures=1) as server:
        embedder = OpenAIEmbedder(
            model="fake-embed",
            base_url=server.url,
            api_key_env="PREFROUTE_TEST_KEY",
            batch_size=4,
            max_retries=3,
            initial_backoff=0.01,
        )
        vectors = embedder.encode(texts)
    # 3 batches (4 + 4 + 2 texts), the first sent twice because of the 429.
    assert [len(r["input"]) for r in server.requests] == [4, 4, 4, 2]
    assert server.requests[0] == server.requests[1]
    assert all(r["model"] == "fake-embed" for r in server.requests)
    assert set(server.auth) == {"Bearer sk-test-123"}
    assert embedder.dim == server.dim
    expected = np.stack([server.vector(t) for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    _check_unit_rows(vectors, 10, server.dim)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert "sk-test-123" not in json.dumps(embedder.spec())


def test_openai_retries_server_errors_then_gives_up(local_only_env: None) -> None:
    import openai

    with _FakeEmbeddingsServer(failures=2, status=503) as server:
        embedder = OpenAIEmbedder(
            model="fake-embed",
            base_url=server.url,
            dimensions=8,
            api_key_env="PREFROUTE_UNSET_KEY",
            initial_backoff=0.01,
        )
        assert embedder.encode(["", "x"]).shape == (2, 8)  # "" is sent as " "
        assert server.requests[-1]["input"] == [" ", "x"]
        assert server.requests[-1]["dimensions"] == 8
        assert server.auth[-1] == "Bearer unused"
    with _FakeEmbeddingsServer(failures=5) as server:
        impatient = OpenAIEmbedder(
            model="fake-embed", base_url=server.url, max_retries=1, initial_backoff=0.01
        )
        with pytest.raises(openai.RateLimitError):
            impatient.encode(["x"])
        assert len(server.requests) == 2


def test_openai_needs_a_key_for_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFROUTE_UNSET_KEY", raising=False)
    embedder = OpenAIEmbedder(api_key_env="PREFROUTE_UNSET_KEY")
    assert embedder.dim == 1536
    with pytest.raises(ConfigError, match="PREFROUTE_UNSET_KEY"):
        embedder.encode(["x"])


# --------------------------------------------------------------------- cache
class CountingWordLlama(WordLlamaEmbedder):
    """The real WordLlama embedder, recording what it was asked to embed."""

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.calls: list[list[str]] = []

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super()._encode(texts)


def test_cache_hits_misses_and_order(alpaca_prompts: list[str], tmp_path: Path) -> None:
    inner = CountingWordLlama()
    cached = CachedEmbedder(inner, tmp_path / "cache")
    assert cached.spec() == WordLlamaEmbedder().spec() and cached.dim == 256
    first = alpaca_prompts[:6] + [alpaca_prompts[0]]  # a duplicate is embedded once
    v1 = cached.encode(first)
    assert sum(len(c) for c in inner.calls) == 6
    np.testing.assert_array_equal(v1, WordLlamaEmbedder().encode(first))
    inner.calls.clear()

    assert np.array_equal(cached.encode(first), v1)
    assert inner.calls == []

    mixed = [alpaca_prompts[10], alpaca_prompts[3], alpaca_prompts[11], alpaca_prompts[0]]
    v2 = cached.encode(mixed)
    assert inner.calls == [[alpaca_prompts[10], alpaca_prompts[11]]]
    np.testing.assert_array_equal(v2[1], v1[3])
    np.testing.assert_array_equal(v2[3], v1[0])
    np.testing.assert_allclose(v2, WordLlamaEmbedder().encode(mixed), atol=1e-6)

    # A new process (new wrapper, same folder) reads the vectors back.
    again = CountingWordLlama()
    assert np.array_equal(CachedEmbedder(again, tmp_path / "cache").encode(mixed), v2)
    assert again.calls == []
    # Another vector space never reads these entries.
    other = CountingWordLlama(dim=64)
    assert CachedEmbedder(other, tmp_path / "cache").encode(mixed).shape == (4, 64)
    assert len(other.calls) == 1
    assert cached.encode([]).shape == (0, 256)


def test_cache_survives_interruption(alpaca_prompts: list[str], tmp_path: Path) -> None:
    class FailingSecondChunk(CountingWordLlama):
        def _encode(self, texts: list[str]) -> np.ndarray:
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super()._encode(texts)

    texts = alpaca_prompts[:4]
    with pytest.raises(KeyboardInterrupt):
        CachedEmbedder(FailingSecondChunk(), tmp_path, chunk_size=2).encode(texts)
    resumed = CountingWordLlama()
    vectors = CachedEmbedder(resumed, tmp_path, chunk_size=2).encode(texts)
    assert resumed.calls == [texts[2:]]
    np.testing.assert_allclose(vectors, WordLlamaEmbedder().encode(texts), atol=1e-6)


def test_cache_keys_on_fitted_state(alpaca_prompts: list[str], tmp_path: Path) -> None:
    cached = CachedEmbedder(TfidfEmbedder(n_components=8), tmp_path)
    assert cached.needs_fit
    with pytest.raises(ConfigError, match="not fitted"):
        cached.encode(["x"])
    cached.fit(alpaca_prompts[:20])
    a = cached.encode(alpaca_prompts[:3])
    assert (cached.hits, cached.misses) == (0, 3)
    cached.encode(alpaca_prompts[:3])
    assert (cached.hits, cached.misses) == (3, 3)
    cached.fit(alpaca_prompts[20:])  # new state, new key: nothing stale is served
    b = cached.encode(alpaca_prompts[:3])
    assert (cached.hits, cached.misses) == (3, 6)
    assert not np.array_equal(a, b)
