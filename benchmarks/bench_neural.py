"""Neural routers (bert, causal_llm) beside sw_bt, mf and random: quality and CPU throughput.

Protocol: the transfer protocol of ``prefroute.evaluate.protocols`` (train once on AlpacaEval
judge battles + MMLU-Pro golden battles, decontaminated against the eval prompts; evaluate
APGR and CPT(50%) on MT-Bench, MMLU and GSM8K). The neural routers train on a seeded
subsample of that mix (``max_train_battles`` in their params) with small step budgets
because a CPU trains them slowly (see DEFAULT_PARAMS). sw_bt, mf and random score every
kept prompt; the neural routers, too slow on a CPU for 14k MMLU prompts, score a seeded
subsample of each benchmark (``--eval-prompts``), and the first table compares all routers
on exactly those rows.

Work is cached under ``--out-dir`` (checkpoints, probabilities, throughput) and scoring
resumes where it stopped (``--time-budget-s``), so the long parts run as separate bounded
invocations, e.g.::

    nice -n 10 python benchmarks/bench_neural.py --routers random,sw_bt,mf
    nice -n 10 python benchmarks/bench_neural.py --routers bert        # repeat until done
    nice -n 10 python benchmarks/bench_neural.py --routers causal_llm  # repeat until done
    nice -n 10 python benchmarks/bench_neural.py --report

The report (also printed after every run) evaluates whatever is cached: markdown tables,
``<out-dir>/neural.json``, routing-curve PNGs and a training-curve PNG under
``benchmarks/figures/``. Delete a router's folder (or use another ``--out-dir``) after
changing its parameters.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
BENCHMARKS = ("mt-bench", "mmlu", "gsm8k")
NEURAL = ("bert", "causal_llm")
SAMPLE_ONLY = NEURAL  # too slow on a CPU for all 14k MMLU prompts
START = time.time()
# CPU budgets: each router trains in well under 15 minutes on a shared 2-core machine
DEFAULT_PARAMS = {
    "bert": {"max_length": 128, "batch_size": 16, "max_steps": 100, "lr": 1e-4,
             "train_last_layers": 3, "max_train_battles": 4000, "eval_every": 25,
             "val_fraction": 0.05, "torch_threads": 1},
    "causal_llm": {"max_length": 128, "batch_size": 8, "max_steps": 20, "lr": 1e-3,
                   "lora_r": 8, "train_last_layers": 4, "max_train_battles": 2000,
                   "eval_every": 10, "val_fraction": 0.01, "torch_threads": 1},
    "sw_bt": {},
    "mf": {"progress": False},
    "random": {"seed": 0},
}


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def load_eval_data(data_dir: str, embedder, n_eval: int, seed: int):
    """Training battles, full eval sets and their seeded subsamples (same for every router)."""
    from prefroute.data.outcomes import load_outcomes
    from prefroute.evaluate.benchmarks import prepare_eval_set
    from prefroute.evaluate.protocols import transfer_training_battles

    tables = {b: load_outcomes(b, data_dir) for b in BENCHMARKS}
    eval_prompts: list[str] = []
    for table in tables.values():
        eval_prompts += table.prompts
        for turns in table.meta.get("turns") or []:
            eval_prompts += [t for t in turns[1:] if isinstance(t, str)]
    train, info = transfer_training_battles(data_dir, sorted(set(eval_prompts)),
                                            embedder=embedder)
    train_prompts = sorted(set(train.prompts))
    full = {b: prepare_eval_set(t, data_dir, train_prompts=train_prompts, embedder=embedder)
            for b, t in tables.items()}
    rng = np.random.default_rng(seed)
    subsets = {}
    for b, s in full.items():
        if len(s.prompts) <= n_eval:
            subsets[b] = s
            continue
        pick = np.sort(rng.choice(len(s.prompts), size=n_eval, replace=False))
        subsets[b] = replace(
            s, rows=s.rows[pick], prompts=[s.prompts[i] for i in pick],
            strong_scores=s.strong_scores[pick], weak_scores=s.weak_scores[pick],
            dropped={**s.dropped, "not_sampled": len(s.prompts) - n_eval},
        )
    return tables, train, info, full, subsets


def make_predictor(name: str, params: dict, embedder):
    from prefroute.evaluate.protocols import PAIR_STRONG, PAIR_WEAK
    from prefroute.router import make_router

    params = dict(params)
    if name in ("sw_bt", "mf"):
        params["embedder"] = embedder
    return make_router(name, strong_model=PAIR_STRONG, weak_model=PAIR_WEAK, **params)


def fitted(name: str, params: dict, train, embedder, folder: Path):
    """Load the router's checkpoint from ``folder`` or train and save it."""
    from prefroute.routers.base import WinPredictor

    ckpt = folder / "checkpoint"
    if (ckpt / "config.json").is_file():
        return WinPredictor.from_pretrained(ckpt), json.loads((folder / "train.json").read_text())
    predictor = make_predictor(name, params, embedder)
    start = time.time()
    predictor.fit(train)
    seconds = time.time() - start
    predictor.save_pretrained(ckpt)
    info = {"router": name, "params": params, "fit_seconds": round(seconds, 1),
            "n_train_battles": len(train)}
    if name in NEURAL:
        info["training"] = predictor.training_
    _json(folder / "train.json", info)
    return predictor, info


