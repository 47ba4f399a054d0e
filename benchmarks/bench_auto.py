"""``auto`` against every candidate and the honest baselines (issue 15).

Protocols (RESULTS §2a, plus a held-out MMLU-Pro split):

* ``mmlu``, ``gsm8k``: golden cross-fit. 5 outer folds of the benchmark (near-copies in one
  fold, stratified by winner); each fold's routers train on the other folds' golden battles
  plus the 36,700 AlpacaEval judge battles and score the held-out fold.
* ``mmlu_pro``: a seeded 80/20 split of the MMLU-Pro questions with results for gpt-4o and
  Mixtral-8x7B (one fold of the same grouped, stratified 5-fold split); the routers train on
  the 80% golden battles plus the judge battles and score the 20%.

One ``AutoRouter`` fit per training set gives auto *and* every candidate
(``keep_candidates=True`` refits them all on the same battles). Baselines: kNN over golden
labels (k=50, RESULTS §2a), prompt length, random (10 seeds), oracle. For each benchmark: APGR
with 95% CIs, CPT(50%), the paired bootstrap of auto - kNN, auto - length and auto - best
candidate, Brier scores before / after a cross-fitted Platt map, and reliability diagrams.

    nice -n 10 python benchmarks/bench_auto.py [--benchmarks mmlu,gsm8k,mmlu_pro]
        [--inner-folds 3] [--combine auto] [--score-sources golden --out other.json]

The row "auto" uses ``--combine`` (default: the router's own default, the stack); the row
"auto, always stack" is the stack from the same fits, for comparison with another rule.

Writes ``benchmarks/out/auto.json`` and ``benchmarks/figures/auto_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
PRO_PAIR = ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1")


def golden_label(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """P(strong wins) as observed: 1 strong right / weak wrong, 0 the reverse, 0.5 a tie."""
    return (np.asarray(strong) - np.asarray(weak) + 1.0) / 2.0


def training_sets(bench: str, data_dir: Path, judge, seed: int):
    """(outcomes, strong, weak, [(train battles, test rows)], fold per row)."""
    from prefroute.data.battles import Battles
    from prefroute.data.loaders import golden_battles
    from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
    from prefroute.evaluate.protocols import PAIR_STRONG, PAIR_WEAK, crossfit_folds

    outcomes = load_outcomes(bench, data_dir)
    strong, weak = (ROUTELLM_STRONG, ROUTELLM_WEAK) if bench != "mmlu_pro" else PRO_PAIR
    if bench == "mmlu_pro":
        outcomes = outcomes.subset(np.flatnonzero(outcomes.complete_rows([strong, weak])))
    folds = crossfit_folds(outcomes, strong, weak, n_folds=5, seed=seed)
    splits = []
    for k in range(5 if bench != "mmlu_pro" else 1):
        train_rows = np.flatnonzero(folds != k)
        gold = golden_battles(outcomes.subset(train_rows), strong, weak, strong_name=PAIR_STRONG,
                              weak_name=PAIR_WEAK)
        splits.append((Battles.concat([gold, judge]), np.flatnonzero(folds == k)))
    return outcomes, strong, weak, splits, folds


def run_benchmark(bench: str, data_dir: Path, judge, args) -> dict:
    from prefroute.evaluate.baselines import prompt_length_probs
    from prefroute.evaluate.benchmarks import evaluate_router, prepare_eval_set
    from prefroute.evaluate.paired import paired_bootstrap_apgr_diff
    from prefroute.evaluate.protocols import PAIR_STRONG, PAIR_WEAK, KnnScorer
    from prefroute.prob_calibration import brier, crossfit_calibrated, reliability_table
    from prefroute.routers.auto import AutoRouter
    from prefroute.routers.auto_crossfit import clipped_logit, stack_predict
    from prefroute.routers.logistic import fit_soft_logistic

    outcomes, strong, weak, splits, folds = training_sets(bench, data_dir, judge, args.seed)
    probs: dict[str, np.ndarray] = {}
    fit_seconds = []
    chosen = []

    def put(name: str, rows: np.ndarray, values: np.ndarray) -> None:
        probs.setdefault(name, np.full(len(outcomes), np.nan))[rows] = values

    for k, (train, test_rows) in enumerate(splits):
        prompts = [outcomes.prompts[i] for i in test_rows]
        started = time.perf_counter()
        auto = AutoRouter(strong_model=PAIR_STRONG, weak_model=PAIR_WEAK,
                          n_folds=args.inner_folds, seed=args.seed, keep_candidates=True,
                          score_sources=args.score_sources, progress=True,
                          **({"combine": args.combine} if args.combine else {})).fit(train)
        fit_seconds.append(time.perf_counter() - started)
        chosen.append({"mode": auto.mode_, "members": auto.member_names_,
                       "oof_table": auto.oof_table_})
        print(f"[{bench}] fold {k}: auto {auto.mode_} {auto.member_names_} "
              f"({fit_seconds[-1]:.0f} s, {len(train)} battles)", flush=True)
        put("auto", test_rows, auto.predict_proba(prompts))
        put("auto (uncalibrated)", test_rows, auto.uncalibrated_proba(prompts))
        member_probs = {}
        for name, model in auto.candidate_models_.items():
            member_probs[name] = model.predict_proba(prompts)
            put(name, test_rows, member_probs[name])
        # the alternative rule, from the same fits: always the cross-fitted stack of every
        # candidate (auto stacks only when the stack's OOF APGR beats the best single one)
        weights, intercept = fit_soft_logistic(
            clipped_logit(auto.oof_probs_), auto.oof_labels_, np.ones(len(auto.oof_labels_)),
            c=float(auto.stack_c))
        stacked = stack_predict(np.column_stack([member_probs[n] for n in
                                                 auto.candidate_names_]), weights, intercept)
        put("auto, always stack", test_rows, stacked)
        put("knn-golden (k=50)", test_rows, KnnScorer().fit(train)(prompts))
        put("prompt-length", test_rows, prompt_length_probs(prompts))

    test_mask = np.isin(np.arange(len(outcomes)), np.concatenate([t for _, t in splits]))
    table = outcomes.subset(np.flatnonzero(test_mask))
    eval_set = prepare_eval_set(table, data_dir, strong_model=strong, weak_model=weak,
                                train_prompts=judge.prompts)
    s, w = eval_set.strong_scores, eval_set.weak_scores
    labels = golden_label(s, w)
    eval_folds = folds[np.flatnonzero(test_mask)][eval_set.rows]
    results, calibration = {}, {}
    for name, p_all in probs.items():
        p = p_all[np.flatnonzero(test_mask)]
        res = evaluate_router(p, table, eval_set=eval_set, name=name,
                              n_bootstrap=args.bootstrap, seed=args.seed)
        results[name] = res
        p_eval = p[eval_set.rows]
        # one fold (mmlu_pro): calibrate across 5 random parts of the held-out 20% instead
        cal_folds = (eval_folds if len(np.unique(eval_folds)) > 1
                     else np.random.default_rng(args.seed).integers(0, 5, len(p_eval)))
        calibrated = crossfit_calibrated(p_eval, labels, cal_folds, method="platt")
        calibration[name] = {
            "brier": brier(p_eval, labels), "brier_calibrated": brier(calibrated, labels),
            "reliability": reliability_table(p_eval, labels),
            "reliability_calibrated": reliability_table(calibrated, labels),
        }
    auto_p = probs["auto"][np.flatnonzero(test_mask)][eval_set.rows]
    not_candidates = ("auto", "auto (uncalibrated)", "auto, always stack", "knn-golden (k=50)",
                      "prompt-length")
    candidates = [n for n in probs if n not in not_candidates]
    best = max(candidates, key=lambda n: results[n].apgr)
    paired = {}
    stack_p = probs["auto, always stack"][np.flatnonzero(test_mask)][eval_set.rows]
    for label, mine in (("auto", auto_p), ("auto, always stack", stack_p)):
        for other in ("knn-golden (k=50)", "prompt-length", best):
            other_p = probs[other][np.flatnonzero(test_mask)][eval_set.rows]
            paired[f"{label} - {other}"] = paired_bootstrap_apgr_diff(
                s, w, mine, other_p, n_bootstrap=args.bootstrap, seed=args.seed).to_dict()
    return {"benchmark": bench, "pair": [strong, weak], "n_prompts": len(eval_set.prompts),
            "dropped": eval_set.dropped, "fit_seconds": fit_seconds, "chosen": chosen,
            "best_candidate": best, "results": {n: r.to_dict() for n, r in results.items()},
            "calibration": calibration, "paired": paired,
            "_results": results}


def markdown(out: dict) -> str:
    from prefroute.evaluate.benchmarks import format_apgr, format_cpt

    lines = []
    for bench, r in out["benchmarks"].items():
        res = r["_results"]
        lines.append(f"\n**{bench}** ({r['n_prompts']} prompts; auto's choice per fold: "
                     + "; ".join(f"{c['mode']} {'+'.join(c['members'])}" for c in r["chosen"])
                     + ")\n")
        lines.append("| router | APGR [95% CI] | CPT(50%) | Brier raw | Brier Platt (cross-fit) |")
        lines.append("|---|---|---:|---:|---:|")
        for name, e in res.items():
            cal = r["calibration"][name]
            lines.append(f"| {name} | {format_apgr(e.router)} | {format_cpt(e.cpt['50'])} | "
                         f"{cal['brier']:.4f} | {cal['brier_calibrated']:.4f} |")
        first = next(iter(res.values()))
        for ref in (first.random, first.oracle):
            lines.append(f"| {ref.name} | {format_apgr(ref)} | {format_cpt(ref.cpt['50'])} | | |")
        lines.append("")
        lines.append("| paired difference | APGR diff [95% CI] | p |")
        lines.append("|---|---|---:|")
        for name, d in r["paired"].items():
            lines.append(f"| {name} | {d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
                         f"{' (CI excludes 0)' if d['significant'] else ''} | {d['p_value']:.3f} |")
    return "\n".join(lines)


def plot_reliability(out: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(out["benchmarks"])
    fig, axes = plt.subplots(2, len(benches), figsize=(5.2 * len(benches), 9.5), squeeze=False)
    names = ["auto (uncalibrated)", "knn-golden (k=50)", "prompt-length", "sw_bt",
             "logistic", "mf-features-golden30"]
    colours = plt.get_cmap("tab10").colors
    for col, bench in enumerate(benches):
        cal = out["benchmarks"][bench]["calibration"]
        for row, key in enumerate(("reliability", "reliability_calibrated")):
            ax = axes[row][col]
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
            for i, name in enumerate(n for n in names if n in cal):
                table = cal[name][key]
                brier_key = "brier" if row == 0 else "brier_calibrated"
                ax.plot([t["predicted"] for t in table], [t["observed"] for t in table],
                        marker="o", color=colours[i],
                        label=f"{name} (Brier {cal[name][brier_key]:.3f})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("predicted P(strong model wins)")
            ax.set_ylabel("observed share won by the strong model (ties = 1/2)")
            ax.set_title(f"{bench}: {'raw scores' if row == 0 else 'after cross-fitted Platt'}")
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--benchmarks", default="mmlu_pro,gsm8k,mmlu")
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-sources", type=lambda v: v if v in ("auto", "all")
                        else v.split(","), default="auto",
                        help="auto's score_sources: auto (default: golden battles when there "
                             "are enough), all, or source prefixes, e.g. golden")
    parser.add_argument("--combine", choices=("stack", "auto", "select"),
                        help="auto's combine rule for the 'auto' row (default: the router's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "auto.json")
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "figures")
    args = parser.parse_args()
    chosen = args.score_sources
    args.suffix = "" if chosen == "auto" else "_" + (chosen if isinstance(chosen, str)
                                                     else "_".join(chosen))

    from prefroute.evaluate.plots import plot_routing_curves
    from prefroute.evaluate.protocols import judge_battles
    from prefroute.io import atomic_write_text

    judge = judge_battles(args.data_dir)
    out = {"load_average_start": os.getloadavg(), "inner_folds": args.inner_folds,
           "score_sources": args.score_sources,
           "benchmarks": {}}
    for bench in args.benchmarks.split(","):
        started = time.perf_counter()
        out["benchmarks"][bench] = run_benchmark(bench, args.data_dir, judge, args)
        out["benchmarks"][bench]["seconds"] = time.perf_counter() - started
        res = out["benchmarks"][bench]["_results"]
        shown = ["auto", "knn-golden (k=50)", "prompt-length",
                 out["benchmarks"][bench]["best_candidate"]]
        plot_routing_curves([res[n] for n in dict.fromkeys(shown)],
                            args.figures / f"auto{args.suffix}_{bench}.png",
                            title=f"{bench}: auto vs its best candidate and the baselines")
        text = markdown({"benchmarks": {bench: out["benchmarks"][bench]}})
        out["benchmarks"][bench]["markdown"] = text
        out["benchmarks"][bench].pop("_results")
        print(text, flush=True)
        out["load_average_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(out, indent=1, default=float))
    plot_reliability(out, args.figures / f"auto{args.suffix}_reliability.png")


if __name__ == "__main__":
    main()
