"""From an OpenAI request to a routing decision: which router, which threshold, which text.

Shared by the server and the Controller so both read ``model`` and ``messages`` the same way.
A request's ``model`` is ``router-<name>`` (the checkpoint's calibrated threshold),
``router-<name>@<percent>`` (the threshold that sent that percentage of the calibration prompts
to the strong model) or ``router-<name>-<threshold>`` (any float spelling: 0.3, .3, 1e-3);
the prompt scored is the last user turn or the conversation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefroute._logging import logger
from prefroute.calibrate import threshold_at_rate
from prefroute.compat.names import routellm_model_alias
from prefroute.errors import ConfigError
from prefroute.router import Router, load_router
from prefroute.serve.errors import InvalidRequestError, ModelNotFoundError
from prefroute.serve.settings import RoutersSpec, UpstreamSettings

MODEL_PREFIX = "router-"
_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")
_NUMBER = re.compile(r"^(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
# the strong-call rates /v1/models lists as router-<name>@<percent>
LISTED_RATES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class ParsedModel:
    """What a ``model`` field asks for: a router name and how to pick its threshold.

    ``kind`` is "calibrated" (no value), "threshold" (``value`` in [0, 1]) or "rate"
    (``value`` a strong-call percentage in [0, 100]).
    """

    router_name: str
    kind: str
    value: float | None = None


def parse_model_name(model: str, router_names: Collection[str]) -> ParsedModel | None:
    """Parse ``router-<name>``, ``router-<name>@<percent>`` or ``router-<name>-<threshold>``.

    Returns None when ``model`` names none of ``router_names``; raises InvalidRequestError
    when it names one with a malformed or out-of-range number. Names may hold '-', so every
    split is tried against the known names (``router-mf-1e-3`` is mf at 0.001).
    """
    if not model.startswith(MODEL_PREFIX):
        return None
    rest = model[len(MODEL_PREFIX) :]
    if rest in router_names:
        return ParsedModel(rest, "calibrated")
    name, at, percent_text = rest.rpartition("@")
    if at and name in router_names:
        percent = _parse_number(percent_text)
        if percent is None or not 0.0 <= percent <= 100.0:
            raise InvalidRequestError(
                f"bad strong-call rate {percent_text!r} in model {model!r}: it must be a "
                f"percentage in [0, 100], e.g. {MODEL_PREFIX}{name}@30",
                param="model",
                code="invalid_rate",
            )
        return ParsedModel(name, "rate", percent)
    candidates = [i for i, ch in enumerate(rest) if ch == "-" and rest[:i] in router_names]
    for i in reversed(candidates):  # the longest known name first
        threshold = _parse_number(rest[i + 1 :])
        if threshold is not None and 0.0 <= threshold <= 1.0:
            return ParsedModel(rest[:i], "threshold", threshold)
    if candidates:
        raise InvalidRequestError(
            f"bad threshold {rest[candidates[-1] + 1 :]!r} in model {model!r}: it must be a "
            f"number in [0, 1], e.g. {MODEL_PREFIX}{rest[: candidates[-1]]}-0.1163, or a "
            f"strong-call percentage, e.g. {MODEL_PREFIX}{rest[: candidates[-1]]}@30",
            param="model",
            code="invalid_threshold",
        )
    return None


def _parse_number(text: str) -> float | None:
    """A plain decimal or scientific number (no sign, nan, inf or underscores); else None."""
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_router_arg(arg: str | Path) -> tuple[str | None, Path]:
    """``"NAME=PATH"`` -> (NAME, PATH); ``"PATH"`` -> (None, PATH)."""
    text = str(arg)
    name, sep, path = text.partition("=")
    if sep and _NAME.match(name) and "/" not in name:
        return name, Path(path)
    return None, Path(text)


def resolve_routers(spec: RoutersSpec) -> dict[str, Router]:
    """Load every router of ``spec``, keyed by its serving name (unique)."""
    items: list[tuple[str | None, Path | Router]] = []
    if isinstance(spec, Mapping):
        items = [
            (name, value if isinstance(value, Router) else Path(value))
            for name, value in spec.items()
        ]
    else:
        items = [parse_router_arg(arg) for arg in spec]
    routers: dict[str, Router] = {}
    for name, source in items:
        router = source if isinstance(source, Router) else load_router(source)
        name = router.router_type if name is None else name
        if not _NAME.match(name):
            raise ConfigError(
                f"router name {name!r} may only hold letters, digits, '_', '.' and '-' "
                "(it becomes part of the model name router-<name>)"
            )
        if name in routers:
            raise ConfigError(
                f"two routers are named {name!r}; name them on the command line as NAME=PATH"
            )
        routers[name] = router
        logger.info("serving %s as %s%s", router, MODEL_PREFIX, name)
    if not routers:
        raise ConfigError("no router to serve: give at least one checkpoint")
    return routers


@dataclass(frozen=True)
class ResolvedModel:
    """The router and threshold a request's ``model`` names."""

    model_id: str
    router_name: str
    router: Router
    threshold: float


