"""Chat calls to any OpenAI-compatible endpoint, with our own counted retries.

The ``openai`` client's built-in retries are switched off (``max_retries=0``) so that every
retry is visible: 429s, 5xx answers, timeouts and dropped connections are retried here
with exponential backoff and full jitter, and each attempt's error is recorded.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion

from prefroute._logging import logger
from prefroute.errors import ConfigError, PrefrouteError, check_range


class EndpointError(PrefrouteError):
    """An endpoint refused the run as a whole (bad key, unknown model, wrong URL)."""


@dataclass(frozen=True)
class EndpointConfig:
    """One model behind one OpenAI-compatible base URL.

    Parameters
    ----------
    model: the model name sent in each request (also the key of its price).
    base_url: e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1`` (vLLM).
    api_key_env: name of the environment variable holding the key; ``None`` for local
        servers that take no key.
    max_tokens, temperature: generation settings sent with every request.
    timeout_s: per-request timeout in seconds.
    """

    model: str
    base_url: str
    api_key_env: str | None = None
    max_tokens: int = 1024
    temperature: float = 0.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("The 'model' parameter of EndpointConfig must be a non-empty name.")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("The 'base_url' parameter of EndpointConfig must start with http:// "
                              f"or https://. Got {self.base_url!r} instead.")
        check_range("max_tokens", "EndpointConfig", self.max_tokens, low=1)
        check_range("temperature", "EndpointConfig", self.temperature, low=0.0, high=2.0)
        check_range("timeout_s", "EndpointConfig", self.timeout_s, low=0.0, low_inclusive=False)

    def api_key(self) -> str:
        if self.api_key_env is None:
            return "no-key"  # the client insists on a string; keyless local servers ignore it
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (API key for "
                              f"{self.model} at {self.base_url}) is not set")
        return key

    def settings(self) -> dict:
        """What defines the answers (recorded in the journal header)."""
        return {"model": self.model, "max_tokens": self.max_tokens,
                "temperature": self.temperature}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k waits U(0, min(cap, base * 2**k))."""

    max_attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0

    def __post_init__(self) -> None:
        check_range("max_attempts", "RetryPolicy", self.max_attempts, low=1)
        check_range("base_delay_s", "RetryPolicy", self.base_delay_s, low=0.0)
        check_range("max_delay_s", "RetryPolicy", self.max_delay_s, low=0.0)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**attempt))
        if retry_after is not None:
            # the server said when to come back: never earlier, capped like the backoff
            backoff = max(backoff, min(retry_after, self.max_delay_s))
        return backoff


