"""Does golden-label augmentation help? sw_bt and mf on judge battles alone vs + MMLU-Pro golden.

Training data, both decontaminated against the evaluation prompts (wordllama cosine >= 0.95
removed, as the RouteLLM paper does):

* judge: the 36,700 AlpacaEval judge battles (GPT-4-turbo judge, soft labels), model names
  canonicalised with ``apply_aliases(b, ModelAliases())``;
* judge + golden: the same plus MMLU-Pro golden battles of gpt-4o-2024-05-13 vs
  Mixtral-8x7B-Instruct-v0.1 (``data_aug.golden.golden_from_table``), renamed to the
  router's pair "gpt-4-1106-preview" / "mixtral-8x7b-instruct-v0.1".

Ablations (``--conditions``): ``golden`` (the golden battles alone: does their signal
transfer to MMLU / GSM8K at all?) and ``judge+golden-noties`` (golden ties dropped).

Evaluation: RouteLLM's stored MMLU and GSM8K outcomes of gpt-4-1106-preview vs Mixtral
(``prefroute.evaluate.evaluate_router``), on one eval set per benchmark shared by both
conditions (RouteLLM's listed contaminated prompts excluded). APGR with a 95% bootstrap CI
over prompts; mf is averaged over ``--seeds`` training seeds.

Prints a markdown table, writes ``benchmarks/out/augmentation.json`` and one PNG of routing
curves per benchmark under ``benchmarks/figures/``.

    nice -n 10 python benchmarks/bench_augmentation.py [--routers sw_bt,mf] [--seeds 1]
        [--conditions judge,judge+golden,golden,judge+golden-noties]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
PAIR_STRONG, PAIR_WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
GOLDEN_PAIR = ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1")


def wait_for(modules: list[str], poll_s: int = 120, max_wait_s: int = 3600) -> None:
    """Poll until the routers and the evaluator (written concurrently) import."""
    start = time.time()
    while True:
        missing = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # a module being written can fail to import for a while
                missing.append(f"{name} ({type(e).__name__})")
        if not missing:
            return
        if time.time() - start > max_wait_s:
            raise SystemExit(f"gave up waiting for {missing}")
        print(f"[wait] {missing}; retrying in {poll_s}s", flush=True)
        time.sleep(poll_s)


CONDITIONS = ("judge", "judge+golden", "golden", "judge+golden-noties")


def build_training_sets(data_dir: Path, eval_prompts: list[str], embedder, threshold: float):
    from data_aug.golden import golden_from_table
    from prefroute.data.aliases import ModelAliases
    from prefroute.data.battles import Battles
    from prefroute.data.decontamination import decontaminate
    from prefroute.data.loaders import apply_aliases, load_source
    from prefroute.data.outcomes import load_outcomes

    judge = apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())
    pro = load_outcomes("mmlu_pro", data_dir)
    golden = golden_from_table(pro, *GOLDEN_PAIR, strong_name=PAIR_STRONG, weak_name=PAIR_WEAK)
    judge_kept, judge_report = decontaminate(judge, eval_prompts, embedder=embedder,
                                             threshold=threshold)
    golden_kept, golden_report = decontaminate(golden, eval_prompts, embedder=embedder,
                                               threshold=threshold)
    winners = golden_kept.column("winner")
    golden_noties = golden_kept.filter(np.array(winners, dtype=object) != "tie")
    info = {
        "judge_battles": len(judge),
        "judge_removed": len(judge_report),
        "golden_battles": len(golden),
        "golden_removed": len(golden_report),
        "golden_kept_winners": {w: winners.count(w) for w in ("model_a", "model_b", "tie")},
        "judge_pair_battles": int(sum(1 for a, b in zip(judge_kept.column("model_a"),
                                                          judge_kept.column("model_b"), strict=True)
                                      if {a, b} == {PAIR_STRONG, PAIR_WEAK})),
    }
    sets = {"judge": judge_kept, "judge+golden": Battles.concat([judge_kept, golden_kept]),
            "golden": golden_kept,
            "judge+golden-noties": Battles.concat([judge_kept, golden_noties])}
    return sets, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--routers", default="sw_bt,mf")
    parser.add_argument("--benchmarks", default="mmlu,gsm8k")
    parser.add_argument("--conditions", default="judge,judge+golden",
                        help=f"training sets, from {list(CONDITIONS)}; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds for mf")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "augmentation.json"))
    parser.add_argument("--figures", default=str(ROOT / "benchmarks" / "figures"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; choose from {list(CONDITIONS)}")
    wait_for([f"prefroute.routers.{r}" for r in routers] + ["prefroute.evaluate"])

    from prefroute.data.outcomes import load_outcomes
    from prefroute.embed import CachedEmbedder, build_embedder
    from prefroute.evaluate import evaluate_router, plot_routing_curves, prepare_eval_set
    from prefroute.evaluate.benchmarks import format_apgr
    from prefroute.router import make_router

    data_dir = Path(args.data_dir)
    embedder = CachedEmbedder(build_embedder("wordllama"), ROOT / "benchmarks" / "out" /
                              "embed_cache_augmentation")
    tables = {b: load_outcomes(b, data_dir) for b in benchmarks}
    eval_prompts = sorted({p for t in tables.values() for p in t.prompts})
    t0 = time.time()
    train_sets, info = build_training_sets(data_dir, eval_prompts, embedder, args.threshold)
    train_sets = {c: train_sets[c] for c in conditions}
    print("training data:", json.dumps(info), flush=True)
    union = sorted({p for b in train_sets.values() for p in b.prompts})
    eval_sets = {b: prepare_eval_set(t, data_dir, train_prompts=union, embedder=embedder,
                                     contamination_threshold=args.threshold)
                 for b, t in tables.items()}
    for b, s in eval_sets.items():
        print(f"eval {b}: {len(s.prompts)} prompts, dropped {s.dropped}", flush=True)

    rows, results, out = [], {b: [] for b in benchmarks}, {"info": info, "runs": []}
    for router in routers:
        seeds = range(args.seeds) if router == "mf" else range(1)
        for condition, train in train_sets.items():
            probs = {b: [] for b in benchmarks}
            fit_s = []
            for seed in seeds:
                params = {"embedder": embedder}
                if router == "mf":
                    params.update(seed=seed, progress=False)
                predictor = make_router(router, strong_model=PAIR_STRONG, weak_model=PAIR_WEAK,
                                        **params)
                start = time.time()
                predictor.fit(train)
                fit_s.append(time.time() - start)
                for b, s in eval_sets.items():
                    probs[b].append(predictor.predict_proba(s.prompts))
            row = {"router": router, "condition": condition, "battles": len(train),
                   "seeds": len(seeds), "fit_s": float(np.mean(fit_s))}
            for b, s in eval_sets.items():
                mean_probs = np.mean(probs[b], axis=0)  # seeds averaged: one ensemble router
                name = f"{router} ({condition})"
                # a callable: the probabilities are already those of the eval set's prompts
                result = evaluate_router(lambda _, p=mean_probs: p, tables[b], eval_set=s,
                                         name=name, n_bootstrap=args.n_bootstrap, seed=0)
                per_seed = [evaluate_router(lambda _, p=p: p, tables[b], eval_set=s, name=name,
                                            n_bootstrap=0).apgr
                            for p in probs[b]] if len(seeds) > 1 else []
                results[b].append(result)
                row[b] = {"apgr": result.apgr, "apgr_ci": result.apgr_ci,
                          "cpt50": result.cpt["50"], "per_seed_apgr": per_seed,
                          "text": format_apgr(result.router)}
            rows.append(row)
            out["runs"].append(row)
            print(f"[{time.time() - t0:.0f}s] {router} on {condition}: "
                  + ", ".join(f"{b} {row[b]['text']}" for b in benchmarks), flush=True)

    head = "| router | training data | battles | " + " | ".join(
        f"{b} APGR [95% CI] | Δ vs {conditions[0]}" for b in benchmarks) + " |"
    lines = [head, "|---|---|---:|" + "---|---:|" * len(benchmarks)]
    for row in rows:
        base = next(r for r in rows
                    if r["router"] == row["router"] and r["condition"] == conditions[0])
        cells = [row["router"] + (f" (mean of {row['seeds']} seeds)" if row["seeds"] > 1 else ""),
                 row["condition"], f"{row['battles']:,}"]
        for b in benchmarks:
            delta = row[b]["apgr"] - base[b]["apgr"]
            cells += [row[b]["text"], "" if row is base else f"{delta:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = {b: results[b][0] for b in benchmarks}
    for ref in ("random", "oracle"):
        cells = [ref, "", ""]
        for b in benchmarks:
            cells += [f"{getattr(first[b], ref).apgr:.3f}", ""]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    figures = []
    for b in benchmarks:
        path = Path(args.figures) / f"augmentation_{b}.png"
        figures.append(str(plot_routing_curves(results[b], path,
                                               title=f"{b}: " + " vs ".join(conditions))))
    out.update(table="\n".join(lines), figures=figures, seconds=time.time() - t0,
               eval_prompts={b: len(s.prompts) for b, s in eval_sets.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    print("\nfigures:", *figures, sep="\n  ")
    print("results:", args.out)


if __name__ == "__main__":
    main()
