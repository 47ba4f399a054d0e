"""Benchmark the ``mf`` win predictor: training time and routing throughput.

1. AlpacaEval (36,700 battles, 644 distinct prompts, 58 models): fit time with the default
   parameters (prompt embedding included), then P(strong wins) throughput including the
   wordllama embedding, one prompt per call and in batches of 1,000, side by side with the
   straightforward method RouteLLM serves: a torch forward pass through the full network
   per request (model ids -> normalised embeddings * projected prompt -> head -> sigmoid of
   the difference). Also the scoring step alone (embeddings given), where the methods
   differ.
2. Scale: every labelled prompt in the data folder (AlpacaEval battles; golden battles
   from MMLU, GSM8K, MMLU-Pro and RouterBench renamed to one strong/weak pair; MT-Bench
   human and GPT-4 votes), plus copies whose prompts carry an appended variant sentence,
   until at least the largest ``--scale-prompts`` distinct prompts; fit time and throughput
   against n. Each prompt is embedded once into an on-disk cache (timed as "embed"), which
   the nested scale fits then read, so the largest set is not embedded three times.

Prints markdown tables. Run ``nice -n 10 python benchmarks/bench_mf_speed.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from scipy.special import expit

from prefroute._torch_util import torch_threads
from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.loaders import apply_aliases, load_source
from prefroute.embed import CachedEmbedder, build_embedder
from prefroute.routers.mf import MFRouter
from prefroute.routers.mf_training import MFNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_out_queries import QUERY_TABLES, query_pool, reset_token_cache, split_pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
GOLDEN = ("golden:mmlu", "golden:gsm8k", "golden:mmlu_pro", "golden:routerbench")
VARIANTS = (
    "Please answer concisely.",
    "Explain your reasoning step by step.",
    "Answer as an expert would.",
    "Keep the answer short and precise.",
    "Give a detailed answer.",
    "Respond in plain language.",
)


# the straightforward method ------------------------------------------------------------
@torch.no_grad()
def routellm_win_rate(net: MFNet, pair: torch.Tensor, embedding: torch.Tensor) -> float:
    """RouteLLM's ``MFModel.pred_win_rate``: a forward pass over the two model ids."""
    logits = net.w(F.normalize(net.P(pair), p=2, dim=1) * net.W(embedding)).squeeze(-1)
    return torch.sigmoid(logits[0] - logits[1]).item()


@torch.no_grad()
def torch_batch(net: MFNet, strong: int, weak: int, embeddings: torch.Tensor) -> np.ndarray:
    return net.win_prob(strong, weak, embeddings).numpy()


