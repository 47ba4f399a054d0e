"""Foundation speed: load + clean the 36,700 AlpacaEval judge battles and embed their prompts.

Target (issue "Foundation"): all of it in < 5 s on a 2-core machine with wordllama. prefroute
embeds the 644 distinct prompts, each run starting from an empty tokenizer cache (as a fresh
process would); the straightforward method beside it embeds every battle's prompt (36,700
texts) with ``WordLlama.embed`` itself.

    python benchmarks/bench_data.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from prefroute.data import clean_battles, load_source
from prefroute.data.paths import default_data_dir
from prefroute.embed import build_embedder
from prefroute.embed.wordllama_embedder import _load_model, clear_model_cache, clear_token_caches


def run_once(data_dir, embed, *, distinct: bool) -> dict[str, float]:
    clear_token_caches()
    t0 = time.perf_counter()
    battles = load_source("alpaca_eval", data_dir)
    t1 = time.perf_counter()
    battles = clean_battles(battles)
    t2 = time.perf_counter()
    prompts = battles.prompts
    if distinct:
        unique, inverse = np.unique(np.array(prompts, dtype=object), return_inverse=True)
        vectors = embed(list(unique))[inverse]
    else:
        vectors = embed(prompts)
    t3 = time.perf_counter()
    assert vectors.shape[0] == len(battles) == 36_700
    return {"load": t1 - t0, "clean": t2 - t1, "embed": t3 - t2, "total": t3 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    clear_model_cache()
    embedder = build_embedder("wordllama")
    t = time.perf_counter()
    embedder.encode(["warm-up"])  # model load: a one-off per process, reported separately
    load_seconds = time.perf_counter() - t
    model = _load_model("l2_supercat", 256, None)

    def wordllama_embed(texts: list[str]) -> np.ndarray:
        return np.concatenate([model.embed(texts[i : i + 256], norm=True)
                               for i in range(0, len(texts), 256)])

    rows = []
    for distinct in (True, False):
        embed = embedder.encode if distinct else wordllama_embed
        runs = [run_once(data_dir, embed, distinct=distinct) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append(
            ("distinct prompts (prefroute)" if distinct
             else "every battle with WordLlama.embed (straightforward)", med)
        )
    print(f"wordllama model load (once per process): {load_seconds:.3f} s\n")
    print("| method | load (s) | clean (s) | embed (s) | total (s) |")
    print("|---|---|---|---|---|")
    for name, med in rows:
        cells = " | ".join(f"{med[k]:.2f}" for k in ("load", "clean", "embed", "total"))
        print(f"| {name} | {cells} |")
    print(
        "\nratio straightforward / prefroute total: "
        f"{rows[1][1]['total'] / rows[0][1]['total']:.1f}x "
        f"(median of {args.repeats} runs; target total < 5 s)"
    )


if __name__ == "__main__":
    main()
