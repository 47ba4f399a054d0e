"""`prefroute multi train|eval`: N-way routers (route each prompt to one of N LLMs).

train: load an outcome table, drop incomplete models/prompts, split it (seeded train / val /
test), fit a router on the train rows and save it with the split (``split.json``).
eval: score the held-out split with one or more saved routers under each policy, next to the
oracle, random routing and every single model; print a markdown table (or JSON) and
optionally draw the cost-quality plane.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from prefroute.cli.common import resolve_data_dir
from prefroute.errors import ConfigError, check_choice
from prefroute.io import check_output_dir, check_output_file, staged_output_dir

app = typer.Typer(
    name="multi",
    help="N-way routing: route each prompt to one of N LLMs (train / eval on outcome tables).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TABLES = ("mmlu_pro", "routerbench", "mmlu", "gsm8k", "mt-bench")


def _load_prepared(table: str, data_dir: Path | None, max_missing: float) -> Any:
    from prefroute.data.outcomes import load_outcomes
    from prefroute.multi.data import prepare_table

    check_choice("table", "prefroute multi", table, TABLES)
    return prepare_table(load_outcomes(table, resolve_data_dir(data_dir)), max_missing=max_missing)


def _json_params(text: str) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object, got {text!r}")
    return params


@app.command()
def train(
    table: str = typer.Option(
        ..., "--table", help="outcome table: mmlu_pro, routerbench (also mmlu, gsm8k)"
    ),
    router: str = typer.Option(
        ...,
        "--router",
        help="mlc, sc, kmeans-tfidf, kmeans-embed, knn, mf, mf-pairwise, mlc-encoder",
    ),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace an existing non-empty --out folder"
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    test_size: float = typer.Option(
        0.2, "--test-size", help="share of prompts held out for testing"
    ),
    val_size: float = typer.Option(
        0.1, "--val-size", help="share held out to fit policies (tau, lambda)"
    ),
    seed: int = typer.Option(0, "--seed", help="seeds the split and the router"),
    embedder: str = typer.Option(
        "wordllama", "--embedder", help="wordllama, minilm, tfidf, openai"
    ),
    params: str = typer.Option(
        "{}", "--params", help="router parameters as JSON, e.g. '{\"k\": 50}'"
    ),
    max_missing: float = typer.Option(
        0.05,
        "--max-missing",
        help="drop models without a result on more than this share of prompts",
    ),
    label_threshold: float | None = typer.Option(
        None,
        "--label-threshold",
        help="for non-0/1 scores: a model solves a prompt when score >= this",
    ),
) -> None:
    """Train an N-way router on the training split of an outcome table.

    Example: prefroute multi train --table routerbench --router mlc --out runs/multi-mlc
    """
    from prefroute.multi import ROUTER_PRESETS, make_multi_router
    from prefroute.multi.data import split_rows, write_split
    from prefroute.multi.labels import labels_from_outcomes

    check_choice("router", "prefroute multi train", router, tuple(ROUTER_PRESETS))
    check_output_dir(out, overwrite=overwrite)  # before training, not after
    extra = _json_params(params)
    cls, preset = ROUTER_PRESETS[router]
    names = cls._param_names()
    if "embedder" in names and "embedder" not in preset:
        extra.setdefault("embedder", embedder)
    if "seed" in names:
        extra.setdefault("seed", seed)
    if "progress" in names:
        extra.setdefault("progress", True)
    prepared = _load_prepared(table, data_dir, max_missing)
    tab = prepared.table
    split = split_rows(len(tab), test_size=test_size, val_size=val_size, seed=seed)
    train_tab = tab.subset(split.train)
    labels = labels_from_outcomes(train_tab, threshold=label_threshold)
    typer.echo(
        f"training {router} on {len(split.train):,} {tab.name} prompts x {len(tab.models)} models "
        f"(val {len(split.val):,}, test {len(split.test):,} held out)"
    )
    model = make_multi_router(router, **extra).fit(train_tab.prompts, labels)
    with staged_output_dir(out, overwrite=overwrite) as stage:
        model.save_pretrained(stage)
        write_split(stage, prepared, split)
        from prefroute.checkpoint import record_files

        record_files(stage)
    typer.echo(f"saved {router} router to {out}")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy -> Python."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@app.command("eval")
def eval_(
    routers: list[Path] = typer.Argument(
        ..., help="checkpoint folders written by `prefroute multi train`"
    ),
    table: str = typer.Option(..., "--table", help="the table the routers were trained on"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    policy: str = typer.Option(
        "all", "--policy", help="all, argmax, random, prediction, prediction-rf, sorted or cost"
    ),
    lam: float | None = typer.Option(
        None, "--lambda", help="cost policy: quality - lambda * $ (default: fitted on validation)"
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", help="random policy: confidence below which to pick at random"
    ),
    profile: Path | None = typer.Option(
        None, "--profile", help='JSON {"prices": {model: $ per call}, "latencies": {model: s}}'
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a markdown table"),
    plot: Path | None = typer.Option(
        None, "--plot", help="write the cost-quality plane (PNG) here"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --plot file"),
) -> None:
    """Evaluate saved routers on their held-out split: every policy, oracle, random, each LLM.

    Example: prefroute multi eval runs/multi-mlc runs/multi-knn --table routerbench --plot cq.png
    """
    if plot is not None:
        check_output_file(plot, overwrite=overwrite, inputs=routers, flag="--plot")
    import numpy as np

    from prefroute.multi.base import load_multi_router
    from prefroute.multi.data import SPLIT_FILE, read_split
    from prefroute.multi.evaluation import (
        POLICY_NAMES,
        EvalData,
        baseline_results,
        evaluate_router,
        markdown_table,
        savings_summary,
        shared_cost_range,
    )
    from prefroute.multi.metrics import ModelProfile, aiq

    check_choice("policy", "prefroute multi eval", policy, ("all", *POLICY_NAMES))
    policies = POLICY_NAMES if policy == "all" else (policy,)
    first = routers[0] / SPLIT_FILE
    if not first.is_file():
        raise ConfigError(f"{first} is missing: train the router with `prefroute multi train`")
    recorded = json.loads(first.read_text())
    if recorded.get("table") != table:
        raise ConfigError(
            f"{routers[0]} was trained on table {recorded.get('table')!r}, not {table!r}"
        )
    prepared = _load_prepared(table, data_dir, float(recorded.get("max_missing", 0.05)))
    tab = prepared.table
    split = read_split(routers[0], prepared)
    for folder in routers[1:]:
        other = read_split(folder, prepared)
        if not np.array_equal(other.test, split.test) or not np.array_equal(other.val, split.val):
            raise ConfigError(
                f"{folder} was trained on another split than {routers[0]} "
                "(--seed/--test-size/--val-size differ); evaluate them separately"
            )
    model_profile = ModelProfile.from_json(profile, tab.models) if profile else None
    data = EvalData.from_split(tab, split, model_profile)
    baselines = baseline_results(data)
    cost_range = shared_cost_range(baselines)
    val_prompts = [tab.prompts[i] for i in split.val]
    test_prompts = [tab.prompts[i] for i in split.test]
    evaluations = []
    for folder in routers:
        model = load_multi_router(folder)
        if model.models != tab.models:
            raise ConfigError(f"{folder} routes among {model.models}, the table has {tab.models}")
        typer.echo(
            f"scoring {len(val_prompts) + len(test_prompts):,} prompts with {folder.name}", err=True
        )
        ev = evaluate_router(
            folder.name,
            model.predict_scores(val_prompts),
            model.predict_scores(test_prompts),
            data,
            policies=policies,
            threshold=threshold,
            lam=lam,
            cost_range=cost_range,
        )
        evaluations.append(ev)
    singles_aiq = None
    if cost_range is not None:
        s = baselines["singles"]
        singles_aiq = aiq([r.cost for r in s], [r.accuracy for r in s], cost_range=cost_range)
    if plot is not None:
        from prefroute.multi.plots import plot_accuracy_bars, plot_cost_quality

        title = f"{tab.name}: {len(split.test):,} held-out prompts, {len(tab.models)} models"
        if data.has_costs:
            plot_cost_quality(plot, baselines, evaluations, title=title)
        else:
            plot_accuracy_bars(plot, baselines, evaluations, title=title + " (no costs)")
    if as_json:
        report = {
            "table": tab.name,
            "models": tab.models,
            "dropped_models": prepared.dropped_models,
            "n_test": int(len(split.test)),
            "n_val": int(len(split.val)),
            "price_source": data.profile.price_source,
            "latency_source": data.profile.latency_source,
            "cost_range": cost_range,
            "single_models_aiq": singles_aiq,
            "oracle": baselines["oracle"].as_dict(),
            "random": baselines["random"].as_dict(),
            "singles": [r.as_dict() for r in baselines["singles"]],
            "routers": [
                {
                    "router": ev.router,
                    "results": [r.as_dict() for r in ev.results],
                    "upper_bound": ev.upper_bound.as_dict(),
                    "aiq": ev.aiq,
                    "settings": ev.settings,
                    "savings": savings_summary(ev, baselines),
                }
                for ev in evaluations
            ],
        }
        typer.echo(json.dumps(_clean(report), indent=2))
        return
    typer.echo(
        f"{tab.name}: {len(split.test):,} held-out prompts, {len(tab.models)} models; "
        f"cost: {data.profile.price_source}; latency: {data.profile.latency_source}"
    )
    typer.echo(markdown_table(baselines, evaluations))
    if singles_aiq is not None:
        typer.echo(f"AIQ of mixing single models (no router): {singles_aiq * 100:.2f}")
    for ev in evaluations:
        s = savings_summary(ev, baselines)
        if "diff_vs_best_single" in s:
            low, high = s["diff_ci95"]
            typer.echo(
                f"{ev.router}: best policy {s['best_policy']} "
                f"{s['best_policy_accuracy'] * 100:.2f}%, {s['diff_vs_best_single'] * 100:+.2f} "
                f"points vs {s['best_single']} (95% CI {low * 100:+.2f} .. {high * 100:+.2f}), "
                f"oracle gap closed {s['oracle_gap_closed']:+.3f}"
            )
        if "matching_config" not in s:
            continue
        target = f"{s['best_single']} ({s['best_single_accuracy'] * 100:.2f}%)"
        if s["matching_config"] is not None and s["saving_vs_best_single"] is not None:
            verdict = (
                f"matches {target} with {s['matching_config']}: "
                f"{s['matching_accuracy'] * 100:.2f}% at ${s['matching_cost'] * 1000:.4f}/1k vs "
                f"${s['best_single_cost'] * 1000:.4f}/1k, "
                f"{s['saving_vs_best_single'] * 100:.1f}% cheaper"
            )
        elif s["matching_config"] is not None:
            verdict = (
                f"matches {target} only at the same or a higher cost "
                f"(${s['matching_cost'] * 1000:.4f}/1k vs ${s['best_single_cost'] * 1000:.4f}/1k): "
                "no saving"
            )
        else:
            verdict = (
                f"does not reach {target}: gap {s['accuracy_gap_to_best_single'] * 100:.2f} points"
            )
        typer.echo(f"{ev.router}: {verdict}")
    if plot is not None:
        typer.echo(f"wrote {plot}")
