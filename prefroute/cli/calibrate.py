"""`prefroute calibrate`: set a checkpoint's threshold for a call rate or a budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from prefroute.errors import ConfigError
from prefroute.io import check_output_dir, staged_output_dir


def calibrate(
    checkpoint: Path = typer.Argument(..., help="router checkpoint folder"),
    prompts: Path = typer.Option(
        ..., "--prompts",
        help="calibration prompts: JSONL, CSV or Parquet with a 'prompt' field, or plain text",
    ),
    strong_rate: float | None = typer.Option(
        None, "--strong-rate", help="target strong-model call rate"
    ),
    budget_per_1k: float | None = typer.Option(None, "--budget", help="$ per 1,000 requests"),
    budget_fraction: float | None = typer.Option(
        None, "--budget-fraction", help="fraction of the all-strong cost, e.g. 0.4"
    ),
    strong_price_per_call: float = typer.Option(0.0, "--strong-price-per-call"),
    weak_price_per_call: float = typer.Option(0.0, "--weak-price-per-call"),
    strong_price_in: float = typer.Option(0.0, "--strong-price-per-1k-input"),
    strong_price_out: float = typer.Option(0.0, "--strong-price-per-1k-output"),
    weak_price_in: float = typer.Option(0.0, "--weak-price-per-1k-input"),
    weak_price_out: float = typer.Option(0.0, "--weak-price-per-1k-output"),
    output_tokens: float = typer.Option(256.0, "--expected-output-tokens"),
    out: Path | None = typer.Option(
        None, "--out", help="write a calibrated copy here (default: in place)"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace an existing --out checkpoint prefroute wrote"
    ),
) -> None:
    """Choose the threshold for a strong-call rate or a cost budget and store it.

    Example: prefroute calibrate runs/mf --prompts prompts.jsonl --strong-rate 0.3
    """
    from prefroute.calibrate import Prices, calibrate_budget, calibrate_strong_rate
    from prefroute.data.prompts import read_prompts
    from prefroute.router import load_router

    chosen = [x is not None for x in (strong_rate, budget_per_1k, budget_fraction)]
    if sum(chosen) != 1:
        raise ConfigError("give exactly one of --strong-rate, --budget or --budget-fraction")
    inputs = [checkpoint, prompts]  # --out replaces a folder: never one holding these
    if out is not None:
        check_output_dir(out, overwrite=overwrite, inputs=inputs)
    router = load_router(checkpoint)
    texts = read_prompts(prompts)
    probs = router.strong_win_prob(texts)
    if strong_rate is not None:
        cal = calibrate_strong_rate(probs, strong_rate)
    else:
        prices = Prices(
            strong_price_per_call,
            weak_price_per_call,
            strong_price_in,
            strong_price_out,
            weak_price_in,
            weak_price_out,
            output_tokens,
        )
        cal = calibrate_budget(
            probs,
            texts,
            prices,
            per_1k_requests=budget_per_1k,
            fraction_of_all_strong=budget_fraction,
        )
    router.set_calibration(cal)
    target = checkpoint if out is None else out
    if out is None:
        router.save_threshold(checkpoint)  # rewrites config.json atomically; weights untouched
    else:
        with staged_output_dir(out, overwrite=overwrite, inputs=inputs) as stage:
            shutil.copytree(checkpoint, stage, dirs_exist_ok=True, symlinks=True)
            router.save_threshold(stage)
    typer.echo(json.dumps(cal.to_dict(), indent=2))
    typer.echo(
        f"threshold {cal.threshold:.6f}: strong-call rate {cal.realised_strong_rate:.3f} on "
        f"{cal.n_prompts:,} prompts; saved to {target}"
    )
