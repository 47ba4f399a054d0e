"""Model-name aliases: one canonical name per model across data sources."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prefroute.errors import DataError

# canonical name -> spellings seen in the data sources (AlpacaEval, RouteLLM, MMLU-Pro,
# RouterBench, Chatbot Arena).
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "gpt-4-1106-preview": ("gpt4_1106_preview", "gpt-4-turbo-1106", "gpt-4-1106"),
    "mixtral-8x7b-instruct-v0.1": (
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "Mixtral-8x7B-Instruct-v0.1",
        "Mixtral-8x7B-Instruct-v0.1_concise",
        "mistralai/mixtral-8x7b-chat",
        "mixtral-8x7b-instruct-v0.1",
    ),
    "gpt-3.5-turbo-1106": ("gpt35_turbo_1106", "gpt-3.5-turbo-1106"),
    "claude-2.1": ("claude_2.1", "claude-2.1"),
    "gpt-4o-2024-05-13": ("gpt4o_2024_05_13", "gpt-4o-2024-05-13"),
    "mistral-7b-instruct": ("mistralai/mistral-7b-chat", "Mistral-7B-Instruct-v0.2"),
    "llama-2-70b-chat": ("meta/llama-2-70b-chat", "Llama-2-70b-chat-hf", "llama-2-70b-chat"),
}


class ModelAliases:
    """Maps model-name spellings to canonical names.

    Parameters
    ----------
    aliases: canonical name -> iterable of alternative spellings. Defaults to
        ``DEFAULT_ALIASES``.
    strict: when true, a name that is neither canonical nor an alias is an error;
        otherwise it maps to itself.

    Examples
    --------
    >>> ModelAliases().canonical("gpt4_1106_preview")
    'gpt-4-1106-preview'
    """

    def __init__(
        self, aliases: Mapping[str, Iterable[str]] | None = None, *, strict: bool = False
    ) -> None:
        self.aliases = {k: tuple(v) for k, v in (aliases or DEFAULT_ALIASES).items()}
        self.strict = strict
        self._lookup: dict[str, str] = {}
        for canonical, spellings in self.aliases.items():
            for name in (canonical, *spellings):
                previous = self._lookup.get(name.lower())
                if previous is not None and previous != canonical:
                    raise DataError(f"alias {name!r} maps to both {previous!r} and {canonical!r}")
                self._lookup[name.lower()] = canonical

    def canonical(
        self,
        name: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> str:
        """The canonical name of ``name``; in strict mode unknown names raise DataError."""
        found = self._lookup.get(name.lower())
        if found is not None:
            return found
        if self.strict:
            raise DataError(
                f"model {name!r} is not in the alias table (known: {sorted(self.aliases)})",
                file=file,
                row=row,
                field=field,
            )
        return name

    def same(self, a: str, b: str) -> bool:
        return self.canonical(a) == self.canonical(b)

    def with_extra(self, extra: Mapping[str, Iterable[str]]) -> ModelAliases:
        merged = dict(self.aliases)
        for k, v in extra.items():
            merged[k] = tuple(merged.get(k, ())) + tuple(v)
        return ModelAliases(merged, strict=self.strict)
