"""Prompt-length router: longer prompts go to the strong model. Learns nothing.

The reference every learned router must clear (GSM8K: APGR ~0.60 from length alone). Kept as
a registered router so ``auto`` can choose it, and so it saves and serves like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefroute.data.battles import Battles
from prefroute.errors import CheckpointError, ConfigError, check_range
from prefroute.evaluate.baselines import LENGTH_SCALE_CHARS, prompt_length_probs
from prefroute.router import checked_tensor, is_number
from prefroute.routers.base import WinPredictor, register_router


@register_router
class LengthRouter(WinPredictor):
    """P(strong wins) = n_chars / (n_chars + scale): a monotone map of the prompt's length."""

    router_type = "length"

    def __init__(self, *, strong_model: str, weak_model: str,
                 scale: float = LENGTH_SCALE_CHARS) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.scale = scale

    def _fit(self, battles: Battles) -> None:
        check_range("scale", type(self).__name__, self.scale, low=0.0, low_inclusive=False)
        models = battles.models()
        for name in (self.strong_model, self.weak_model):
            if name not in models:
                raise ConfigError(f"model {name!r} does not appear in the training battles")

    def _predict(self, prompts: list[str]) -> np.ndarray:
        return prompt_length_probs(prompts, scale=float(self.scale))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"scale": np.array([float(self.scale)])}, {}

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        return ["scale"]

    def _load_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any],
                    directory: Path) -> None:
        where = Path(directory) / "config.json"
        if not is_number(self.scale) or self.scale <= 0:
            raise CheckpointError(f"{where}: params.scale must be a finite number > 0, got "
                                  f"{self.scale!r:.80}")
        saved = checked_tensor(tensors, "scale", where, (1,))
        if saved[0] != float(self.scale):
            raise CheckpointError(f"{where}: params.scale {self.scale} differs from the saved "
                                  f"scale tensor {saved[0]}")
