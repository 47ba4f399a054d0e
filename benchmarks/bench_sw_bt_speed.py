"""Speed of the similarity-weighted Bradley-Terry router (sw_bt), and how it scales.

Part 1 (AlpacaEval, all 36,700 battles over 644 distinct prompts): prompts/s including the
wordllama embedding, one prompt at a time and in batches of 1,000, side by side with the
straightforward per-query method (a scikit-learn LogisticRegression with sample weights on
the expanded battle rows, RouteLLM's way; RouteLLM reports 2.9 requests/s for its SW router
on CPU), and the ratio.

Part 2 (scale): every prompt in the shared data with its labels (AlpacaEval battles, golden
battles from MMLU / GSM8K / MMLU-Pro / RouterBench renamed to the router's pair, MT-Bench
votes) plus relabelled copies (the prompt with " (variant k)" appended, winners redrawn from
the original outcome) until there are enough distinct prompts; then, for growing numbers n
of distinct training prompts, fit time, state size and prompts/s for the exact path
(top_k=None: every prompt weighs in, as in the paper) and for top_k with a flat, IVF and
HNSW FAISS index, with the mean |dP| of the approximate indexes against exact top_k.

The training prompts are embedded once up front (their rate is reported) and looked up by
the fits, so fit times exclude embedding; each size is fitted once and the top_k variants
are derived with ``SWBTRouter.with_search`` (only their index is built). Queries are always
embedded afresh: held-out prompts, timed with the tokenizer cache reset to a fixed warm-up
state before each run (see held_out_queries.py). Prints markdown tables.

Usage: ``nice -n 10 python benchmarks/bench_sw_bt_speed.py [--sizes 10000,30000,100000]``
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import expit
from tqdm.auto import tqdm

from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.loaders import apply_aliases, load_source
from prefroute.data.ratings import fit_bt_batched
from prefroute.embed import build_embedder
from prefroute.embed.base import Embedder
from prefroute.routers.sw_bt import SWBTReference, SWBTRouter, battle_outcomes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_out_queries import QUERY_TABLES, query_pool, reset_token_cache, split_pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(x: object) -> str:
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


class Rate:
    """Items per second of wall time, and per second of this process's CPU time (all its
    threads): the second is less distorted by other jobs on a shared machine."""

    def __init__(self, n: int, wall: float, cpu: float) -> None:
        self.wall, self.cpu = n / wall, n / max(cpu, 1e-9)

    def __str__(self) -> str:
        return f"{self.wall:,.0f} ({self.cpu:,.0f})" if self.wall >= 10 else (
            f"{self.wall:.3g} ({self.cpu:.3g})")


def rate_single(predict, prompts: list, desc: str) -> Rate:
    start, start_cpu = time.perf_counter(), time.process_time()
    for p in tqdm(prompts, desc=desc, leave=False, file=sys.stderr):
        predict(p)
    return Rate(len(prompts), time.perf_counter() - start, time.process_time() - start_cpu)


def rate_batched(predict, prompts, batch: int, desc: str) -> Rate:
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in tqdm(range(0, len(prompts), batch), desc=desc, leave=False, file=sys.stderr):
        predict(prompts[i : i + batch])
    return Rate(len(prompts), time.perf_counter() - start, time.process_time() - start_cpu)


def wordllama_own(embedder: Embedder):
    """``WordLlama.embed`` itself (padded batches, the plain tokenizer): the straightforward
    way to embed, for the ratio."""
    from prefroute.embed.wordllama_embedder import _load_model

    model = _load_model(embedder.config, embedder.dim, embedder.max_tokens)
    return lambda texts: model.embed(texts if isinstance(texts, list) else [texts], norm=True)


# part 1 ---------------------------------------------------------------------------------
def bench_alpaca(args: argparse.Namespace, data_dir: Path) -> None:
    alpaca = apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())
    start = time.perf_counter()
    router = SWBTRouter(strong_model=STRONG, weak_model=WEAK).fit(alpaca)
    fit_s = time.perf_counter() - start
    sets = split_pool(query_pool(data_dir, args.seed), warm=args.warm_up, single=args.single,
                      batched=args.batched)
    warm, single_q, batched_q = sets["warm"], sets["single"], sets["batched"]
    embedder = router.embedder_
    router.predict_proba(warm[:32])  # loads the embedder, touches the arrays

    def timed(fn, prompts: list, batch: int | None, desc: str, warm_up: list = warm) -> Rate:
        reset_token_cache(embedder, warm_up)
        if batch is None:
            return rate_single(fn, prompts, desc)
        return rate_batched(fn, prompts, batch, desc)

    bs = args.batch_size
    single = timed(router.predict_proba, single_q, None, "sw_bt single")
    batched = timed(router.predict_proba, batched_q, bs, "sw_bt batched")
    cold_single = timed(router.predict_proba, single_q, None, "sw_bt single, cold", [])
    cold_batched = timed(router.predict_proba, batched_q, bs, "sw_bt batched, cold", [])
    seen_batched = rate_batched(router.predict_proba, batched_q, bs, "sw_bt batched, seen")
    embed_single = timed(embedder.encode, single_q, None, "embed single")
    embed_batched = timed(embedder.encode, batched_q, bs, "embed batched")
    own = wordllama_own(embedder)
    own_single = rate_single(own, single_q, "WordLlama.embed single")
    own_batched = rate_batched(own, batched_q, bs, "WordLlama.embed batched")
    vectors = embedder.encode(batched_q)
    score_single = rate_single(
        lambda v: router.strong_win_prob_from_embeddings(v[None]), list(vectors[: args.single]),
        "score single")
    score_batched = rate_batched(router.strong_win_prob_from_embeddings, vectors, bs,
                                 "score batched")

    # the same scoring with the batched Newton solver in place of the closed form
    def newton(v: np.ndarray) -> np.ndarray:
        pair_wins = router.weighted_pair_wins(v)
        t = router.n_groups_
        wins = np.zeros((len(v), t, t))
        wins[:, router.pair_groups_[:, 0], router.pair_groups_[:, 1]] = pair_wins
        theta = fit_bt_batched(wins, reg=router.reg)
        return expit(theta[:, router.strong_group_] - theta[:, router.weak_group_])

    newton_single = rate_single(lambda v: newton(v[None]), list(vectors[: args.single]),
                                "newton single")
    newton_batched = rate_batched(newton, vectors, bs, "newton batched")
    newton_gap = float(np.abs(newton(vectors) - router.strong_win_prob_from_embeddings(vectors))
                       .max())

    start = time.perf_counter()
    reference = SWBTReference(router, alpaca)
    ref_setup_s = time.perf_counter() - start
    ref_queries = single_q[: args.reference]
    ref_probs = []
    ref_rate = rate_single(lambda q: ref_probs.append(reference.predict_proba([q])[0]),
                           ref_queries, "reference")
    gap = float(np.abs(router.predict_proba(ref_queries) - np.array(ref_probs)).max())

    groups = f"{router.num_tiers} tiers" if router.num_tiers else "models as groups"
    print(f"\n### sw_bt on AlpacaEval (36,700 battles, 644 distinct prompts, {groups})\n")
    print(f"fit: {fit_s:.2f} s (embedding 644 prompts, global BT, pair counts); reference setup "
          f"(embedding the battle prompts): {ref_setup_s:.2f} s\n")
    print(f"Queries: held-out prompts from {', '.join(QUERY_TABLES)} (mean "
          f"{np.mean([len(q) for q in batched_q]):.0f} characters), never embedded before their "
          f"timed run. 'warm' = the tokenizer's segment cache holds what {len(warm):,} other "
          "such prompts brought (a router that has been serving a while), reset before each "
          "run; 'cold' = empty cache (a fresh process); 'seen' = the same prompts again.\n")
    print(f"prompts/s as wall time (CPU time of this process in brackets); machine load "
          f"average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(table(
        ["method", "one prompt at a time", f"batches of {bs:,}"],
        [
            ["**sw_bt: embedding + scoring (predict_proba), warm**", single, batched],
            ["  the same, cold", cold_single, cold_batched],
            ["  the same, seen", "", seen_batched],
            ["  embedding only (prefroute wordllama, warm)", embed_single, embed_batched],
            ["  embedding with WordLlama.embed itself", own_single, own_batched],
            ["  scoring only (weights + closed-form BT)", score_single, score_batched],
            ["  scoring with the batched Newton solver instead", newton_single, newton_batched],
            [f"per-query LogisticRegression (RouteLLM way, {len(ref_queries)} queries)",
             ref_rate, "(same: one fit per query)"],
            ["speed-up of sw_bt over it, wall (CPU)",
             f"{single.wall / ref_rate.wall:,.0f}x ({single.cpu / ref_rate.cpu:,.0f}x)",
             f"{batched.wall / ref_rate.wall:,.0f}x ({batched.cpu / ref_rate.cpu:,.0f}x)"],
        ],
    ))
    print(f"\nmax |P_sw_bt - P_reference| over the reference queries: {gap:.2e} "
          "(the reference uses scikit-learn's default tol=1e-4, as RouteLLM does); "
          f"closed form vs Newton solver: {newton_gap:.1e}")


# part 2 ---------------------------------------------------------------------------------
def base_pool(data_dir: Path) -> Battles:
    """Every prompt of the shared data with its labels, model names made consistent."""
    parts = [apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())]
    for name in ("golden:mmlu", "golden:gsm8k", "golden:mmlu_pro", "golden:routerbench"):
        parts.append(load_source(name, data_dir, golden_as=(STRONG, WEAK)))
    for name in ("mt_bench_human", "mt_bench_gpt4"):
        parts.append(load_source(name, data_dir))
    return Battles.concat(parts)


def relabelled_copy(battles: Battles, k: int, rng: np.random.Generator) -> Battles:
    """The battles with " (variant k)" appended to each prompt and winners redrawn."""
    outcome, _, _ = battle_outcomes(battles, use_soft_labels=True, ties="half")
    winner = np.where(rng.random(len(battles)) < outcome, "model_a", "model_b")
    t = battles.table
    prompt = pc.binary_join_element_wise(t["prompt"], f" (variant {k})", "")
    t = t.set_column(t.column_names.index("prompt"), "prompt", prompt)
    t = t.set_column(t.column_names.index("winner"), "winner", pa.array(winner, pa.string()))
    t = t.set_column(t.column_names.index("p_b_wins"), "p_b_wins",
                     pa.nulls(len(battles), pa.float64()))
    return Battles(t)


def scale_pool(data_dir: Path, target: int, seed: int) -> tuple[Battles, list[str]]:
    """Battles over at least ``target`` distinct prompts, and those prompts shuffled."""
    base = base_pool(data_dir)
    n_base = len(set(base.prompts))
    parts, rng, k = [base], np.random.default_rng(seed), 0
    while n_base * (len(parts)) < target:
        k += 1
        parts.append(relabelled_copy(base, k, rng))
    pool = Battles.concat(parts)
    distinct = pc.unique(pool.table["prompt"]).to_pylist()
    order = rng.permutation(len(distinct))
    print(f"\nscale pool: {len(base):,} battles over {n_base:,} distinct prompts in the shared "
          f"data, plus {k} relabelled copies: {len(pool):,} battles, {len(distinct):,} "
          "distinct prompts", flush=True)
    return pool, [distinct[i] for i in order]


def subset(pool: Battles, prompts: list[str]) -> Battles:
    mask = pc.is_in(pool.table["prompt"], value_set=pa.array(prompts, pa.string()))
    return Battles(pool.table.filter(mask))


def state_mb(router: SWBTRouter) -> float:
    counts = router.pair_counts_
    size = router.prompt_embeddings_.nbytes + counts.data.nbytes + counts.indices.nbytes
    size += counts.indptr.nbytes
    if router.index_ is not None:
        import faiss

        size += faiss.serialize_index(router.index_).nbytes
    return size / 2**20


class PrecomputedEmbedder(Embedder):
    """Wordllama vectors computed once for the whole pool and looked up by text, so that
    fits at every size share them; texts not in the table are embedded by ``inner``."""

    name = "precomputed"  # not registered; its spec is the inner embedder's

    def __init__(self, inner: Embedder, texts: list[str], vectors: np.ndarray) -> None:
        self.inner = inner
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors

    @property
    def dim(self) -> int:
        return self.inner.dim

    def params(self) -> dict:
        return self.inner.params()

    def spec(self) -> dict:
        return self.inner.spec()

    def _encode(self, texts: list[str]) -> np.ndarray:
        rows = [self.row.get(t, -1) for t in texts]
        if min(rows, default=0) < 0:
            return self.inner.encode(texts)
        return self.vectors[rows]


def bench_scale(args: argparse.Namespace, data_dir: Path) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    pool, order = scale_pool(data_dir, max(sizes), args.seed)
    sets = split_pool(query_pool(data_dir, seed=1), warm=args.warm_up,
                      queries=max(args.scale_batched, args.scale_single))
    warm, queries = sets["warm"], sets["queries"]
    plain = build_embedder("wordllama")
    needed = order[: max(sizes)]
    start, start_cpu = time.perf_counter(), time.process_time()
    vectors = np.concatenate([
        plain.encode(needed[i : i + 4096])
        for i in tqdm(range(0, len(needed), 4096), desc="embedding the pool", file=sys.stderr)
    ])
    embed_rate = Rate(len(needed), time.perf_counter() - start, time.process_time() - start_cpu)
    print(f"embedding {len(needed):,} training prompts (wordllama, batches of 4,096): "
          f"{embed_rate} prompts/s; the fits below look them up", flush=True)
    precomputed = PrecomputedEmbedder(plain, needed, vectors)
    rows, curve = [], {}
    for n in sizes:
        battles = subset(pool, order[:n])
        gc.collect()
        router = SWBTRouter(strong_model=STRONG, weak_model=WEAK, embedder=precomputed,
                            num_tiers=args.scale_num_tiers)
        start = time.perf_counter()
        router.fit(battles)
        fit_s = time.perf_counter() - start
        router.embedder_ = plain  # queries are embedded afresh, as in serving
        exact_top_k = None
        configs = [("all (paper)", None, "flat")]
        configs += [(f"top_k={args.top_k}", args.top_k, kind) for kind in args.indexes]
        for label, top_k, kind in configs:
            start = time.perf_counter()
            variant = router if top_k is None else router.with_search(top_k=top_k, index=kind)
            build_s = time.perf_counter() - start
            variant.predict_proba(warm[:8])
            reset_token_cache(plain, warm)
            single = rate_single(variant.predict_proba, queries[: args.scale_single],
                                 f"n={n} {label} {kind} single")
            reset_token_cache(plain, warm)
            batched = rate_batched(variant.predict_proba, queries[: args.scale_batched],
                                   args.batch_size, f"n={n} {label} {kind} batched")
            probs = variant.predict_proba(queries[: args.scale_batched])
            if top_k is not None and kind == "flat":
                exact_top_k = probs
            dev = "" if top_k is None or exact_top_k is None or kind == "flat" else (
                f"{np.abs(probs - exact_top_k).mean():.1e}")
            rows.append([f"{n:,}", f"{len(battles):,}", label,
                         kind if top_k is not None else "- (all)", fit_s,
                         build_s if top_k is not None else "", state_mb(variant), single,
                         batched, dev, variant.solver_])
            curve.setdefault((label, kind), []).append((n, single.wall, batched.wall))
            print(table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
            del variant
        del router
    groups = f"{args.scale_num_tiers} tiers" if args.scale_num_tiers else "models as groups"
    print(f"\n### sw_bt at scale (strong {STRONG} vs weak {WEAK}, {groups})\n")
    print("prompts/s as wall time (CPU time of this process in brackets), query embedding "
          f"included; fit excludes embedding the training prompts ({embed_rate} prompts/s: "
          f"add n / rate); load average at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores\n")
    print(table(HEADER, rows))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\npeak resident memory of the whole run: {peak:,.0f} MiB")
    if args.plot:
        plot(curve, Path(args.plot))


HEADER = ["distinct prompts", "battles", "weighting", "search", "fit s", "index build s",
          "state MiB", "single prompts/s", "batched prompts/s", "mean |dP| vs exact top_k",
          "solver"]


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for (label, kind), points in curve.items():
        n, single, batched = zip(*points, strict=True)
        name = label if label.startswith("all") else f"{label}, {kind}"
        axes[0].plot(n, single, marker="o", label=name)
        axes[1].plot(n, batched, marker="o", label=name)
    for ax, title in zip(axes, ("one prompt at a time", "batches of 1,000"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="distinct training prompts", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("prompts/s (with embedding)")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--single", type=int, default=1000, help="prompts scored one at a time")
    parser.add_argument("--batched", type=int, default=5000, help="prompts scored in batches")
    parser.add_argument("--warm-up", type=int, default=5000,
                        help="other prompts whose segments fill the tokenizer cache first")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=5,
                        help="queries for the per-query LogisticRegression")
    parser.add_argument("--sizes", default="10000,100000",
                        help="distinct training prompts for the scale part (comma-separated)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--scale-num-tiers", type=int, default=0,
                        help="tiers for the scale part (0: models; with 10 tiers this pool puts "
                             "the strong and weak model in one tier at some sizes)")
    parser.add_argument("--indexes", default="flat,ivf,hnsw")
    parser.add_argument("--scale-single", type=int, default=100)
    parser.add_argument("--scale-batched", type=int, default=1000)
    parser.add_argument("--skip-alpaca", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "figures" / "sw_bt_scale.png"),
                        help="PNG of prompts/s against n ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.indexes = [k for k in args.indexes.split(",") if k]
    start = time.perf_counter()
    if not args.skip_alpaca:
        bench_alpaca(args, args.data_dir)
    if not args.skip_scale:
        bench_scale(args, args.data_dir)
    print(f"\ntotal run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
