"""The preference loop, measured: new-model swap and incremental update against retraining.

1. **New-model swap on AlpacaEval judge battles.** For each held-out weak model M (the
   strong model is gpt-4-1106-preview, which meets every model), a router is trained on the
   battles without M. M is then swapped in from k of its battles (k = 25 ... 400), and the
   APGR on M's other prompts is set beside a full retrain on all battles plus the same k, a
   router trained on the k battles only, kNN on the k labels, prompt length and random.
   Every k is scored on the same prompts: those outside M's largest k. Per prompt, the
   strong model's score is the judge's P(strong answer better) and M's is its complement.
2. **The same swap on MMLU-Pro golden battles** (gpt-4o-2024-05-13 against each other model,
   on a seeded pool of questions; scores are correctness).
3. **Incremental update**: RouteLLM's MMLU golden battles (gpt-4-1106-preview vs Mixtral)
   of 80% of the prompts, in file order (subject by subject, the data has no timestamps), in
   5 chunks; the router is updated chunk by chunk and compared after each step with a
   retrain on every chunk so far, on the other 20% of prompts (APGR with bootstrap CI).

Writes ``benchmarks/out/loop/results.json`` and ``benchmarks/figures/loop_*.png``.

    nice -n 10 python benchmarks/bench_loop.py [--models 8] [--pro-models 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
KS = (25, 50, 100, 200, 400)
ALPACA_STRONG = "gpt-4-1106-preview"
ALPACA_BASE_WEAK = "mixtral-8x7b-instruct-v0.1"
PRO_STRONG = "gpt-4o-2024-05-13"
PRO_BASE_WEAK = "Mixtral-8x7B-Instruct-v0.1"
MF_PARAMS = {"epochs": 5, "patience": 2, "projection_bias": True, "progress": False}
METHODS = ("swap", "retrain", "k-only")
#: held-out models trail the strong model by at least this much (mean judge preference or
#: accuracy): with a smaller gap APGR divides by almost nothing and explodes
MIN_GAP = 0.05
ALPACA_TITLE = "New-model swap on AlpacaEval judge battles (strong model: gpt-4-1106-preview)"
PRO_TITLE = ("New-model swap on MMLU-Pro golden battles (strong model: " + PRO_STRONG
             + ", {:,} questions)")


def apgr_of(strong: np.ndarray, weak: np.ndarray, probs: np.ndarray) -> float:
    from prefroute.evaluate import router_metrics

    return router_metrics(strong, weak, probs, n_bootstrap=0, grid=2).apgr


_EMBEDDER = None


def memo_embedder():
    """wordllama with every vector kept in memory: each prompt is embedded once per run.

    Every router here (swap, retrain, k-only) shares it, so the timings compare fitting,
    not re-embedding the same prompts (a production retrain would cache them too).
    """
    global _EMBEDDER
    if _EMBEDDER is None:
        from prefroute.embed import build_embedder
        from prefroute.embed.base import Embedder

        inner = build_embedder("wordllama")

        class MemoEmbedder(Embedder):
            name = inner.name

            def __init__(self) -> None:
                self.vectors: dict[str, np.ndarray] = {}

            @property
            def dim(self) -> int:
                return inner.dim

            def params(self) -> dict:
                return inner.params()

            def _encode(self, texts: list[str]) -> np.ndarray:
                missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
                if missing:
                    self.vectors.update(zip(missing, inner.encode(missing), strict=True))
                return np.stack([self.vectors[t] for t in texts])

        _EMBEDDER = MemoEmbedder()
    return _EMBEDDER


def train_router(name: str, battles, *, strong_model: str, weak_model: str, **params):
    """Fit a router on the battles' own model names (no alias canonicalisation)."""
    from prefroute.router import make_router

    return make_router(name, strong_model=strong_model, weak_model=weak_model,
                       embedder=memo_embedder(), **params).fit(battles)


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result, seconds): with ``repeat``, the least of up to that many runs while a run takes
    under 2 s (the machine is shared, so the minimum is the least noisy estimate; the calls
    are deterministic). Used for the updates, whose times are fractions of a second."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - started)
        if best >= 2.0:
            break
    return out, best