def throughput(predictor, prompts: list[str]) -> dict:
    """Prompts per second over the same prompts, one call per prompt and one call of 64.

    For the neural routers the call of 64 runs as forward passes of ``predict_batch_size``
    prompts sorted by length (64 = one padded pass; smaller passes pad less on a CPU).
    """
    predictor.predict_proba(prompts[:2])  # warm-up: lazy loads, allocator
    start = time.perf_counter()
    for p in prompts:
        predictor.predict_proba([p], batch_size=1)
    out = {"n_prompts": len(prompts),
           "batch_1_prompts_per_s": len(prompts) / (time.perf_counter() - start)}
    sizes = (64, 8) if hasattr(predictor, "predict_batch_size") else (64,)
    default = getattr(predictor, "predict_batch_size", None)
    for size in sizes:
        if hasattr(predictor, "predict_batch_size"):
            predictor.predict_batch_size = size
        start = time.perf_counter()
        predictor.predict_proba(prompts, batch_size=64)
        key = "batch_64_prompts_per_s" + ("" if size == 64 else f"_passes_of_{size}")
        out[key] = len(prompts) / (time.perf_counter() - start)
    if hasattr(predictor, "predict_batch_size"):
        predictor.predict_batch_size = default
    return out


def throughput_prompts(tables, seed: int) -> list[str]:
    """64 real prompts: a seeded mix of MT-Bench, MMLU and GSM8K."""
    rng = np.random.default_rng(seed)
    out = []
    for b, n in (("mt-bench", 16), ("mmlu", 24), ("gsm8k", 24)):
        prompts = tables[b].prompts
        out += [prompts[i] for i in rng.choice(len(prompts), size=n, replace=False)]
    return out


def score_resumable(predictor, prompts: list[str], path: Path, rows: list[int],
                    deadline: float, chunk: int = 64) -> bool:
    """Score ``prompts`` in chunks, appending to ``path``; stop at ``deadline``. True if done."""
    stored = json.loads(path.read_text()) if path.is_file() else None
    if stored is None or stored["rows"] != rows:
        stored = {"rows": rows, "probs": [], "seconds": 0.0}
        _json(path, stored)
    while len(stored["probs"]) < len(prompts):
        if time.time() > deadline:
            return False
        start = time.time()
        done = len(stored["probs"])
        stored["probs"] += predictor.predict_proba(prompts[done : done + chunk]).tolist()
        stored["seconds"] = round(stored["seconds"] + time.time() - start, 2)
        stored["complete"] = len(stored["probs"]) == len(prompts)
        _json(path, stored)
    return True


