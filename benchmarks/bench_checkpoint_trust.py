"""What the checkpoint trust checks cost at load time (issue #12).

Side by side in one run: loading a router with every check (config read as a regular file
with size and depth limits, sha256 of every file, finite tensors, the endpoint / path
policy) against the straightforward load the checks wrap (the same code with
``verify_files`` and ``sanitize_config`` switched off). Also the raw verification speed on a
synthetic fp32 safetensors file the size of a fine-tuned MiniLM (~90 MB).

    python benchmarks/bench_checkpoint_trust.py [--repeats 20] [--mb 90]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mb", type=int, default=90, help="synthetic tensor file size")
    args = parser.parse_args()

    import prefroute.routers.base as base
    from prefroute.checkpoint import file_digests, verify_files
    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.data.paths import default_data_dir
    from prefroute.router import Router, load_router
    from prefroute.training import train_router

    battles = apply_aliases(load_source("alpaca_eval", default_data_dir()), ModelAliases())
    predictor = train_router("mf", battles.take(range(0, len(battles), 10)), epochs=1,
                             progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mf"
        Router(predictor).save_pretrained(folder)
        load_router(folder)  # warm caches (wordllama weights) before timing either path
        checked = _timed(lambda: load_router(folder), args.repeats)
        real_verify, real_sanitize = base.verify_files, base.sanitize_config
        base.verify_files = lambda directory, config: None
        base.sanitize_config = lambda directory, config, options: config
        try:
            plain = _timed(lambda: load_router(folder), args.repeats)
        finally:
            base.verify_files, base.sanitize_config = real_verify, real_sanitize
        size = sum(p.stat().st_size for p in folder.iterdir())

        from safetensors.numpy import save_file

        big = Path(tmp) / "big"
        big.mkdir()
        n = args.mb * 1024 * 1024 // 4
        save_file({"weight": np.random.default_rng(0).standard_normal(n, dtype=np.float32)},
                  str(big / "model.safetensors"))
        config = {"files": file_digests(big)}
        verify = _timed(lambda: verify_files(big, config), 3)

    checked_ms, plain_ms = statistics.median(checked) * 1e3, statistics.median(plain) * 1e3
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared by 8 engineers)")
    print(f"mf checkpoint ({size / 1e6:.1f} MB), median of {args.repeats} loads:")
    print(f"  with trust checks     {checked_ms:8.1f} ms")
    print(f"  straightforward load  {plain_ms:8.1f} ms")
    print(f"  ratio                 {checked_ms / plain_ms:8.2f}x")
    best = min(verify)
    print(f"verify_files on a {args.mb} MB fp32 safetensors file (sha256 + finite), best of 3: "
          f"{best * 1e3:.0f} ms = {args.mb / best:.0f} MB/s")


if __name__ == "__main__":
    main()