def pick_models(strength: dict[str, float], exclude: set[str], n: int) -> list[str]:
    """n models spread evenly over the range of ``strength`` (deterministic)."""
    pool = sorted((m for m in strength if m not in exclude), key=lambda m: (strength[m], m))
    idx = np.linspace(0, len(pool) - 1, n).round().astype(int)
    return [pool[i] for i in idx]


def swap_study(name: str, battles, strong: str, base_weak: str, held_out: list[str],
               scores_of, ks=KS, seed: int = 0) -> dict:
    """The swap protocol on one battle set. ``scores_of(M, prompts)`` -> (strong, weak)."""
    from prefroute.data.battles import Battles
    from prefroute.evaluate import knn_probs, prompt_length_probs
    from prefroute.loop.mf_update import learn_model_vector
    from prefroute.loop.sw_bt_update import swap_model

    model_b = np.array(battles.column("model_b"), dtype=object)
    model_a = np.array(battles.column("model_a"), dtype=object)
    out = {"held_out": held_out, "ks": list(ks), "runs": []}
    memo_embedder().encode(sorted(set(battles.prompts)))  # embed once, before any timing
    for m in held_out:
        involved = (model_a == m) | (model_b == m)
        base = battles.filter(~involved)
        own = battles.filter(involved)
        order = np.random.default_rng(seed).permutation(len(own))
        own = own.take(order)
        eval_part = own.take(np.arange(max(ks), len(own)))
        prompts = eval_part.prompts
        strong_s, weak_s = scores_of(m, eval_part)
        if strong_s.mean() == weak_s.mean():
            print(f"[{name}] {m}: equal mean quality on the eval prompts; skipped")
            continue
        base_sw, t_base_sw = timed(train_router, "sw_bt", base, strong_model=strong,
                                   weak_model=base_weak)
        base_mf, t_base_mf = timed(train_router, "mf", base, strong_model=strong,
                                   weak_model=base_weak, **MF_PARAMS)
        run = {"model": m, "n_eval": len(prompts), "base_seconds": {"sw_bt": t_base_sw,
                                                                    "mf": t_base_mf},
               "random": float(np.mean([apgr_of(strong_s, weak_s, np.random.default_rng(s)
                                                .random(len(prompts))) for s in range(10)])),
               "length": apgr_of(strong_s, weak_s, prompt_length_probs(prompts)),
               "oracle": apgr_of(strong_s, weak_s, strong_s - weak_s),
               "k": {}}
        for k in ks:
            given = own.take(np.arange(k))
            union = Battles.concat([base, given])
            row: dict = {}
            sw, t = timed(swap_model, base_sw, given, role="weak", model=m, repeat=3)
            row["sw_bt swap"] = (apgr_of(strong_s, weak_s, sw.predict_proba(prompts)), t)
            sw_full, t = timed(train_router, "sw_bt", union, strong_model=strong, weak_model=m)
            row["sw_bt retrain"] = (apgr_of(strong_s, weak_s, sw_full.predict_proba(prompts)), t)
            sw_k, t = timed(train_router, "sw_bt", given, strong_model=strong, weak_model=m)
            row["sw_bt k-only"] = (apgr_of(strong_s, weak_s, sw_k.predict_proba(prompts)), t)
            mf, t = timed(learn_model_vector, base_mf, given, m, repeat=3)
            row["mf swap"] = (apgr_of(strong_s, weak_s, mf.pair_proba(prompts, strong, m)), t)
            mf_full, t = timed(train_router, "mf", union, strong_model=strong, weak_model=m,
                               **MF_PARAMS)
            row["mf retrain"] = (apgr_of(strong_s, weak_s, mf_full.predict_proba(prompts)), t)
            try:
                mf_k, t = timed(train_router, "mf", given, strong_model=strong, weak_model=m,
                                **{**MF_PARAMS, "epochs": 30, "val_fraction": 0.0})
                row["mf k-only"] = (apgr_of(strong_s, weak_s, mf_k.predict_proba(prompts)), t)
            except Exception as e:  # e.g. every one of the k golden battles is a tie
                print(f"[{name}] {m} k={k}: mf k-only failed: {e}")
                row["mf k-only"] = (float("nan"), float("nan"))
            label = _strong_win_label(given, strong)
            row["kNN on k"] = (apgr_of(strong_s, weak_s, knn_probs(
                given.prompts, label, prompts, k=min(10, k))), float("nan"))
            run["k"][str(k)] = {key: {"apgr": a, "seconds": s} for key, (a, s) in row.items()}
            print(f"[{name}] {m} k={k}: " + ", ".join(
                f"{key} {a:.3f}" for key, (a, _) in row.items()), flush=True)
        out["runs"].append(run)
    return out


