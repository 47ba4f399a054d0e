"""A real OpenAI-compatible ``POST /v1/embeddings`` server on 127.0.0.1 for tests.

It answers with the vectors of any prefroute embedder (wordllama by default), so code that
calls OpenAI's embedding API (RouteLLM's routers) sees exactly the embeddings a prefroute
router computes locally. Run it with ``ServerThread`` from ``tests/upstream_server.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class EmbeddingServer:
    """``embedder``: any object with ``encode(list[str]) -> float32 [n, d]``."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.requests = 0
        self.app = Starlette(routes=[Route("/v1/embeddings", self._embed, methods=["POST"])])

    async def _embed(self, request: Request) -> Response:
        body = await request.json()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return JSONResponse(
                {"error": {"message": "input must be a string or a list of strings",
                           "type": "invalid_request_error", "param": "input", "code": None}},
                status_code=400,
            )
        self.requests += 1
        vectors = await anyio.to_thread.run_sync(self.embedder.encode, texts)
        return JSONResponse({
            "object": "list",
            "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        })
