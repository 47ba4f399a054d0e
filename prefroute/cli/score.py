"""`prefroute score`: P(strong wins) for each prompt of a file."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def score(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    prompts: Path = typer.Option(
        ..., "--prompts", help="JSONL with a 'prompt' field, or text, one per line"
    ),
    out: Path = typer.Option(..., "--out", help="output JSONL: prompt, strong_win_prob, routed_to"),
    batch_size: int = typer.Option(1024, "--batch-size"),
) -> None:
    """Score prompts with a saved router; rows come out in input order."""
    from tqdm import tqdm

    from prefroute.data.prompts import read_prompts
    from prefroute.router import load_router

    router = load_router(checkpoint)
    texts = read_prompts(prompts)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for start in tqdm(range(0, len(texts), batch_size), desc="scoring", unit="batch"):
            batch = texts[start : start + batch_size]
            for prompt, prob in zip(batch, router.strong_win_prob(batch)):
                routed = router.strong_model if prob >= router.threshold else router.weak_model
                row = {"prompt": prompt, "strong_win_prob": float(prob), "routed_to": routed}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    typer.echo(f"wrote {len(texts):,} scores to {out}")