def swap_timing(battles, strong: str, base_weak: str, held_out: list[str], k: int = 100,
                repeats: int = 7, seed: int = 0) -> dict:
    """sw_bt swap vs sw_bt retrain on the union, each the least of ``repeats`` interleaved
    runs (both are fractions of a second; the minimum is the least noisy on a busy machine)."""
    from prefroute.data.battles import Battles
    from prefroute.loop.sw_bt_update import swap_model

    memo_embedder().encode(sorted(set(battles.prompts)))  # time fitting, not embedding
    model_a = np.array(battles.column("model_a"), dtype=object)
    model_b = np.array(battles.column("model_b"), dtype=object)
    rows = []
    for m in held_out:
        involved = (model_a == m) | (model_b == m)
        base, own = battles.filter(~involved), battles.filter(involved)
        given = own.take(np.random.default_rng(seed).permutation(len(own))[:k])
        fitted = train_router("sw_bt", base, strong_model=strong, weak_model=base_weak)
        union = Battles.concat([base, given])
        swap_s, retrain_s = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            swap_model(fitted, given, role="weak", model=m)
            swap_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            train_router("sw_bt", union, strong_model=strong, weak_model=m)
            retrain_s.append(time.perf_counter() - started)
        rows.append({"model": m, "swap_s": min(swap_s), "retrain_s": min(retrain_s),
                     "swap_median_s": float(np.median(swap_s)),
                     "retrain_median_s": float(np.median(retrain_s))})
        print(f"[timing] {m}: swap {min(swap_s) * 1e3:.1f} ms, retrain "
              f"{min(retrain_s) * 1e3:.1f} ms", flush=True)
    return {"k": k, "repeats": repeats, "rows": rows}


def _strong_win_label(battles, strong: str) -> np.ndarray:
    """1 when the strong model won (soft label where there is one, ties 0.5)."""
    a_is_strong = np.array(battles.column("model_a"), dtype=object) == strong
    winner = np.array(battles.column("winner"), dtype=object)
    a_won = np.where(winner == "model_a", 1.0, np.where(winner == "model_b", 0.0, 0.5))
    p_b = battles.numeric("p_b_wins")
    a_won = np.where(np.isnan(p_b), a_won, 1.0 - p_b)
    return np.where(a_is_strong, a_won, 1.0 - a_won)