def throughput(predictor: MFRouter, prompts: list[str], warm: list[str], n_single: int,
               n_batch: int, repeats: int) -> dict[str, float]:
    """Prompts/s of the numpy path and the torch forward, with and without embedding.

    ``prompts`` were never embedded; before each timed run the tokenizer cache is reset to
    what ``warm`` brings, so every method meets the same cache state.
    """
    net = predictor.to_torch()
    idx = predictor.model_index_
    s, w = idx[predictor.strong_model], idx[predictor.weak_model]
    pair = torch.tensor([s, w])
    embedder = predictor.embedder_
    single = prompts[:n_single]
    batches = [prompts[i : i + 1000] for i in range(0, n_batch, 1000)]
    n_batched = sum(map(len, batches))
    embedded = embedder.encode(single)
    embedded_t = torch.from_numpy(embedded)
    vector, offset = predictor.pair_vector(predictor.strong_model, predictor.weak_model)
    out: dict[str, float] = {}

    def fast_single() -> None:
        for p in single:
            predictor.predict_proba(p)

    def slow_single() -> None:
        for p in single:
            routellm_win_rate(net, pair, torch.from_numpy(embedder.encode([p])))

    def fast_batch() -> None:
        for batch in batches:
            predictor.predict_proba(batch)

    def slow_batch() -> None:
        for batch in batches:
            torch_batch(net, s, w, torch.from_numpy(embedder.encode(batch)))

    def fast_score_single() -> None:
        for row in embedded:
            expit(row.astype(np.float64) @ vector + offset)

    def slow_score_single() -> None:
        for i in range(len(single)):
            routellm_win_rate(net, pair, embedded_t[i : i + 1])

    def embed_single() -> None:
        for p in single:
            embedder.encode([p])

    def embed_batch() -> None:
        for batch in batches:
            embedder.encode(batch)

    methods = {  # name: (run, prompts, tokenizer-cache warm-up before it)
        "embed_single": (embed_single, len(single), warm),
        "single": (fast_single, len(single), warm),
        "single_torch": (slow_single, len(single), warm),
        "embed_batch": (embed_batch, n_batched, warm),
        "batch": (fast_batch, n_batched, warm),
        "batch_torch": (slow_batch, n_batched, warm),
        "batch_cold": (fast_batch, n_batched, []),
        "score_single": (fast_score_single, len(single), warm),
        "score_single_torch": (slow_score_single, len(single), warm),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    with torch_threads(1):
        # interleaved, so a change in the machine's load hits every method alike
        for _ in range(repeats):
            for name, (fn, _, warm_up) in methods.items():
                reset_token_cache(embedder, warm_up)
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    for name, (_, count, _) in methods.items():
        out[name] = count / statistics.median(times[name])
        out[f"{name}_cpu_us"] = 1e6 * statistics.median(cpu[name]) / count
    return out


# data -----------------------------------------------------------------------------------
def all_labelled_battles(data_dir: Path) -> Battles:
    aliases = ModelAliases()
    parts = [apply_aliases(load_source("alpaca_eval", data_dir), aliases)]
    for name in GOLDEN:
        parts.append(load_source(name, data_dir, golden_as=(STRONG, WEAK)))
    for name in ("mt_bench_human", "mt_bench_gpt4"):
        parts.append(apply_aliases(load_source(name, data_dir), aliases))
    return Battles.concat(parts)


def with_variants(base: Battles, min_prompts: int) -> Battles:
    """``base`` plus copies whose prompts end in a variant sentence, to >= min_prompts."""
    parts = [base]
    n_distinct = len(pc.unique(base.table["prompt"]))
    copy = 0
    while n_distinct * (copy + 1) < min_prompts:
        copy += 1
        suffix = f"\n\n{VARIANTS[copy % len(VARIANTS)]} (variant {copy})"
        prompts = pc.binary_join_element_wise(base.table["prompt"], pa.scalar(suffix), "")
        parts.append(base.with_column("prompt", prompts.to_pylist()))
    return Battles.concat(parts)


def first_prompts(battles: Battles, n_prompts: int) -> Battles:
    """The battles of the first ``n_prompts`` distinct prompts."""
    distinct = pc.unique(battles.table["prompt"])
    keep = pc.is_in(battles.table["prompt"], value_set=distinct[:n_prompts])
    return battles.filter(keep.to_numpy(zero_copy_only=False))


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n-single", type=int, default=1000,
                        help="requests scored one at a time (per method and repeat)")
    parser.add_argument("--n-batch", type=int, default=5000,
                        help="prompts scored in batches of 1,000 (per method and repeat)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-up", type=int, default=5000,
                        help="other prompts whose segments fill the tokenizer cache first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-prompts", type=str, default="10000,30000,100000",
                        help="distinct-prompt counts of the scale runs (comma-separated)")
    parser.add_argument("--scale-epochs", type=int, default=3,
                        help="epochs of each scale run (no early stop, so times compare)")
    args = parser.parse_args()

    # one-off costs of a fresh process (torch.optim imports torch._dynamo; wordllama loads)
    start = time.perf_counter()
    tiny = load_source("golden:gsm8k", args.data_dir, golden_as=(STRONG, WEAK)).take(range(200))
    MFRouter(strong_model=STRONG, weak_model=WEAK, epochs=1, progress=False).fit(tiny)
    warmup = time.perf_counter() - start

    alpaca = apply_aliases(load_source("alpaca_eval", args.data_dir), ModelAliases())
    distinct = list(dict.fromkeys(alpaca.prompts))
    sets = split_pool(query_pool(args.data_dir, args.seed), warm=args.warm_up,
                      queries=max(args.n_single, args.n_batch))
    warm, prompts = sets["warm"], sets["queries"]

    start = time.perf_counter()
    predictor = MFRouter(strong_model=STRONG, weak_model=WEAK).fit(alpaca)
    fit_time = time.perf_counter() - start
    curve = predictor.training_curve_
    predictor.predict_proba(warm[:1000])  # loads the embedder before timing
    speed = throughput(predictor, prompts, warm, args.n_single, args.n_batch, args.repeats)

    print(f"\n## mf on AlpacaEval ({len(alpaca):,} battles, {len(distinct)} distinct prompts, "
          f"{len(predictor.models_)} models), torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads available, 1 used\n")
    print(f"One-off process warm-up (imports incl. torch._dynamo via torch.optim, wordllama "
          f"load, a 200-battle fit): {warmup:.1f} s\n")
    print("| what | value |")
    print("|---|---|")
    print(f"| fit time, default params (embedding included) | {fit_time:.1f} s |")
    print(f"| of which embedding the {len(distinct)} distinct prompts | "
          f"{predictor.fit_seconds_['embed']:.2f} s |")
    print(f"| epochs run / best epoch | {len(curve['train_loss'])} / {curve['best_epoch']} |")
    print(f"| best validation loss | {min(curve['val_loss']):.4f} |")
    mean_len = np.mean([len(p) for p in prompts])
    print(f"\nScoring P(strong wins) for held-out prompts from {', '.join(QUERY_TABLES)} (mean "
          f"{mean_len:.0f} characters), never embedded before; before each timed run the "
          f"tokenizer's segment cache is reset to what {len(warm):,} other such prompts bring "
          f"(a router that has been serving a while). Prompts/s, median of {args.repeats} "
          "runs; the straightforward method is a torch forward pass through the full network "
          "per request (RouteLLM's pred_win_rate), with the same embedder.\n")
    print("| scoring | wordllama embedding alone | mf (numpy path) | torch forward per request "
          "| ratio |")
    print("|---|---|---|---|---|")
    rows = [
        ("one prompt per call, embedding included", "embed_single", "single", "single_torch"),
        ("batches of 1,000, embedding included", "embed_batch", "batch", "batch_torch"),
        ("one prompt per call, scoring only (embedding given)", None, "score_single",
         "score_single_torch"),
    ]
    for label, embed, fast, slow in rows:
        embed_cell = "-" if embed is None else fmt(speed[embed])
        print(f"| {label} | {embed_cell} | {fmt(speed[fast])} | {fmt(speed[slow])} | "
              f"{speed[fast] / speed[slow]:.1f}x |")
    print(f"| batches of 1,000, embedding included, cold tokenizer cache | - | "
          f"{fmt(speed['batch_cold'])} | - | - |")
    print("\nThe same runs in CPU time per prompt (microseconds; steadier than wall time on a "
          "shared machine; the tokenizer may use a second thread):\n")
    print("| scoring | wordllama embedding alone | mf (numpy path) | torch forward per request "
          "| ratio |")
    print("|---|---|---|---|---|")
    for label, embed, fast, slow in rows:
        embed_cell = "-" if embed is None else f"{speed[embed + '_cpu_us']:.1f}"
        fast_us, slow_us = speed[fast + "_cpu_us"], speed[slow + "_cpu_us"]
        print(f"| {label} | {embed_cell} | {fast_us:.1f} | {slow_us:.1f} | "
              f"{slow_us / max(fast_us, 1e-9):.1f}x |")

    # scale ------------------------------------------------------------------------------
    sizes = sorted(int(s) for s in args.scale_prompts.split(",") if s)
    if not sizes:  # --scale-prompts "": the speed tables only
        return
    everything = all_labelled_battles(args.data_dir)
    n_real = len(pc.unique(everything.table["prompt"]))
    big = with_variants(everything, max(sizes))
    n_big = len(pc.unique(big.table["prompt"]))
    print(f"\n## Scale: {len(everything):,} labelled battles over {n_real:,} distinct prompts "
          f"(AlpacaEval, golden MMLU / GSM8K / MMLU-Pro / RouterBench, MT-Bench votes), "
          f"extended with variant copies to {len(big):,} battles over {n_big:,} prompts\n")
    print(f"{args.scale_epochs} epochs per run (no early stop), batch 256, 10% of prompts held "
          "out for validation. Each prompt is embedded once (timed) into an on-disk cache that "
          "the fits then read, so 'embed' is the wordllama time for that many prompts and "
          "'train' the fit's own time (cache read included).\n")
    print("| distinct prompts | battles | models | embed (s) | train (s) | s/epoch "
          "| fit total (s) | one at a time (prompts/s) | batch 1,000 (prompts/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = pc.unique(big.table["prompt"]).to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedEmbedder(build_embedder("wordllama"), tmp)
        embedded, embed_total = 0, 0.0
        for size in sizes:
            start = time.perf_counter()
            cached.encode(order[embedded:size])
            embed_total += time.perf_counter() - start
            embedded = size
            subset = first_prompts(big, size)
            model = MFRouter(strong_model=STRONG, weak_model=WEAK, embedder=cached,
                             epochs=args.scale_epochs, patience=args.scale_epochs + 1)
            start = time.perf_counter()
            model.fit(subset)
            train = time.perf_counter() - start
            model.embedder_ = build_embedder("wordllama")  # score new prompts uncached
            sp = throughput(model, prompts, warm, min(args.n_single, 1000),
                            min(args.n_batch, 5000), 1)
            print(f"| {size:,} | {len(subset):,} | {len(model.models_)} | {embed_total:.1f} | "
                  f"{train:.1f} | {model.fit_seconds_['train'] / args.scale_epochs:.2f} | "
                  f"{embed_total + train:.1f} | {fmt(sp['single'])} | {fmt(sp['batch'])} |")


if __name__ == "__main__":
    main()
