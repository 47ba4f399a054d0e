"""Embedding throughput (texts/s) of the offline embedders on every distinct prompt of the data.

WordLlama, four ways on the same texts, each in a fresh state:
- ``WordLlama.embed`` itself (the straightforward way: padded batches, the plain tokenizer);
- prefroute's embedder with the plain tokenizer (``segment_cache=False``; no padding);
- prefroute's default, segment-cached tokenisation, from an empty cache (a fresh process);
- the same again, every segment now cached (texts embedded before, or traffic whose words
  were all seen).
All four must give the same vectors (max |difference| printed). MiniLM, ~500x slower on
CPU, embeds the first ``--minilm-n`` texts. No embedding cache is used. Prints markdown.

    python benchmarks/bench_embed.py [--data-dir ../shared/data] [--minilm-n 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prefroute.data import distinct_prompts
from prefroute.embed import WordLlamaEmbedder, build_embedder
from prefroute.embed.wordllama_embedder import _load_model, clear_token_caches

ROOT = Path(__file__).resolve().parents[1]


def timed(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[dict, np.ndarray]:
    start, cpu_start = time.perf_counter(), time.process_time()
    vectors = encode(texts)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"wall": wall, "cpu": cpu, "rate": len(texts) / wall}, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--minilm-n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="texts per WordLlama.embed / MiniLM call")
    args = parser.parse_args()
    texts = distinct_prompts(args.data_dir)

    start = time.perf_counter()
    model = _load_model("l2_supercat", 256, None)
    load_s = time.perf_counter() - start
    plain = WordLlamaEmbedder(segment_cache=False)
    segmented = WordLlamaEmbedder()
    plain.encode(texts[:2])
    segmented.encode(texts[:2])
    clear_token_caches()

    def own(batch: list[str]) -> np.ndarray:
        return np.concatenate([model.embed(batch[i : i + args.batch_size], norm=True)
                               for i in range(0, len(batch), args.batch_size)])

    rows = []
    own_row, reference = timed(own, texts)
    rows.append(("WordLlama.embed itself (straightforward)", own_row, reference))
    rows.append(("prefroute, plain tokenizer", *timed(plain.encode, texts)))
    rows.append(("**prefroute, segment cache, empty at start**", *timed(segmented.encode, texts)))
    rows.append(("prefroute, segment cache, all segments cached", *timed(segmented.encode, texts)))

    minilm = build_embedder("minilm")
    start = time.perf_counter()
    minilm.encode(texts[:2])
    minilm_load = time.perf_counter() - start
    minilm_row, _ = timed(lambda t: minilm.encode(t, batch_size=args.batch_size),
                          texts[: args.minilm_n])

    mean_chars = np.mean([len(t) for t in texts])
    print(f"{len(texts):,} distinct prompts of {args.data_dir} (mean {mean_chars:.0f} characters); "
          f"CPU: {os.cpu_count()} cores, {platform.machine()}; load average at the end "
          f"{os.getloadavg()[0]:.1f}. WordLlama loads in {load_s:.1f} s, MiniLM in "
          f"{minilm_load:.1f} s.\n")
    print("| embedder | texts | encode wall (s) | encode CPU (s) | texts/s | ratio | "
          "max abs diff vs WordLlama.embed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_rate = rows[0][1]["rate"]
    for label, row, vectors in rows:
        diff = float(np.abs(vectors - reference).max())
        print(f"| wordllama: {label} | {len(texts):,} | {row['wall']:.2f} | {row['cpu']:.2f} | "
              f"{row['rate']:,.0f} | {row['rate'] / base_rate:.1f}x | {diff:.1e} |")
    print(f"| minilm (all-MiniLM-L6-v2), batch {args.batch_size} | {args.minilm_n:,} | "
          f"{minilm_row['wall']:.1f} | {minilm_row['cpu']:.1f} | {minilm_row['rate']:,.0f} | - "
          "| - |")


if __name__ == "__main__":
    main()