def summarise(study: dict) -> dict:
    """Mean, std, min and max over held-out models of each method's APGR and time, per k."""
    summary: dict = {}
    runs = study["runs"]
    for k in study["ks"]:
        per = {}
        methods = runs[0]["k"][str(k)].keys()
        for method in methods:
            apgrs = np.array([r["k"][str(k)][method]["apgr"] for r in runs])
            secs = np.array([r["k"][str(k)][method]["seconds"] for r in runs])
            per[method] = {"mean": float(np.nanmean(apgrs)), "std": float(np.nanstd(apgrs)),
                           "min": float(np.nanmin(apgrs)), "max": float(np.nanmax(apgrs)),
                           "seconds": float(np.nanmean(secs)) if np.isfinite(secs).any()
                           else None}
        summary[str(k)] = per
    for ref in ("random", "length", "oracle"):
        vals = np.array([r[ref] for r in runs])
        summary[ref] = {"mean": float(vals.mean()), "std": float(vals.std())}
    return summary


def incremental_study(data_dir: Path, n_chunks: int = 5, seed: int = 0,
                      n_bootstrap: int = 500) -> dict:
    """Update chunk by chunk vs retrain on the union so far (MMLU golden battles)."""
    from prefroute.data.battles import Battles
    from prefroute.data.loaders import golden_battles
    from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
    from prefroute.evaluate import router_metrics
    from prefroute.loop.mf_update import warm_update
    from prefroute.loop.sw_bt_update import append_battles

    table = load_outcomes("mmlu", data_dir)
    rng = np.random.default_rng(seed)
    is_eval = np.zeros(len(table), dtype=bool)
    is_eval[rng.permutation(len(table))[: len(table) // 5]] = True
    train_rows = np.flatnonzero(~is_eval)  # file order: subject by subject
    eval_rows = np.flatnonzero(is_eval)
    strong_s = table.column(ROUTELLM_STRONG)[eval_rows]
    weak_s = table.column(ROUTELLM_WEAK)[eval_rows]
    prompts = [table.prompts[i] for i in eval_rows]
    chunks = np.array_split(train_rows, n_chunks)
    pair = {"strong_model": ROUTELLM_STRONG, "weak_model": ROUTELLM_WEAK}
    battles = [golden_battles(table.subset(c), ROUTELLM_STRONG, ROUTELLM_WEAK) for c in chunks]
    memo_embedder().encode(table.prompts)  # step 1 must not pay for embedding
    steps = []
    sw = mf = None
    seen: list = []
    for i, chunk in enumerate(battles):
        seen.append(chunk)
        union = Battles.concat(seen)
        if i == 0:
            sw, t_sw = timed(train_router, "sw_bt", chunk, **pair)
            mf, t_mf = timed(train_router, "mf", chunk, **pair, **MF_PARAMS)
        else:
            sw, t_sw = timed(append_battles, sw, chunk, repeat=3)
            mf, t_mf = timed(warm_update, mf, chunk, replay=Battles.concat(seen[:-1]), epochs=3)
        sw_full, t_sw_full = timed(train_router, "sw_bt", union, **pair)
        mf_full, t_mf_full = timed(train_router, "mf", union, **pair, **MF_PARAMS)
        step = {"step": i + 1, "n_battles": len(union)}
        for key, model, secs in (("sw_bt update", sw, t_sw), ("sw_bt retrain", sw_full, t_sw_full),
                                 ("mf update", mf, t_mf), ("mf retrain", mf_full, t_mf_full)):
            m = router_metrics(strong_s, weak_s, model.predict_proba(prompts),
                               n_bootstrap=n_bootstrap, grid=2)
            step[key] = {"apgr": m.apgr, "ci": list(m.apgr_ci), "seconds": secs}
        print(f"[incremental] step {i + 1}: " + ", ".join(
            f"{k} {v['apgr']:.3f} ({v['seconds']:.2f} s)" for k, v in step.items()
            if isinstance(v, dict)), flush=True)
        steps.append(step)
    return {"n_eval": len(prompts), "n_train_prompts": len(train_rows), "steps": steps}


# --- plots --------------------------------------------------------------------------------
COLOURS = {"swap": "#1f77b4", "retrain": "#d62728", "k-only": "#2ca02c", "kNN on k": "#9467bd"}


def plot_swap(study: dict, summary: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = study["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), sharey=True)
    # the swap is drawn wide and the retrain dashed on top: where they coincide, both show
    style = {"swap": {"lw": 4, "alpha": 0.6, "ls": "-", "marker": "o", "ms": 9},
             "retrain": {"lw": 1.5, "ls": "--", "marker": "x", "ms": 7},
             "k-only": {"lw": 1.5, "ls": "-", "marker": "o", "ms": 5}}
    for ax, router in zip(axes, ("sw_bt", "mf"), strict=True):
        for method in METHODS:
            key = f"{router} {method}"
            mean = np.array([summary[str(k)][key]["mean"] for k in ks])
            std = np.array([summary[str(k)][key]["std"] for k in ks])
            ax.plot(ks, mean, color=COLOURS[method], **style[method], label=f"{method} "
                    + {"swap": "(update: only the new model is learnt)",
                       "retrain": "(full retrain on all battles + the k)",
                       "k-only": "(trained on the k battles only)"}[method])
            ax.fill_between(ks, mean - std, mean + std, color=COLOURS[method], alpha=0.12)
        knn = np.array([summary[str(k)]["kNN on k"]["mean"] for k in ks])
        ax.plot(ks, knn, "s--", color=COLOURS["kNN on k"], label="kNN on the k labels")
        ax.axhline(summary["random"]["mean"], color="grey", ls=":",
                   label="random (mean of 10 seeds)")
        ax.axhline(summary["length"]["mean"], color="black", ls="-.", lw=1,
                   label="prompt length")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k = battles of the new model given")
        ax.set_title(f"{router} (bands: ± 1 std over held-out models)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"APGR on its other prompts (mean over {len(study['runs'])} models)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_incremental(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = study["steps"]
    x = [s["step"] for s in steps]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"sw_bt update": ("#1f77b4", "-"), "sw_bt retrain": ("#1f77b4", "--"),
              "mf update": ("#d62728", "-"), "mf retrain": ("#d62728", "--")}
    for key, (colour, ls) in styles.items():
        apgrs = np.array([s[key]["apgr"] for s in steps])
        ci = np.array([s[key]["ci"] for s in steps])
        wide = {"lw": 4, "alpha": 0.6} if ls == "-" else {"lw": 1.5}  # both show if equal
        ax.plot(x, apgrs, marker="o", color=colour, ls=ls, label=key, **wide)
        if "update" in key:
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=colour, alpha=0.12)
        bx.plot(x, [s[key]["seconds"] for s in steps], marker="o", color=colour, ls=ls,
                label=key)
    ax.axhline(0.5, color="grey", ls=":", label="random")
    ax.set_xlabel("chunk of MMLU golden battles (file order)")
    ax.set_ylabel(f"APGR on {study['n_eval']:,} held-out MMLU prompts")
    ax.set_title("Quality after each step (band: 95% CI of the update)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    bx.set_xlabel("chunk")
    bx.set_ylabel("seconds for this step")
    bx.set_yscale("log")
    bx.set_title("Time per step: update vs retrain on all chunks so far")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    for a in (ax, bx):
        a.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def swap_markdown(result: dict) -> str:
    """APGR mean ± std [min, max] over held-out models per k, and update vs retrain time."""
    summary, study = result["summary"], result["study"]
    methods = list(summary[str(study["ks"][0])])
    lines = ["| k | " + " | ".join(methods) + " |", "|---:|" + "---|" * len(methods)]
    for k in study["ks"]:
        row = summary[str(k)]
        lines.append(f"| {k} | " + " | ".join(
            f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f} [{row[m]['min']:.2f}, {row[m]['max']:.2f}]"
            for m in methods) + " |")
    refs = ", ".join(f"{r} {summary[r]['mean']:.3f} ± {summary[r]['std']:.3f}"
                     for r in ("random", "length", "oracle"))
    lines += ["", f"References on the same prompts (mean ± std over models): {refs}.", "",
              "| k | sw_bt swap s | sw_bt retrain s | ratio | mf swap s | mf retrain s | ratio |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in study["ks"]:
        row = summary[str(k)]
        cells = []
        for router in ("sw_bt", "mf"):
            swap, full = row[f"{router} swap"]["seconds"], row[f"{router} retrain"]["seconds"]
            cells += [f"{swap:.3f}", f"{full:.2f}", f"{100 * swap / full:.1f}%"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def incremental_markdown(result: dict) -> str:
    keys = ("sw_bt update", "sw_bt retrain", "mf update", "mf retrain")
    lines = ["| step | battles | " + " | ".join(f"{k} APGR [95% CI] (s)" for k in keys) + " |",
             "|---:|---:|" + "---|" * len(keys)]
    for step in result["steps"]:
        lines.append(f"| {step['step']} | {step['n_battles']:,} | " + " | ".join(
            f"{step[k]['apgr']:.3f} [{step[k]['ci'][0]:.3f}, {step[k]['ci'][1]:.3f}] "
            f"({step[k]['seconds']:.2f})" for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", type=int, default=8, help="held-out AlpacaEval models")
    parser.add_argument("--pro-models", type=int, default=8, help="held-out MMLU-Pro models")
    parser.add_argument("--pro-questions", type=int, default=1000,
                        help="MMLU-Pro question pool (seeded sample)")
    parser.add_argument("--parts", default="alpaca,pro,incremental,timing",
                        help="what to run (alpaca, pro, incremental, timing: sw_bt swap vs retrain "
                        "timed side by side); 'report' prints the tables of the saved JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "loop")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="results.json files of other runs to merge into --out")
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.data.battles import Battles
    from prefroute.data.loaders import golden_battles
    from prefroute.data.outcomes import load_outcomes

    parts = set(args.parts.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for other in args.merge:  # parts run in separate processes, one results.json each
        merged = json.loads(Path(other).read_text())
        merged[f"load ({Path(other).parent.name})"] = merged.pop("load", None)
        results.update(merged)
    if args.merge:
        path.write_text(json.dumps(results, indent=1))
    import os

    if parts - {"report"}:
        results["load"] = os.getloadavg()  # 1, 5, 15-minute load averages at the start

    if parts & {"alpaca", "timing"}:
        battles = apply_aliases(load_source("alpaca_eval", args.data_dir), ModelAliases())
        # held-out models must be weaker than the strong model (mean judge preference < 0.5);
        # for a model that beats it, "strong" and "weak" swap and APGR is not defined
        p_b = battles.numeric("p_b_wins")
        model_b = np.array(battles.column("model_b"), dtype=object)
        preference = {m: float(p_b[model_b == m].mean()) for m in set(model_b)}
        stronger = {m for m, p in preference.items() if p > 0.5 - MIN_GAP}
        print(f"[alpaca] not held out (within MIN_GAP of the strong model or better): "
              f"{sorted(stronger)}")
        held = pick_models(preference, {ALPACA_STRONG, ALPACA_BASE_WEAK} | stronger,
                           args.models)
        print(f"[alpaca] held out: {[(m, round(preference[m], 3)) for m in held]}")

        def alpaca_scores(_m, part):
            p_b = part.numeric("p_b_wins")
            a_is_strong = np.array(part.column("model_a"), dtype=object) == ALPACA_STRONG
            weak_pref = np.where(a_is_strong, p_b, 1.0 - p_b)
            return 1.0 - weak_pref, weak_pref

        if "timing" in parts:
            results["alpaca_sw_bt_timing"] = swap_timing(battles, ALPACA_STRONG,
                                                         ALPACA_BASE_WEAK, held)
            path.write_text(json.dumps(results, indent=1))
    if "alpaca" in parts:
        study = swap_study("alpaca", battles, ALPACA_STRONG, ALPACA_BASE_WEAK, held,
                           alpaca_scores)
        results["alpaca_swap"] = {"study": study, "summary": summarise(study)}
        plot_swap(study, results["alpaca_swap"]["summary"], ALPACA_TITLE,
                  args.figures / "loop_swap_alpaca.png")
        path.write_text(json.dumps(results, indent=1))

    if "pro" in parts:
        table = load_outcomes("mmlu_pro", args.data_dir)
        rng = np.random.default_rng(0)
        pool = table.subset(np.sort(rng.permutation(len(table))[: args.pro_questions]))
        others = [m for m in pool.models if m != PRO_STRONG]
        battles = Battles.concat([golden_battles(pool, PRO_STRONG, m) for m in others])
        accuracy = {m: np.nanmean(pool.column(m)) for m in pool.models}
        stronger = {m for m in others if accuracy[m] > accuracy[PRO_STRONG] - MIN_GAP}
        held = pick_models({m: accuracy[m] for m in others}, {PRO_BASE_WEAK} | stronger,
                           args.pro_models)
        index = {p: i for i, p in enumerate(pool.prompts)}

        def pro_scores(m, part):
            rows = np.array([index[p] for p in part.prompts])
            return pool.column(PRO_STRONG)[rows], pool.column(m)[rows]

        study = swap_study("mmlu_pro", battles, PRO_STRONG, PRO_BASE_WEAK, held, pro_scores)
        results["mmlu_pro_swap"] = {"study": study, "summary": summarise(study),
                                    "n_questions": args.pro_questions}
        plot_swap(study, results["mmlu_pro_swap"]["summary"],
                  PRO_TITLE.format(args.pro_questions), args.figures / "loop_swap_mmlu_pro.png")
        path.write_text(json.dumps(results, indent=1))

    if "incremental" in parts:
        results["incremental"] = incremental_study(args.data_dir)
        plot_incremental(results["incremental"], args.figures / "loop_incremental_mmlu.png")
        path.write_text(json.dumps(results, indent=1))
    if "report" in parts:  # redraw every figure from the saved results
        if "alpaca_swap" in results:
            plot_swap(results["alpaca_swap"]["study"], results["alpaca_swap"]["summary"],
                      ALPACA_TITLE, args.figures / "loop_swap_alpaca.png")
        if "mmlu_pro_swap" in results:
            plot_swap(results["mmlu_pro_swap"]["study"], results["mmlu_pro_swap"]["summary"],
                      PRO_TITLE.format(results["mmlu_pro_swap"]["n_questions"]),
                      args.figures / "loop_swap_mmlu_pro.png")
        if "incremental" in results:
            plot_incremental(results["incremental"], args.figures / "loop_incremental_mmlu.png")
    for key, title in (("alpaca_swap", "AlpacaEval swap"), ("mmlu_pro_swap", "MMLU-Pro swap")):
        if key in results:
            print(f"\n### {title}\n\n{swap_markdown(results[key])}")
    if "alpaca_sw_bt_timing" in results:
        timing = results["alpaca_sw_bt_timing"]
        swap = np.array([r["swap_s"] for r in timing["rows"]])
        full = np.array([r["retrain_s"] for r in timing["rows"]])
        print(f"\n### sw_bt swap vs retrain, AlpacaEval, k = {timing['k']} (least of "
              f"{timing['repeats']} interleaved runs)\n\nswap {1e3 * swap.mean():.1f} ms "
              f"(range {1e3 * swap.min():.1f}-{1e3 * swap.max():.1f}), retrain "
              f"{1e3 * full.mean():.1f} ms ({1e3 * full.min():.1f}-{1e3 * full.max():.1f}); "
              f"swap / retrain {100 * (swap / full).mean():.1f}% "
              f"({100 * (swap / full).min():.1f}-{100 * (swap / full).max():.1f}%)")
    if "incremental" in results:
        print(f"\n### Incremental update\n\n{incremental_markdown(results['incremental'])}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