def run_router(name, args, train, tables, subsets, full, embedder, out_dir: Path) -> None:
    folder = out_dir / name
    params = {**DEFAULT_PARAMS[name], **json.loads(getattr(args, f"{name}_params") or "{}")}
    if name in NEURAL:
        params.setdefault("seed", args.seed)
    predictor, info = fitted(name, params, train, embedder, folder)
    print(f"[{name}] fitted ({info['fit_seconds']} s)")
    deadline = START + args.time_budget_s
    scope = "sample" if name in SAMPLE_ONLY else "all"
    sets = subsets if scope == "sample" else full
    for bench in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
        eval_set = sets[bench]
        path = folder / f"probs_{bench}_{scope}.json"
        done = score_resumable(predictor, eval_set.prompts, path, eval_set.rows.tolist(),
                               deadline)
        stored = json.loads(path.read_text())
        print(f"[{name}] {bench} ({scope}): {len(stored['probs'])} of {len(eval_set.prompts)} "
              f"prompts scored in {stored['seconds']:.0f} s" + ("" if done else "; time is up, "
              "run again to continue"))
        if not done:
            return
    if args.throughput and not (folder / "throughput.json").is_file():
        result = throughput(predictor, throughput_prompts(tables, args.seed))
        _json(folder / "throughput.json", result)
        print(f"[{name}] throughput {result}")


def stored_probs(folder: Path, bench: str, eval_set, scope: str) -> np.ndarray | None:
    """This router's probabilities for ``eval_set`` (sample rows can come from the full run)."""
    for source in (scope, "all"):
        path = folder / f"probs_{bench}_{source}.json"
        if not path.is_file():
            continue
        stored = json.loads(path.read_text())
        if len(stored["probs"]) != len(stored["rows"]):
            continue  # incomplete
        by_row = dict(zip(stored["rows"], stored["probs"], strict=True))
        if all(int(r) in by_row for r in eval_set.rows):
            return np.array([by_row[int(r)] for r in eval_set.rows])
    return None


