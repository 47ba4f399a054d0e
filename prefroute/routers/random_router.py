"""The random baseline: a seeded coin per prompt, the same for the same prompt."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.data.battles import Battles
from prefroute.routers.base import WinPredictor, register_router


@register_router
class RandomRouter(WinPredictor):
    """P(strong wins) drawn uniformly from [0, 1], seeded by ``seed`` and the prompt text.

    Hashing the prompt makes a prompt's probability independent of its batch, so scoring
    one at a time or in batches gives the same numbers, as for every other router.
    """

    router_type = "random"

    def __init__(self, *, strong_model: str, weak_model: str, seed: int = 0) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.seed = seed

    def _fit(self, battles: Battles) -> None:
        pass

    def _predict(self, prompts: list[str]) -> np.ndarray:
        out = np.empty(len(prompts))
        salt = str(self.seed).encode()
        for i, p in enumerate(prompts):
            digest = hashlib.blake2b(p.encode("utf-8"), digest_size=8, key=salt).digest()
            out[i] = int.from_bytes(digest, "little") / 2**64
        return out

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"seed": np.array([self.seed], dtype=np.int64)}, {}

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        pass
