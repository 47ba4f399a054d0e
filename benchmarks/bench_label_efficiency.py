"""Label efficiency: APGR against the number of labelled prompts, `augment select` vs random.

For MMLU, GSM8K (RouteLLM's gpt-4 vs Mixtral outcomes) and MMLU-Pro (gpt-4o vs Mixtral):
one grouped, stratified 5-fold split (seed 0; near-copies in one fold); fold 0 is the test
set, the other folds the pool. From the pool, N prompts (50 ... 1,600, at most the pool)
get their golden label, picked either uniformly at random or by ``select_prompts``
(stratified over k-means strata of the embedding + surface-feature space; no router, so
no uncertainty term), or by ``select_prompts`` with a router retrained on the labels so far
(active learning rounds at the sizes below; inside a stratum, draws favour uncertainty), or by
``select_prompts(method="disagreement")`` (rounds again: a model of the labels so far
predicts where the two models disagree, and picks are drawn in proportion to its square).
A logistic router (``routers.logistic``: wordllama + surface features; two-part by default,
as the router trains, or ``--learner soft``) trains on those N labels only and is scored on
the test fold (APGR, RouteLLM's deciles). 10 seeds by default.

    nice -n 10 python benchmarks/bench_label_efficiency.py --seeds 30

Writes ``benchmarks/out/label_efficiency.json`` and
``benchmarks/figures/label_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
SIZES = (50, 100, 200, 400, 800, 1600)
PAIRS = {"mmlu": ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
         "gsm8k": ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
         "mmlu_pro": ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1")}


METHODS = ("random", "select", "select_router", "select_disagreement")


@dataclass
class LabelSplit:
    """Fold 0 of the grouped 5-fold split (seed 0) as the test set, the other folds' distinct
    prompts as the pool, both embedded (wordllama + surface features fitted on the pool)."""

    pool: list[str]
    x_pool: np.ndarray
    labels: np.ndarray  # (strong correct - weak correct + 1) / 2 per pool prompt
    test_rows: np.ndarray
    x_test: np.ndarray
    s_test: np.ndarray
    w_test: np.ndarray


def pool_and_test(bench: str, data_dir: Path) -> LabelSplit:
    from prefroute.data.outcomes import load_outcomes
    from prefroute.embed.features import FeatureAugmentedEmbedder
    from prefroute.evaluate.protocols import crossfit_folds

    strong, weak = PAIRS[bench]
    table = load_outcomes(bench, data_dir)
    table = table.subset(np.flatnonzero(table.complete_rows([strong, weak])))
    folds = crossfit_folds(table, strong, weak, n_folds=5, seed=0)
    # one row per distinct prompt in the pool, so N labels are N different prompts
    pool_rows = np.flatnonzero(folds != 0)
    _, first = np.unique(np.array([table.prompts[i] for i in pool_rows], dtype=object),
                         return_index=True)
    pool_rows = pool_rows[np.sort(first)]
    test_rows = np.flatnonzero(folds == 0)
    pool = [table.prompts[i] for i in pool_rows]
    embedder = FeatureAugmentedEmbedder(feature_weight=1.0).fit(pool)
    s_pool, w_pool = table.column(strong)[pool_rows], table.column(weak)[pool_rows]
    return LabelSplit(
        pool=pool,
        x_pool=embedder.encode(pool).astype(np.float64),
        labels=(s_pool - w_pool + 1.0) / 2.0,
        test_rows=test_rows,
        x_test=embedder.encode([table.prompts[i] for i in test_rows]).astype(np.float64),
        s_test=table.column(strong)[test_rows],
        w_test=table.column(weak)[test_rows],
    )


def run(bench: str, data_dir: Path, seeds: int, learner: str = "soft",
        methods: tuple[str, ...] = METHODS) -> dict:
    from scipy.special import expit

    from prefroute.evaluate.metrics import router_metrics
    from prefroute.routers.logistic import (
        decisive_parts,
        fit_soft_logistic,
        fit_two_part_logistic,
        two_part_proba,
    )
    from prefroute.selection import disagreement_probability, select_prompts

    strong, weak = PAIRS[bench]
    split = pool_and_test(bench, data_dir)
    pool, x_pool, x_test, labels = split.pool, split.x_pool, split.x_test, split.labels
    s_test, w_test, test_rows = split.s_test, split.w_test, split.test_rows

    def probs_of(idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        """P(strong wins) for ``x`` from the learner (LogisticRouter's, plain or two_part)
        trained on the labels of ``idx``."""
        if learner == "soft":
            coef, intercept = fit_soft_logistic(x_pool[idx], labels[idx], np.ones(len(idx)),
                                                c=1.0)
            return expit(x @ coef + intercept)
        tie, direction = fit_two_part_logistic(x_pool[idx], labels[idx], np.ones(len(idx)),
                                               c=1.0)
        return two_part_proba(x, tie, direction)

    def apgr_of(idx: np.ndarray) -> float:
        return router_metrics(s_test, w_test, probs_of(idx, x_test), n_bootstrap=0,
                              grid=2).apgr

    def rounds_with_router(seed: int) -> list[float]:
        """Active learning as a user would run it: the first size picked at random, then each
        round ``augment select --router`` on the unlabelled rest, with the router retrained
        on every label so far (cluster coverage mixed with uncertainty)."""
        chosen = np.random.default_rng(seed).choice(len(pool), sizes[0], replace=False)
        curve = [apgr_of(chosen)]
        for n in sizes[1:]:
            free = np.setdiff1d(np.arange(len(pool)), chosen)
            picks = select_prompts([pool[i] for i in free], n - len(chosen), seed=seed,
                                   vectors=x_pool[free],
                                   strong_win_prob=probs_of(chosen, x_pool[free]))
            chosen = np.concatenate([chosen, free[picks.indices]])
            curve.append(apgr_of(chosen))
        return curve

    disagreed, _ = decisive_parts(labels)  # 1: one model right, the other wrong

    def rounds_by_disagreement(seed: int) -> list[float]:
        """``augment select --labelled`` each round: the first size at random, then draws
        weighted by the predicted chance that the models disagree, refitted every round."""
        chosen = np.random.default_rng(seed).choice(len(pool), sizes[0], replace=False)
        curve = [apgr_of(chosen)]
        for n in sizes[1:]:
            free = np.setdiff1d(np.arange(len(pool)), chosen)
            d = disagreement_probability(x_pool[free], x_pool[chosen], disagreed[chosen])
            picks = select_prompts([pool[i] for i in free], n - len(chosen), seed=seed,
                                   method="disagreement", vectors=x_pool[free], disagreement=d)
            chosen = np.concatenate([chosen, free[picks.indices]])
            curve.append(apgr_of(chosen))
        return curve

    sizes = [n for n in SIZES if n <= len(pool)]
    curves: dict[str, list[list[float]]] = {m: [] for m in methods}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        if "random" in curves:
            curves["random"].append([apgr_of(rng.choice(len(pool), n, replace=False))
                                     for n in sizes])
        if "select" in curves:
            curves["select"].append([apgr_of(select_prompts(pool, n, seed=seed,
                                                            vectors=x_pool).indices)
                                     for n in sizes])
        if "select_router" in curves:
            curves["select_router"].append(rounds_with_router(seed))
        if "select_disagreement" in curves:
            curves["select_disagreement"].append(rounds_by_disagreement(seed))
        print(f"[{bench}] seed {seed}: " + "; ".join(
            f"{k} {np.round(v[-1], 3).tolist()}" for k, v in curves.items()), flush=True)
    full = apgr_of(np.arange(len(pool)))
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    target = mean["random"][-1]
    selectors = [m for m in methods if m != "random"]
    reached = {k: next((n for n, m in zip(sizes, mean[k], strict=True) if m >= target), None)
               for k in selectors}
    # the goal: each selector at half the largest size against random at the largest size
    # (different draws, so a Welch interval of the difference of means)
    half = sizes.index(sizes[-1] // 2) if sizes[-1] // 2 in sizes else None
    goal = {}
    for k in selectors:
        if half is None:
            break
        a, b = np.array(curves[k])[:, half], np.array(curves["random"])[:, -1]
        diff = a.mean() - b.mean()
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        goal[k] = {"labels": sizes[half], "random_labels": sizes[-1], "difference": diff,
                   "ci95": [diff - 1.96 * se, diff + 1.96 * se]}
    return {"benchmark": bench, "learner": learner, "pair": [strong, weak], "pool": len(pool),
            "test": len(test_rows), "sizes": sizes, "curves": curves,
            "mean": {k: v.tolist() for k, v in mean.items()},
            "sd": {k: np.std(v, axis=0, ddof=1).tolist() for k, v in curves.items()},
            "all_pool_labels_apgr": full,
            "first_size_reaching_random_at_max": reached, "half_labels_vs_random": goal}


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 5.2), squeeze=False)
    colours = {"random": "tab:grey", "select": "tab:blue", "select_router": "tab:orange",
               "select_disagreement": "tab:red"}
    labels = {"random": "random prompts", "select": "augment select (stratified)",
              "select_router": "augment select --router, retrained each round",
              "select_disagreement": "augment select --labelled (where models disagree), "
                                     "each round"}
    for ax, (bench, r) in zip(axes[0], results.items(), strict=True):
        sizes = np.array(r["sizes"])
        for key in [k for k in colours if k in r["mean"]]:
            m, sd = np.array(r["mean"][key]), np.array(r["sd"][key])
            half = 1.96 * sd / np.sqrt(len(r["curves"][key]))  # 95% CI of the mean
            ax.plot(sizes, m, marker="o", color=colours[key],
                    label=f"{labels[key]}, mean of {len(r['curves'][key])} seeds")
            ax.fill_between(sizes, m - half, m + half, color=colours[key], alpha=0.15)
        ax.axhline(r["all_pool_labels_apgr"], color="tab:green", linestyle=":",
                   label="trained on every pool label")
        ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8, label="random router (0.5)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("labelled prompts (golden labels)")
        ax.set_ylabel(f"APGR on {r['test']} held-out prompts")
        learner = "two-part logistic" if r.get("learner") == "two_part" else "logistic"
        ax.set_title(f"{bench}: {learner} router trained on the picks")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8,
               title="which prompts get labelled (shaded: 95% CI of the mean over seeds)")
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--benchmarks", default="mmlu,gsm8k,mmlu_pro")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--learner", choices=("two_part", "soft"), default="two_part",
                        help="LogisticRouter as trained by default (two_part), or with "
                        "two_part=False")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "out" / "label_efficiency.json")
    parser.add_argument("--figure", type=Path,
                        default=ROOT / "benchmarks" / "figures" / "label_efficiency.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw from --out's JSON")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text())["results"], args.figure)
        return
    from prefroute.io import atomic_write_text

    started = time.perf_counter()
    methods = tuple(args.methods.split(","))
    results = {b: run(b, args.data_dir, args.seeds, args.learner, methods)
               for b in args.benchmarks.split(",")}
    out = {"seconds": time.perf_counter() - started, "load_average": os.getloadavg(),
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    plot(results, args.figure)
    for bench, r in results.items():
        print(f"\n{bench} (pool {r['pool']}, test {r['test']})")
        keys = list(r["mean"])
        print("| labels | " + " | ".join(f"{k} APGR (mean ± sd)" for k in keys) + " |")
        print("|---:|" + "---|" * len(keys))
        for i, n in enumerate(r["sizes"]):
            print(f"| {n} | " + " | ".join(f"{r['mean'][k][i]:.3f} ± {r['sd'][k][i]:.3f}"
                                           for k in keys) + " |")
        print(f"all pool labels: {r['all_pool_labels_apgr']:.3f}; first size reaching random's "
              f"APGR at {r['sizes'][-1]}: {r['first_size_reaching_random_at_max']}")
        for k, g in r["half_labels_vs_random"].items():
            print(f"{k} at {g['labels']} - random at {g['random_labels']}: "
                  f"{g['difference']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]")


if __name__ == "__main__":
    main()
