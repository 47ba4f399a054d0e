"""`prefroute benchmark`: the main job: train, calibrate, save, evaluate, plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from prefroute.cli.common import resolve_data_dir
from prefroute.errors import check_int
from prefroute.io import atomic_write_text, staged_output_dir

DEFAULT_ROUTERS = ("sw_bt", "mf")

LEGEND = """\
How to read this table (transfer protocol: routers trained on AlpacaEval judge battles plus
MMLU-Pro golden battles, with every near-copy of an evaluation prompt removed; scored on the
stored MT-Bench, MMLU and GSM8K outcomes of gpt-4-1106-preview vs Mixtral-8x7B):
- APGR: average performance gap recovered over strong-call rates. 0 = the weak model's
  quality, 1 = the strong model's; random routing gives 0.5 by construction, the oracle > 1.
- [low, high]: 95% bootstrap CI over prompts. The random row shows a seed spread instead
  (+-1 sd over 10 seeds, labelled), the oracle is exact. A router beats random only when
  its whole interval lies above random's.
- CPT(50%): strong-model calls needed to recover half the gap (lower is better; random ~50%).
- Below random: under transfer a router ranks prompts by what mattered in its training data;
  where the benchmark disagrees (on MMLU math gpt-4-1106-preview is no better than Mixtral,
  while MMLU-Pro taught "math needs the strong model") it ranks worse than chance."""


def benchmark(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    out: Path = typer.Option(
        Path("benchmarks/out/main"), "--out", help="checkpoints, plots, results"
    ),
    routers: list[str] = typer.Option(list(DEFAULT_ROUTERS), "--router", help="routers to train"),
    strong_rate: float = typer.Option(
        0.5, "--strong-rate", help="strong-call rate to calibrate each checkpoint for"
    ),
    embedder: str = typer.Option("wordllama", "--embedder"),
    n_bootstrap: int = typer.Option(1000, "--bootstrap"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace an existing non-empty --out folder"
    ),
) -> None:
    """Train routers on the default mix, calibrate, save, and evaluate on MT-Bench, MMLU, GSM8K.

    Training mix: the AlpacaEval GPT-4-turbo judge battles plus MMLU-Pro golden battles
    (gpt-4o vs Mixtral relabelled to the gpt-4-1106-preview / Mixtral pair), with every prompt
    within 0.95 cosine of an evaluation prompt removed. Thresholds are calibrated on the
    AlpacaEval prompts for ``--strong-rate``.
    """
    started = time.perf_counter()
    data_dir = resolve_data_dir(data_dir)
    check_int("--bootstrap", "prefroute benchmark", n_bootstrap)
    with staged_output_dir(out, overwrite=overwrite, inputs=[data_dir]) as stage:
        _run_benchmark(data_dir, stage, out, routers, strong_rate, embedder, n_bootstrap)
    typer.echo(f"done in {time.perf_counter() - started:.0f} s; results in {out / 'results.md'}")


def _run_benchmark(
    data_dir: Path,
    stage: Path,
    out: Path,
    routers: list[str],
    strong_rate: float,
    embedder: str,
    n_bootstrap: int,
) -> None:
    """Everything ``benchmark`` does, writing into ``stage`` (renamed to ``out`` at the end)."""
    import numpy as np

    from prefroute.data.outcomes import load_outcomes
    from prefroute.evaluate import (
        evaluate_router,
        plot_routing_curves,
        prepare_eval_set,
        results_markdown,
    )
    from prefroute.evaluate.protocols import TRANSFER_BENCHMARKS, transfer_training_battles
    from prefroute.router import Router
    from prefroute.training import (
        DEFAULT_STRONG,
        DEFAULT_TRAINING_MIX,
        DEFAULT_WEAK,
        train_router,
    )

    tables = {b: load_outcomes(b, data_dir) for b in TRANSFER_BENCHMARKS}
    eval_prompts = sorted(
        {p for t in tables.values() for p in t.prompts}
        | {turn for turns in tables["mt-bench"].meta["turns"] for turn in turns}
    )
    train, info = transfer_training_battles(data_dir, eval_prompts, embedder=embedder)
    typer.echo(
        f"training mix: {len(train):,} battles after decontamination "
        f"({info['removed_judge_battles']} judge and {info['removed_mmlu_pro_battles']} "
        "MMLU-Pro golden battles removed)"
    )
    train_prompts = sorted(set(train.prompts))
    calibration_prompts = sorted(
        {p for p, s in zip(train.prompts, train.column("source")) if str(s).startswith("judge")}
    )
    eval_sets = {
        b: prepare_eval_set(t, data_dir, train_prompts=train_prompts, embedder=embedder)
        for b, t in tables.items()
    }
    results: dict[str, list] = {b: [] for b in tables}
    summary = {"training": info, "routers": {}}
    for name in routers:
        t0 = time.perf_counter()
        params = {} if name == "random" else {"embedder": embedder}
        predictor = train_router(
            name, train, strong_model=DEFAULT_STRONG, weak_model=DEFAULT_WEAK, **params
        )
        fit_seconds = time.perf_counter() - t0
        router = Router(
            predictor,
            training={
                "sources": list(DEFAULT_TRAINING_MIX),
                "decontaminated_against": list(tables),
            },
        )
        cal = router.calibrate(calibration_prompts, strong_rate)
        router.save_pretrained(stage / name)
        entry = {
            "fit_seconds": round(fit_seconds, 2),
            "threshold": cal.threshold,
            "calibration_strong_rate": cal.realised_strong_rate,
            "benchmarks": {},
        }
        for bench, eval_set in eval_sets.items():
            result = evaluate_router(
                router, tables[bench], eval_set=eval_set, name=name, n_bootstrap=n_bootstrap
            )
            results[bench].append(result)
            probs = router.strong_win_prob(eval_set.prompts)
            strong = probs >= router.threshold
            quality = np.where(strong, eval_set.strong_scores, eval_set.weak_scores).mean()
            entry["benchmarks"][bench] = {
                "apgr": result.apgr,
                "apgr_ci": result.apgr_ci,
                "cpt": result.cpt,
                "at_threshold": {"strong_rate": float(strong.mean()), "quality": float(quality)},
            }
        summary["routers"][name] = entry
        typer.echo(
            f"{name}: fitted in {fit_seconds:.1f} s, threshold {cal.threshold:.4f} "
            f"({100 * strong_rate:.0f}% strong calls on the AlpacaEval prompts), saved to "
            f"{out / name}"
        )
    flat = [r for rs in results.values() for r in rs]
    table = results_markdown(flat)
    for bench, rs in results.items():
        plot_routing_curves(rs, stage / f"{bench}.png", title=f"{bench}: transfer protocol")
    atomic_write_text(stage / "results.md", f"{LEGEND}\n\n{table}\n")
    atomic_write_text(
        stage / "results.json",
        json.dumps({"summary": summary, "results": [r.to_dict() for r in flat]}, indent=2) + "\n",
    )
    typer.echo("\n" + LEGEND + "\n\n" + table)
    typer.echo(f"\nplots: {', '.join(str(out / f'{b}.png') for b in results)}")
