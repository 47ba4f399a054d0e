"""N-way routing benchmark: every router x policy on held-out RouterBench and MMLU-Pro splits.

Prints, per table, the paper's table (Srivatsa et al., NAACL 2024 SRW): Oracle, Random, each
LLM, and every router under each policy (accuracy, $ cost, latency), the classifier upper
bound, RouterBench's AIQ of each router's lambda sweep, whether a router matches the best
single model for less, and the share of the oracle gap it closes. Figures go to
benchmarks/figures/, raw results to benchmarks/out/multi_results.json.

    nice -n 10 python benchmarks/bench_multi.py                        # both tables
    nice -n 10 python benchmarks/bench_multi.py --tables routerbench --routers mlc knn

Splits: seeded 70 / 10 / 20 (train / validation for policy settings / test). MMLU-Pro has
missing results: models without a result on more than 5% of questions are dropped
(DeepSeek-Coder-V2), then questions missing any remaining model (23): 29 models x 9,603.
MMLU-Pro has no prices, so its cost, latency and AIQ are n/a (pass --profile with prices).
RouterBench: cost = the recorded $ of each call; latency = proportional to each model's mean
cost (1 s for the priciest model), a documented stand-in, RouterBench has no latencies.
The fine-tuned encoder (mlc-encoder) trains on at most --encoder-train-cap training prompts
(CPU time); the other routers use the whole training split. The reported numbers come from

    nice -n 10 python benchmarks/bench_multi.py --tables routerbench
    nice -n 10 python benchmarks/bench_multi.py --tables mmlu_pro --encoder-train-cap 1000

(on a shared 2-core CPU: the encoder is fine-tuned for 1 epoch at 128 tokens; with a GPU pass
--device cuda and a larger cap / more --encoder-epochs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefroute.data.outcomes import load_outcomes  # noqa: E402
from prefroute.data.paths import default_data_dir  # noqa: E402
from prefroute.embed import CachedEmbedder, build_embedder  # noqa: E402
from prefroute.multi import ROUTER_PRESETS, load_multi_router, make_multi_router  # noqa: E402
from prefroute.multi.data import prepare_table, split_rows, write_split  # noqa: E402
from prefroute.multi.evaluation import (  # noqa: E402
    EvalData,
    baseline_results,
    evaluate_router,
    markdown_table,
    savings_summary,
    shared_cost_range,
)
from prefroute.multi.labels import labels_from_outcomes  # noqa: E402
from prefroute.multi.metrics import ModelProfile, aiq  # noqa: E402
from prefroute.multi.plots import plot_accuracy_bars, plot_cost_quality  # noqa: E402

ALL_ROUTERS = [
    "mlc",
    "sc",
    "kmeans-tfidf",
    "kmeans-embed",
    "knn",
    "mf",
    "mf-pairwise",
    "mlc-encoder",
]


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def router_params(name: str, args: argparse.Namespace, embedder) -> dict:
    cls, preset = ROUTER_PRESETS[name]
    params: dict = {}
    names = cls._param_names()
    if "embedder" in names and "embedder" not in preset:
        params["embedder"] = embedder
    if name == "kmeans-embed":
        params["embedder"] = embedder
    if "seed" in names:
        params["seed"] = args.seed
    if name == "mlc-encoder":
        params.update(
            max_length=args.encoder_max_length,
            epochs=args.encoder_epochs,
            device=args.device,
            progress=True,
        )
    return params


def run_table(table_name: str, args: argparse.Namespace) -> dict:
    raw = load_outcomes(table_name, args.data_dir)
    prepared = prepare_table(raw, max_missing=args.max_missing)
    table = prepared.table
    split = split_rows(len(table), test_size=0.2, val_size=0.1, seed=args.seed)
    profile = ModelProfile.from_json(args.profile, table.models) if args.profile else None
    data = EvalData.from_split(table, split, profile)
    baselines = baseline_results(data)
    cost_range = shared_cost_range(baselines)
    train = table.subset(split.train)
    labels = labels_from_outcomes(train)
    val_prompts = [table.prompts[i] for i in split.val]
    test_prompts = [table.prompts[i] for i in split.test]
    embedder = CachedEmbedder(build_embedder("wordllama"), args.cache_dir)
    print(
        f"\n## {table_name}: {len(table):,} prompts x {len(table.models)} models "
        f"(dropped models {prepared.dropped_models}, dropped prompts {prepared.dropped_rows}); "
        f"train {len(split.train):,} / val {len(split.val):,} / test {len(split.test):,}, "
        f"seed {args.seed}",
        flush=True,
    )
    evaluations, timings = [], {}
    for name in tqdm(args.routers, desc=f"{table_name} routers", unit="router"):
        params = router_params(name, args, embedder)
        rows = np.arange(len(train))
        if name == "mlc-encoder" and len(rows) > args.encoder_train_cap:
            rows = np.sort(
                np.random.default_rng(args.seed).permutation(len(rows))[: args.encoder_train_cap]
            )
        start = time.perf_counter()
        router = make_multi_router(name, **params).fit(
            [train.prompts[i] for i in rows], labels.subset(rows)
        )
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        conf_val = router.predict_scores(val_prompts)
        conf_test = router.predict_scores(test_prompts)
        predict_s = time.perf_counter() - start
        folder = args.out_dir / table_name / name
        router.save_pretrained(folder)
        write_split(folder, prepared, split)  # `prefroute multi eval` can re-score it
        reloaded = load_multi_router(folder).predict_scores(test_prompts)
        identical = bool(np.array_equal(reloaded, conf_test))
        timings[name] = {
            "fit_s": fit_s,
            "predict_s": predict_s,
            "n_train": int(len(rows)),
            "reload_identical": identical,
        }
        tqdm.write(
            f"{name}: fit {fit_s:.1f}s on {len(rows):,} prompts, "
            f"scored {len(val_prompts) + len(test_prompts):,} "
            f"in {predict_s:.1f}s, reload identical: {identical}"
        )
        evaluations.append(
            evaluate_router(name, conf_val, conf_test, data, cost_range=cost_range, seed=args.seed)
        )

    print(f"\ncost: {data.profile.price_source}; latency: {data.profile.latency_source}\n")
    print(markdown_table(baselines, evaluations))
    singles_aiq = None
    if cost_range is not None:
        s = baselines["singles"]
        singles_aiq = aiq([r.cost for r in s], [r.accuracy for r in s], cost_range=cost_range)
        print(
            f"\nAIQ range ${cost_range[0] * 1000:.4f} .. ${cost_range[1] * 1000:.4f} "
            "per 1k prompts "
            f"(cheapest .. priciest single model); AIQ of mixing single models without a router: "
            f"{singles_aiq * 100:.2f}"
        )
    print(
        "\n| Router | best policy | Acc (%) | vs best single (points, 95% CI) | "
        "oracle gap closed | cheapest config matching the best single | its Acc (%) | "
        "its $/1k | saving | fit (s) | score (s) |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    summaries = []
    for ev in evaluations:
        s = savings_summary(ev, baselines)
        summaries.append(s)
        t = timings[ev.router]
        config = s.get("matching_config")
        low, high = s["diff_ci95"]
        diff_s = f"{s['diff_vs_best_single'] * 100:+.2f} [{low * 100:+.2f}, {high * 100:+.2f}]"
        if "matching_config" not in s:
            match = "n/a (no prices)"
            acc_s = cost_s = saving_s = "n/a"
        elif config is None:
            gap = s.get("accuracy_gap_to_best_single")
            match = "none" if gap is None else f"none (gap {gap * 100:.2f} points)"
            acc_s = cost_s = saving_s = "n/a"
        else:
            match = config
            acc_s = f"{s['matching_accuracy'] * 100:.2f}"
            cost_s = f"{s['matching_cost'] * 1000:.4f}"
            saving = s["saving_vs_best_single"]
            saving_s = "none" if saving is None else f"{saving * 100:.1f}%"
        print(
            f"| {ev.router} | {s['best_policy']} | {s['best_policy_accuracy'] * 100:.2f} | "
            f"{diff_s} | {s['oracle_gap_closed']:+.3f} | {match} | {acc_s} | {cost_s} | "
            f"{saving_s} | "
            f"{t['fit_s']:.1f} | {t['predict_s']:.1f} |"
        )
    print(
        f"\nbest single model: {baselines['best_single'].name} "
        f"({baselines['best_single'].accuracy * 100:.2f}%); "
        f"oracle {baselines['oracle'].accuracy * 100:.2f}%"
    )
    if data.has_costs:
        single = baselines["best_single"]
        matched = [s for s in summaries if s.get("matches_best_single_cheaper")]
        if matched:
            best = min(matched, key=lambda s: s["matching_cost"])
            print(
                f"cheapest router matching {single.name} ({single.accuracy * 100:.2f}%): "
                f"{best['router']} / {best['matching_config']} at "
                f"{best['matching_accuracy'] * 100:.2f}%, "
                f"${best['matching_cost'] * 1000:.4f}/1k vs ${single.cost * 1000:.4f}/1k "
                f"({best['saving_vs_best_single'] * 100:.1f}% cheaper)"
            )
        else:
            closest = min(summaries, key=lambda s: s["accuracy_gap_to_best_single"])
            print(
                f"no router matches {single.name} on the test split; closest: {closest['router']}, "
                f"{closest['accuracy_gap_to_best_single'] * 100:.2f} points below"
            )

    args.figures.mkdir(parents=True, exist_ok=True)
    title = f"{table_name}: {len(split.test):,} held-out prompts, {len(table.models)} models"
    if data.has_costs:
        fig = plot_cost_quality(
            args.figures / f"multi_{table_name}_cost_quality.png",
            baselines,
            evaluations,
            title=title,
        )
    else:
        fig = plot_accuracy_bars(
            args.figures / f"multi_{table_name}_accuracy.png",
            baselines,
            evaluations,
            title=title + " (no prices: accuracy only)",
        )
    print(f"\nfigure: {fig.relative_to(ROOT) if fig.is_relative_to(ROOT) else fig}")
    return {
        "table": table_name,
        "n": len(table),
        "models": table.models,
        "dropped_models": prepared.dropped_models,
        "dropped_rows": prepared.dropped_rows,
        "split": {
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "seed": args.seed,
        },
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
                "timing": timings[ev.router],
                "summary": s,
            }
            for ev, s in zip(evaluations, summaries, strict=True)
        ],
        "figure": str(fig),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", nargs="+", default=["routerbench", "mmlu_pro"])
    parser.add_argument("--routers", nargs="+", default=ALL_ROUTERS, choices=sorted(ROUTER_PRESETS))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-missing", type=float, default=0.05)
    parser.add_argument(
        "--profile", type=Path, default=None, help="JSON prices/latencies per model"
    )
    parser.add_argument("--encoder-train-cap", type=int, default=2000)
    parser.add_argument("--encoder-max-length", type=int, default=128)
    parser.add_argument("--encoder-epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="for mlc-encoder: cpu, cuda or auto")
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "figures")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out" / "multi")
    parser.add_argument(
        "--cache-dir", type=Path, default=ROOT / "benchmarks" / "out" / "embed-cache"
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "out" / "multi_results.json"
    )
    args = parser.parse_args()
    args.data_dir = args.data_dir or default_data_dir()
    for name in args.tables:
        result = run_table(name, args)
        # written after each table, merged with earlier runs, so tables can run separately
        args.json.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
        previous[result["table"]] = result
        args.json.write_text(json.dumps(_jsonable(previous), indent=2) + "\n")
        print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
