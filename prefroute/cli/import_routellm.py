"""`prefroute import-routellm`: turn a RouteLLM checkpoint into a prefroute checkpoint.

Examples::

    prefroute import-routellm ./mf_gpt4_augmented --out runs/mf       # RouteLLM MF, OpenAI embedder
    prefroute import-routellm ./my_mf --embedder wordllama --out runs/mf_wl
    prefroute import-routellm ./bert_gpt4_augmented --out runs/bert
    prefroute import-routellm ./causal_llm_gpt4_augmented --tokenizer ./Meta-Llama-3-8B \
        --out runs/cllm
    prefroute import-routellm routellm/mf_gpt4_augmented --out runs/mf   # hub name, when online
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute.errors import ConfigError


def _embedder_spec(text: str | None) -> str | dict | None:
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--embedder is not valid JSON ({e})") from None


def _model_names(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--model-names {path}: cannot read it ({e})") from None
    return [n for n in names if n]


def import_routellm(
    src: str = typer.Argument(..., help="RouteLLM checkpoint folder, or a hub name (online)"),
    out: Path = typer.Option(..., "--out", help="new prefroute checkpoint folder"),
    kind: str = typer.Option("auto", "--kind", help="auto, mf, bert or causal_llm"),
    strong_model: str = typer.Option("gpt-4-1106-preview", "--strong-model"),
    weak_model: str = typer.Option("mixtral-8x7b-instruct-v0.1", "--weak-model"),
    embedder: str = typer.Option(
        None, "--embedder",
        help="mf: the prompt embedder the checkpoint was trained with, a name or a JSON spec "
        "(default: OpenAI text-embedding-3-small, as RouteLLM)",
    ),
    model_names: Path = typer.Option(
        None, "--model-names", help="mf: the model-id table, one name per line (default RouteLLM's)"
    ),
    tokenizer: str = typer.Option(
        None, "--tokenizer",
        help="bert/causal_llm: tokenizer folder when the checkpoint has none (RouteLLM's causal "
        "router uses its base model's, meta-llama/Meta-Llama-3-8B)",
    ),
    score_threshold: int = typer.Option(4, "--score-threshold", help="causal_llm: RouteLLM's"),
    threshold: float = typer.Option(
        0.5, "--threshold", help="routing threshold to store (calibrate it afterwards)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
) -> None:
    """Convert a RouteLLM router checkpoint (mf, bert, causal_llm) into a prefroute one."""
    from prefroute.compat.routellm_import import detect_kind, import_routellm, resolve_source

    options: dict = {"strong_model": strong_model, "weak_model": weak_model}
    if kind == "auto":
        kind = detect_kind(resolve_source(src))
    if kind == "mf":
        options.update(embedder=_embedder_spec(embedder), model_names=_model_names(model_names))
    elif embedder is not None or model_names is not None:
        raise ConfigError("--embedder and --model-names apply to mf checkpoints only")
    if kind in ("bert", "causal_llm") and tokenizer is not None:
        options["tokenizer"] = tokenizer
    if kind == "causal_llm":
        options["score_threshold"] = score_threshold
    written = import_routellm(src, out, kind=kind, overwrite=overwrite, threshold=threshold,
                              **options)
    typer.echo(
        f"wrote {written}: a prefroute checkpoint (threshold {threshold}); calibrate it on your "
        f"prompts with 'prefroute calibrate {written} --prompts FILE --strong-rate R'"
    )
