"""Token prices, token estimates and the running cost meter behind ``--max-cost``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from prefroute.errors import ConfigError, DataError


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate: about 4 characters per token for English text.

    Used for ``--dry-run`` and the budget reservation only; spent money is always counted
    from the ``usage`` the endpoint returns.
    """
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per 1M input (prompt) and output (completion) tokens."""

    input_per_m: float
    output_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


@dataclass
class PriceTable:
    """Per-model prices. A model without a price costs ``None`` (unknown), never 0."""

    prices: dict[str, ModelPrice] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: list[str] | None = None, file: str | Path | None = None) -> PriceTable:
        """From ``MODEL=IN:OUT`` strings (USD per 1M tokens) and/or a JSON file.

        The JSON file maps model -> ``{"input": IN, "output": OUT}`` or ``[IN, OUT]``.
        """
        table: dict[str, ModelPrice] = {}
        if file is not None:
            try:
                data = json.loads(Path(file).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"cannot read prices file {file}: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"prices file {file} must hold a JSON object model -> price")
            for model, value in data.items():
                if isinstance(value, dict) and {"input", "output"} <= set(value):
                    table[model] = _price(value["input"], value["output"], model)
                elif isinstance(value, list) and len(value) == 2:
                    table[model] = _price(value[0], value[1], model)
                else:
                    raise ConfigError(f"prices file {file}: price of {model!r} must be "
                                      f'{{"input": IN, "output": OUT}} or [IN, OUT]; got {value!r}')
        for spec in specs or []:
            model, sep, rest = spec.rpartition("=")
            parts = rest.split(":")
            if not sep or not model or len(parts) != 2:
                raise ConfigError(f"--price must look like MODEL=IN:OUT (USD per 1M tokens); "
                                  f"got {spec!r}")
            table[model] = _price(parts[0], parts[1], model)
        return cls(table)

    def get(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.prices.get(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)

    def require(self, models: list[str], why: str) -> None:
        missing = sorted({m for m in models if m not in self.prices})
        if missing:
            raise ConfigError(f"{why} needs a price for every model called; missing {missing}. "
                              "Pass --price MODEL=IN:OUT (USD per 1M input:output tokens).")


def _price(inp: object, out: object, model: str) -> ModelPrice:
    try:
        i, o = float(inp), float(out)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"price of {model!r} must be two numbers; got {inp!r}, {out!r}") from None
    if i < 0 or o < 0 or not (math.isfinite(i) and math.isfinite(o)):
        raise ConfigError(f"price of {model!r} must be finite and >= 0; got {i}, {o}")
    return ModelPrice(i, o)


@dataclass
class Usage:
    """Token counts per model; the cost follows from a ``PriceTable``."""

    tokens: dict[str, list[int]] = field(default_factory=dict)  # model -> [prompt, completion]
    calls: int = 0

    def add(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one call; negative or non-integer counts are refused (cost only grows)."""
        for name, value in (("prompt_tokens", prompt_tokens),
                            ("completion_tokens", completion_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"token count must be an integer >= 0, got {value!r}",
                                field=name)
        counts = self.tokens.setdefault(model, [0, 0])
        counts[0] += int(prompt_tokens)
        counts[1] += int(completion_tokens)
        self.calls += 1

    def merge(self, other: Usage) -> None:
        for model, (p, c) in other.tokens.items():
            counts = self.tokens.setdefault(model, [0, 0])
            counts[0] += p
            counts[1] += c
        self.calls += other.calls

    @property
    def prompt_tokens(self) -> int:
        return sum(p for p, _ in self.tokens.values())

    @property
    def completion_tokens(self) -> int:
        return sum(c for _, c in self.tokens.values())

    def cost(self, prices: PriceTable) -> float | None:
        """Total dollars, or ``None`` if some model used has no price."""
        total = 0.0
        for model, (p, c) in self.tokens.items():
            cost = prices.cost(model, p, c)
            if cost is None:
                return None
            total += cost
        return total

    def to_json(self) -> dict[str, dict[str, int]]:
        return {m: {"prompt_tokens": p, "completion_tokens": c}
                for m, (p, c) in self.tokens.items()}


class CostMeter:
    """Spent money plus reservations for items in flight; decides whether to launch more.

    An item reserves its estimated cost when it starts; each finished call moves its real
    cost from the reservation to ``spent``; the rest of the reservation is released when
    the item ends. :meth:`try_reserve` refuses once spent + reserved + the new estimate
    would pass ``max_cost``.
    """

    def __init__(self, max_cost: float | None = None, *, spent: float = 0.0) -> None:
        self.max_cost = max_cost
        self.spent = spent
        self.reserved: dict[str, float] = {}

    @property
    def in_flight(self) -> float:
        return sum(self.reserved.values())

    def try_reserve(self, item_id: str, estimate: float) -> bool:
        if self.max_cost is not None and self.spent + self.in_flight + estimate > self.max_cost:
            return False
        self.reserved[item_id] = estimate
        return True

    def charge(self, item_id: str, cost: float) -> None:
        self.spent += cost
        if item_id in self.reserved:
            self.reserved[item_id] = max(0.0, self.reserved[item_id] - cost)

    def release(self, item_id: str) -> None:
        self.reserved.pop(item_id, None)


def format_usd(value: float | None) -> str:
    return "unknown (no price)" if value is None else f"${value:,.4f}"
