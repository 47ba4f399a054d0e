"""`prefroute train`: fit a win predictor on battles and save a router checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prefroute.cli.common import resolve_data_dir
from prefroute.errors import ConfigError, check_int
from prefroute.io import check_output_dir


def train(
    router: str = typer.Option(
        "auto",
        "--router",
        help="auto (default: cross-fitted choice among sw_bt, mf, knn, logistic, length), "
        "sw_bt, mf, knn, logistic, length, random, bert or causal_llm",
    ),
    data: list[str] = typer.Option(
        ...,
        "--data",
        help="battles file (.jsonl/.csv/.parquet: prompt, model_a, model_b, winner[, weight, "
        "p_b_wins]) or a "
        "named source: alpaca_eval, mt_bench_human, mt_bench_gpt4, golden:<table> (the "
        "strong/weak models' own columns; golden:mmlu_pro@STRONG_COL,WEAK_COL names "
        "stand-ins) (repeat for several)",
    ),
    strong_model: str = typer.Option(..., "--strong-model"),
    weak_model: str = typer.Option(..., "--weak-model"),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace an existing non-empty --out folder"
    ),
    embedder: str = typer.Option(
        "wordllama", "--embedder", help="wordllama, minilm, tfidf, openai"
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    params: str = typer.Option(
        "{}", "--params", help="extra router parameters as JSON, e.g. '{\"epochs\": 5}'"
    ),
    threshold: float = typer.Option(0.5, "--threshold", help="initial threshold (calibrate later)"),
    no_clean: bool = typer.Option(
        False, "--no-clean", help="skip short-prompt and duplicate filters"
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="bert / causal_llm: model folder, .gguf file or hub name"
    ),
    epochs: int | None = typer.Option(None, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank (0: full fine-tuning)"),
    max_train_battles: int | None = typer.Option(
        None, "--max-train-battles", help="seeded subsample of the battles (neural routers)"
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps"),
    max_memory_gb: float | None = typer.Option(
        None, "--max-memory-gb",
        help="bert / causal_llm: memory a training step may use (default: half the RAM); "
        "batches are cut into micro-batches to fit, or the run stops before training",
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", help="bert / causal_llm: tokens per input (long prompts lose "
        "their middle)",
    ),
    train_last_layers: int | None = typer.Option(
        None, "--train-last-layers",
        help="bert / causal_llm: train only the top N layers (default on a CPU: causal_llm 4)",
    ),
    source_weight: list[str] = typer.Option(
        [],
        "--source-weight",
        help="PREFIX=W: multiply the weight of battles whose source starts with PREFIX, "
        "e.g. golden=30 (repeatable)",
    ),
) -> None:
    """Train a router on battle data and save it as a checkpoint.

    Without --router, trains ``auto``: it cross-fits the candidate routers and keeps the best
    out of fold (or their stack); `prefroute info OUT` shows the out-of-fold table.

    Example: prefroute train --router mf --data alpaca_eval
    --data golden:mmlu_pro@gpt-4o-2024-05-13,Mixtral-8x7B-Instruct-v0.1
    --strong-model gpt-4-1106-preview --weak-model mixtral-8x7b-instruct-v0.1 --out runs/mf
    """
    from prefroute.router import Router
    from prefroute.routers.base import router_class
    from prefroute.training import load_training_battles, train_router, weight_sources

    data_files = [Path(d) for d in data if Path(d).exists()]
    # checked before hours of training, and again (atomically) when saving
    check_output_dir(out, overwrite=overwrite, inputs=data_files)
    for flag, value in (("--batch-size", batch_size), ("--epochs", epochs),
                        ("--max-steps", max_steps), ("--max-train-battles", max_train_battles)):
        check_int(flag, "prefroute train", value, optional=True)
    try:
        extra = json.loads(params)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--params is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise ConfigError("--params must be a JSON object")
    needs_dir = any(not Path(d).exists() for d in data)
    battles = load_training_battles(
        data,
        resolve_data_dir(data_dir) if needs_dir else data_dir,
        strong_model=strong_model,
        weak_model=weak_model,
        clean=not no_clean,
    )
    if source_weight:
        battles = weight_sources(battles, _parse_weights(source_weight))
    typer.echo(f"training {router} on {len(battles):,} battles ({len(battles.models())} models)")
    accepted = router_class(router)._param_names()
    flags = {
        "backbone": backbone,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "lr": lr,
        "lora_r": lora_r,
        "max_train_battles": max_train_battles,
        "device": device,
        "max_memory_gb": max_memory_gb,
        "max_length": max_length,
        "train_last_layers": train_last_layers,
    }
    for name, value in flags.items():
        if value is None:
            continue
        if name not in accepted:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to the {router!r} router")
        extra.setdefault(name, value)
    if "embedder" in accepted:
        extra.setdefault("embedder", embedder)
    predictor = train_router(
        router, battles, strong_model=strong_model, weak_model=weak_model, **extra
    )
    training = {"sources": list(data), "n_battles": len(battles), "clean": not no_clean}
    check_output_dir(out, overwrite=overwrite, inputs=data_files)
    Router(predictor, threshold, training=training).save_pretrained(out, overwrite=overwrite)
    typer.echo(f"saved {router} router to {out}")


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        prefix, sep, value = item.partition("=")
        try:
            weights[prefix] = float(value)
        except ValueError:
            sep = ""
        if not sep or not prefix:
            raise ConfigError(f"--source-weight expects PREFIX=NUMBER, got {item!r}")
    return weights
