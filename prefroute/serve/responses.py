"""The text to route on for the Responses API (``POST /v1/responses``) and legacy completions.

Responses: ``input`` is a string (one user turn) or a list of items; message items
(``{"role", "content"}``, with or without ``"type": "message"``) hold a string or a list of
parts (``input_text`` / ``output_text`` / ``text``). Other items (tool calls, their outputs,
reasoning) carry no prompt text and are skipped. ``instructions`` joins the conversation text.
Completions: ``prompt`` is a string or a list of strings (routed together, as one request).

The Responses API is stateful: a request naming ``previous_response_id`` continues a response
that only the upstream which made it knows. ``ResponseSides`` remembers which side made each
recent response so such a request is pinned to that side instead of being routed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from prefroute.serve.errors import InvalidRequestError
from prefroute.serve.routing import pick_routing_text

_TEXT_PARTS = ("input_text", "output_text", "text")


def _parts_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise InvalidRequestError(
                    f"{where} parts must be objects", param=where, code="invalid_input"
                )
            if part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequestError(
        f"{where} must be a string or a list of content parts, got {type(content).__name__}",
        param=where,
        code="invalid_input",
    )


def responses_text(body: dict[str, Any], mode: str) -> str:
    """The text a router scores for a Responses API request."""
    items = body.get("input")
    if items is None:
        raise InvalidRequestError("'input' is required", param="input", code="missing_input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidRequestError(
            "'input' must be a string or a non-empty list of input items",
            param="input",
            code="invalid_input",
        )
    instructions = body.get("instructions")
    texts = [instructions] if isinstance(instructions, str) and instructions else []
    last_user: str | None = None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequestError(
                f"input[{i}] must be an object", param=f"input[{i}]", code="invalid_input"
            )
        if item.get("type", "message") != "message" or not isinstance(item.get("role"), str):
            continue
        text = _parts_text(item.get("content"), f"input[{i}].content")
        if item["role"] == "user" and text.strip():
            last_user = text
        if text:
            texts.append(text)
    return pick_routing_text(last_user, texts, mode, "the input has no user message", "input")


def completions_text(body: dict[str, Any], mode: str) -> str:
    """The text a router scores for a legacy completions request (its ``prompt``)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = "\n\n".join(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError(
            "'prompt' must be a non-empty string or list of strings "
            "(token-id prompts cannot be routed on text)",
            param="prompt",
            code="invalid_prompt",
        )
    return prompt


def rewrite_model(event: Any, model: str) -> Any:
    """Put the routed model name into a response or stream event (Responses nest it)."""
    if isinstance(event, dict):
        if "model" in event:
            event["model"] = model
        inner = event.get("response")
        if isinstance(inner, dict) and "model" in inner:
            inner["model"] = model
    return event


class ResponseSides:
    """Which side made each recent Responses API response (a bounded LRU map)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._sides: OrderedDict[str, str] = OrderedDict()

    def remember(self, response_id: Any, side: str) -> None:
        if not isinstance(response_id, str) or not response_id:
            return
        self._sides[response_id] = side
        self._sides.move_to_end(response_id)
        while len(self._sides) > self.capacity:
            self._sides.popitem(last=False)

    def side_of(self, response_id: Any) -> str | None:
        """The side that made ``response_id``, or None if it is not known (here)."""
        if not isinstance(response_id, str):
            return None
        return self._sides.get(response_id)


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens of a usage object (chat/completions or Responses naming), or
    None when it is missing or not two non-negative integers."""
    if not isinstance(usage, dict):
        return None
    counts = []
    for names in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        value = next((usage[n] for n in names if n in usage), None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        counts.append(value)
    return counts[0], counts[1]