@dataclass
class ChatResult:
    """A finished call: the text, the usage the server reported, and its retry history."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    errors: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage_reported: bool = True


class CallFailed(Exception):
    """A call that used up its attempts on transient errors or hit a per-request error."""

    def __init__(self, reason: str, errors: Sequence[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = list(errors)


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after") if error.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ChatEndpoint:
    """An ``openai.AsyncOpenAI`` client for one :class:`EndpointConfig`."""

    def __init__(self, config: EndpointConfig, retry: RetryPolicy, *,
                 semaphore: asyncio.Semaphore, seed: int = 0) -> None:
        self.config = config
        self.retry = retry
        self.semaphore = semaphore
        self._rng = random.Random(seed)
        self.client = openai.AsyncOpenAI(base_url=config.base_url, api_key=config.api_key(),
                                         max_retries=0, timeout=config.timeout_s)

    async def close(self) -> None:
        await self.client.close()

    async def chat(self, messages: list[dict], *, max_tokens: int | None = None,
                   on_error: Callable[[str, int], None] | None = None) -> ChatResult:
        """One chat completion, retried on 429 / 5xx / timeout / connection errors.

        ``on_error(error, attempt)`` is called for every failed attempt (the journal records
        it at once, so retries stay counted even if the run is killed before the call ends).
        Raises ``CallFailed`` (record it for the item) or ``EndpointError`` (401, 403, 404:
        the whole run cannot work, so it stops).
        """
        errors: list[str] = []
        cfg = self.config
        for attempt in range(self.retry.max_attempts):
            retry_after = None
            try:
                async with self.semaphore:
                    # wall-clock limit per request (httpx's read timeout alone restarts on
                    # every byte a slow server trickles out)
                    response = await asyncio.wait_for(
                        self.client.chat.completions.create(
                            model=cfg.model, messages=messages,
                            max_tokens=max_tokens or cfg.max_tokens, temperature=cfg.temperature),
                        timeout=cfg.timeout_s)
            except (openai.APITimeoutError, asyncio.TimeoutError):
                errors.append("timeout")
            except ValueError:  # a 200 whose body is not JSON (openai raises JSONDecodeError)
                errors.append("malformed answer: the body is not JSON")
            except openai.APIConnectionError as e:
                errors.append(f"connection: {type(e.__cause__ or e).__name__}")
            except openai.RateLimitError as e:
                errors.append("429")
                retry_after = _retry_after(e)
            except openai.InternalServerError as e:
                errors.append(str(e.status_code))
                retry_after = _retry_after(e)
            except (openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError) as e:
                raise EndpointError(f"{cfg.base_url} refused model {cfg.model!r} with HTTP "
                                    f"{e.status_code}: {_short(e)}") from None
            except openai.APIStatusError as e:
                if e.status_code in (408, 409) or e.status_code >= 500:
                    errors.append(str(e.status_code))
                    retry_after = _retry_after(e)
                else:  # 400, 413, 422...: this request cannot succeed as it is
                    errors.append(str(e.status_code))
                    if on_error is not None:
                        on_error(errors[-1], attempt + 1)
                    raise CallFailed(f"HTTP {e.status_code}: {_short(e)}", errors) from None
            else:
                try:
                    return _result(response, attempt + 1, errors)
                except MalformedAnswer as e:  # a 200 we cannot use: retried like a 5xx
                    errors.append(f"malformed answer: {e}")
            if on_error is not None:
                on_error(errors[-1], attempt + 1)
            if attempt + 1 < self.retry.max_attempts:
                wait = self.retry.delay(attempt, retry_after, self._rng)
                logger.debug("%s: attempt %d failed (%s); retrying in %.2fs", cfg.model,
                             attempt + 1, errors[-1], wait)
                await asyncio.sleep(wait)
        raise CallFailed(f"gave up after {self.retry.max_attempts} attempts ({', '.join(errors)})",
                         errors)


def _short(error: openai.APIStatusError) -> str:
    text = str(error.message or error)
    return text if len(text) < 200 else text[:197] + "..."


class MalformedAnswer(ValueError):
    """A 200 response whose body is not a usable chat completion."""


def _count(usage: object, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    if value is None:
        raise MalformedAnswer(f"usage.{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedAnswer(f"usage.{name} is {type(value).__name__}, not an integer")
    if value < 0:
        raise MalformedAnswer(f"usage.{name} is negative ({value})")
    return value


def _result(response: ChatCompletion, attempts: int, errors: list[str]) -> ChatResult:
    """The text and token counts of a 200 answer, or ``MalformedAnswer`` saying what is wrong.

    Token counts must be reported, integers and >= 0: cost is computed from them, so a
    missing or negative count would let spending go unnoticed or even go down.
    """
    if not isinstance(response, ChatCompletion):
        raise MalformedAnswer(f"the body is a JSON {type(response).__name__}, not an object")
    choices = response.choices
    if not isinstance(choices, list):
        raise MalformedAnswer(f"choices is {type(choices).__name__}, not a list")
    if not choices:
        raise MalformedAnswer("the endpoint answered without choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None or isinstance(message, (str, int, float, list)):
        raise MalformedAnswer("choices[0].message is missing or not an object")
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise MalformedAnswer(f"choices[0].message.content is {type(content).__name__}")
    usage = response.usage
    if usage is None:
        raise MalformedAnswer("usage is missing")
    prompt_tokens = _count(usage, "prompt_tokens")
    completion_tokens = _count(usage, "completion_tokens")
    finish = getattr(choice, "finish_reason", None)
    return ChatResult(content or "", prompt_tokens, completion_tokens, attempts, errors,
                      finish if isinstance(finish, str) else None, True)
