"""Embedding throughput (texts/s) of the offline embedders on the alpaca_eval battle prompts.

WordLlama embeds every prompt row (36,700); MiniLM, ~50x slower on CPU, embeds the first
2,000 rows to keep the run short. No cache is used: every row is embedded. Prints a
markdown table.

    python benchmarks/bench_embed.py [--data FILE] [--minilm-n 2000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from prefroute.embed import build_embedder

DEFAULT_DATA = Path("/work/shared/data/alpaca_eval/judge_battles.jsonl")


def read_prompts(path: Path) -> list[str]:
    """The "prompt" field of every JSON line."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle if line.strip()]


def bench(name: str, texts: list[str], batch_size: int) -> dict[str, float | int | str]:
    """Load time, then wall and CPU time of encoding ``texts`` (CPU time of all threads is
    robust to other processes competing for the cores; wall time is not)."""
    embedder = build_embedder(name)
    start = time.perf_counter()
    embedder.encode(texts[:2], batch_size=batch_size)  # loads the model
    load_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    vectors = embedder.encode(texts, batch_size=batch_size)
    encode_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    return {
        "embedder": name,
        "texts": len(texts),
        "dim": int(vectors.shape[1]),
        "load_s": load_s,
        "encode_s": encode_s,
        "cpu_s": cpu_s,
        "texts_per_s": len(texts) / encode_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minilm-n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    prompts = read_prompts(args.data)
    rows = [
        bench("wordllama", prompts, args.batch_size),
        bench("minilm", prompts[: args.minilm_n], args.batch_size),
    ]
    print(
        f"Prompts from {args.data.name}: {len(prompts)} rows ({len(set(prompts))} distinct); "
        f"batch size {args.batch_size}; CPU: {os.cpu_count()} cores, {platform.machine()}.\n"
    )
    print("| embedder | texts | dim | load (s) | encode wall (s) | encode CPU (s) | texts/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['embedder']} | {r['texts']:,} | {r['dim']} | {r['load_s']:.1f} | "
            f"{r['encode_s']:.1f} | {r['cpu_s']:.1f} | {r['texts_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