@dataclass(frozen=True)
class RoutingDecision:
    """Where one request goes and why."""

    model_id: str
    router_name: str
    threshold: float
    strong_win_prob: float
    side: str  # "strong" or "weak"
    upstream_model: str

    @property
    def is_strong(self) -> bool:
        return self.side == "strong"

    def headers(self) -> dict[str, str]:
        return {
            "x-prefroute-model": self.upstream_model,
            "x-prefroute-router": self.router_name,
            "x-prefroute-side": self.side,
            "x-prefroute-strong-win-prob": f"{self.strong_win_prob:.6f}",
            "x-prefroute-threshold": f"{self.threshold:.6f}",
        }


class RouterTable:
    """The served routers by name: resolves model ids and turns probabilities into decisions."""

    def __init__(
        self, routers: Mapping[str, Router], strong: UpstreamSettings, weak: UpstreamSettings
    ) -> None:
        self.routers = dict(routers)
        self.strong = strong
        self.weak = weak
        self._warned: set[str] = set()

    def upstream_model(self, router: Router, side: str) -> str:
        if side == "strong":
            return self.strong.model or router.strong_model
        return self.weak.model or router.weak_model

    def resolve(self, model: Any) -> ResolvedModel:
        """The router and threshold of a ``model`` field; InvalidRequestError if there is none."""
        model = routellm_model_alias(model, self.routers)  # router-sw_ranking-0.1 -> sw_bt
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(
                f"'model' must be a string like {self._examples()}",
                param="model",
                code="invalid_model",
            )
        parsed = parse_model_name(model, self.routers)
        if parsed is None:
            raise ModelNotFoundError(
                f"unknown model {model!r}: this server routes with {self._examples()} "
                "(router-<name>@<percent> sends that share of calls to the strong model, "
                "router-<name>-<threshold> picks a threshold in [0, 1]); GET /v1/models lists them",
                param="model",
                code="model_not_found",
            )
        router = self.routers[parsed.router_name]
        if parsed.kind == "calibrated":
            threshold = router.threshold
        elif parsed.kind == "rate":
            try:
                threshold = threshold_at_rate(router.calibration, float(parsed.value))
            except ConfigError as e:
                raise InvalidRequestError(
                    f"model {model!r}: {e}", param="model", code="no_rate_calibration"
                ) from None
        else:
            threshold = float(parsed.value)
            self._warn_outside_calibration(model, parsed.router_name, threshold)
        return ResolvedModel(model, parsed.router_name, router, threshold)

    def _warn_outside_calibration(self, model: str, name: str, threshold: float) -> None:
        """Log once per model id when a threshold sends every calibration prompt one way."""
        low_high = (self.routers[name].calibration or {}).get("score_range") or []
        if len(low_high) != 2 or model in self._warned:
            return
        low, high = low_high
        if low <= threshold <= high:
            return
        self._warned.add(model)
        everything = "strong" if threshold < low else "weak"
        logger.warning(
            "%s: threshold %g lies outside the calibration scores' range [%.4f, %.4f], so it "
            "sends every calibration prompt to the %s model; name a rate instead, e.g. %s@30",
            model,
            threshold,
            low,
            high,
            everything,
            f"{MODEL_PREFIX}{name}",
        )

    def decide(self, resolved: ResolvedModel, strong_win_prob: float) -> RoutingDecision:
        side = "strong" if strong_win_prob >= resolved.threshold else "weak"
        return RoutingDecision(
            model_id=resolved.model_id,
            router_name=resolved.router_name,
            threshold=resolved.threshold,
            strong_win_prob=float(strong_win_prob),
            side=side,
            upstream_model=self.upstream_model(resolved.router, side),
        )

    def model_cards(self, created: int) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries: router-<name> and router-<name>-<calibrated threshold>."""
        cards = []
        for name, router in self.routers.items():
            common = {
                "object": "model",
                "created": created,
                "owned_by": "prefroute",
                "router": name,
                "router_type": router.router_type,
                "strong_model": self.upstream_model(router, "strong"),
                "weak_model": self.upstream_model(router, "weak"),
            }
            cards.append(
                {
                    "id": f"{MODEL_PREFIX}{name}",
                    **common,
                    "threshold": router.threshold,
                    "calibration": router.calibration,
                }
            )
            cards.append(
                {
                    "id": f"{MODEL_PREFIX}{name}-{router.threshold:.4f}",
                    **common,
                    "threshold": round(router.threshold, 4),
                }
            )
            if (router.calibration or {}).get("rate_thresholds"):
                for percent in LISTED_RATES:
                    threshold = threshold_at_rate(router.calibration, percent)
                    cards.append(
                        {
                            "id": f"{MODEL_PREFIX}{name}@{percent}",
                            **common,
                            "threshold": threshold,
                            "strong_rate": percent / 100.0,
                        }
                    )
        return cards

    def _examples(self) -> str:
        names = list(self.routers)
        shown = ", ".join(f"'{MODEL_PREFIX}{n}'" for n in names[:5])
        more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
        return f"{shown}{more} or '{MODEL_PREFIX}{names[0]}@30'"


def _content_text(content: Any, index: int) -> str:
    """The text of a message's content: a string, a list of parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            elif not isinstance(part, dict):
                raise InvalidRequestError(
                    f"messages[{index}].content parts must be objects",
                    param=f"messages[{index}].content",
                    code="invalid_messages",
                )
        return "\n".join(texts)
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or a list of content parts, "
        f"got {type(content).__name__}",
        param=f"messages[{index}].content",
        code="invalid_messages",
    )


def routing_text(messages: Any, mode: str) -> str:
    """The text the router scores: the last user turn, or every turn's text joined."""
    if messages is None:
        raise InvalidRequestError(
            "'messages' is required", param="messages", code="missing_messages"
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "'messages' must be a non-empty list of {role, content} objects",
            param="messages",
            code="invalid_messages",
        )
    texts: list[str] = []
    last_user: str | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"messages[{i}] must be an object with a string 'role'",
                param=f"messages[{i}]",
                code="invalid_messages",
            )
        text = _content_text(message.get("content"), i)
        if message["role"] == "user" and text.strip():
            last_user = text
        if text:
            texts.append(text)
    return pick_routing_text(last_user, texts, mode, "the conversation has no user turn",
                             "messages")


def pick_routing_text(
    last_user: str | None, texts: list[str], mode: str, missing: str, param: str
) -> str:
    """The last user text (``mode="last-user"``) or all texts joined; shared by every API."""
    if last_user is None:
        raise InvalidRequestError(
            f"{missing} with text to route on", param=param, code="no_user_turn"
        )
    return last_user if mode == "last-user" else "\n\n".join(texts)