def report(args, tables, subsets, full, out_dir: Path, n_bootstrap: int) -> None:
    from prefroute.evaluate.benchmarks import evaluate_router, format_apgr, format_cpt
    from prefroute.evaluate.plots import plot_routing_curves

    names = [n for n in ("bert", "causal_llm", "sw_bt", "mf", "random")
             if (out_dir / n / "train.json").is_file()]
    results: dict = {"sample": {}, "all": {}}
    for scope, sets in (("sample", subsets), ("all", full)):
        for bench in BENCHMARKS:
            for name in names:
                eval_set = sets[bench]
                probs = stored_probs(out_dir / name, bench, eval_set, scope)
                if probs is None:
                    continue
                full_probs = np.full(eval_set.n_total, np.nan)
                full_probs[eval_set.rows] = probs
                r = evaluate_router(full_probs, tables[bench], eval_set=eval_set, name=name,
                                    n_bootstrap=n_bootstrap, seed=args.seed)
                results[scope].setdefault(bench, []).append(r)

    def table(scope: str) -> str:
        rows = results[scope]
        benches = [b for b in BENCHMARKS if b in rows]
        if not benches:
            return "(nothing scored yet)"
        head = "| router | " + " | ".join(
            f"{b} (n={rows[b][0].n_prompts}) APGR [95% CI] | {b} CPT(50%)" for b in benches)
        lines = [head + " |", "|---|" + "---|---:|" * len(benches)]
        scored = [n for n in names if any(x.name == n for b in benches for x in rows[b])]
        for name in scored + ["random (expected)"]:
            cells = [name]
            for b in benches:
                r = next((x for x in rows[b] if x.name == name), None)
                if name == "random (expected)":
                    r_ref = rows[b][0].random
                    cells += [format_apgr(r_ref), format_cpt(r_ref.cpt["50"])]
                elif r is None:
                    cells += ["", ""]
                else:
                    cells += [format_apgr(r.router), format_cpt(r.cpt["50"])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    print("\n## Transfer protocol, same seeded subsample of each benchmark\n")
    print(table("sample"))
    print("\n## Transfer protocol, all kept prompts (routers fast enough on a CPU)\n")
    print(table("all"))

    print("\n## Training\n")
    print("| router | train battles used | steps | fit s | first-3 loss | last-3 loss "
          "| best val loss | val acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    curves = {}
    for name in names:
        info = json.loads((out_dir / name / "train.json").read_text())
        tr = info.get("training")
        if not tr:
            print(f"| {name} | {info['n_train_battles']} | | {info['fit_seconds']} | | | | |")
            continue
        curves[name] = tr
        loss = tr["train_loss"]
        best = min(tr["evals"], key=lambda e: e["val_loss"]) if tr["evals"] else {}
        print(f"| {name} | {tr['counts']['train']} | {len(loss)} | {info['fit_seconds']} | "
              f"{np.mean(loss[:3]):.4f} | {np.mean(loss[-3:]):.4f} | "
              f"{best.get('val_loss', math.nan):.4f} | {best.get('val_accuracy', math.nan):.3f} |")

    print("\n## CPU routing throughput (prompts/s; real MT-Bench/MMLU/GSM8K prompts)\n")
    print("| router | batch 1 | batch 64 (one pass) | batch 64 (passes of 8) |")
    print("|---|---:|---:|---:|")
    for name in names:
        path = out_dir / name / "throughput.json"
        if path.is_file():
            t = json.loads(path.read_text())
            eight = t.get("batch_64_prompts_per_s_passes_of_8")
            print(f"| {name} | {t['batch_1_prompts_per_s']:.2f} | "
                  f"{t['batch_64_prompts_per_s']:.2f} | "
                  + ("" if eight is None else f"{eight:.2f}") + " |")

    figures = ROOT / "benchmarks" / "figures"
    for bench, rs in results["sample"].items():
        path = plot_routing_curves(rs, figures / f"neural_{bench}.png",
                                   title=f"{bench}: transfer protocol, {rs[0].n_prompts} "
                                         "sampled prompts")
        print("figure:", path)
    if curves:
        print("figure:", plot_training_curves(curves, figures / "neural_training_curves.png"))
    _json(out_dir / "neural.json", {
        scope: {b: [r.to_dict() for r in rs] for b, rs in res.items()}
        for scope, res in results.items()
    })


def plot_training_curves(curves: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, tr) in zip(axes[0], curves.items(), strict=True):
        ax.plot(tr["step"], tr["train_loss"], label="train loss (per step)", alpha=0.7)
        if tr["evals"]:
            ax.plot([e["step"] for e in tr["evals"]], [e["val_loss"] for e in tr["evals"]],
                    "o-", label="validation loss")
        ax.set_title(f"{name}: {tr['counts']['train']} training battles")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--routers", default="", help="comma list: bert,causal_llm,sw_bt,mf,random")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--eval-prompts", type=int, default=300,
                        help="seeded subsample size per benchmark for the neural routers (the "
                             "others score every prompt; the sample table uses the same rows)")
    parser.add_argument("--time-budget-s", type=float, default=780,
                        help="stop scoring after this long (cached; run again to continue)")
    parser.add_argument("--bert-params", default="", help="JSON overriding the bert budget")
    parser.add_argument("--causal_llm-params", dest="causal_llm_params", default="")
    parser.add_argument("--sw_bt-params", dest="sw_bt_params", default="")
    parser.add_argument("--mf-params", dest="mf_params", default="")
    parser.add_argument("--random-params", dest="random_params", default="")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "out" / "neural"))
    parser.add_argument("--report", action="store_true", help="only print the cached results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from prefroute.embed import CachedEmbedder, build_embedder

    out_dir = Path(args.out_dir)
    embedder = CachedEmbedder(build_embedder("wordllama"),
                              ROOT / "benchmarks" / "out" / "embed_cache")
    start = time.time()
    tables, train, info, full, subsets = load_eval_data(args.data_dir, embedder,
                                                        args.eval_prompts, args.seed)
    print(f"transfer training battles: {len(train)}; data prepared in {time.time() - start:.0f} s")
    _json(out_dir / "protocol.json", {"transfer": info, "eval_prompts": args.eval_prompts,
                                      "seed": args.seed})
    if not args.report:
        for name in [n.strip() for n in args.routers.split(",") if n.strip()]:
            if name not in DEFAULT_PARAMS:
                raise SystemExit(f"unknown router {name!r}")
            t0 = time.time()
            run_router(name, args, train, tables, subsets, full, embedder, out_dir)
            print(f"[{name}] done in {time.time() - t0:.0f} s")
    report(args, tables, subsets, full, out_dir, args.n_bootstrap)


if __name__ == "__main__":
    main()
