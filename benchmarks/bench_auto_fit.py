"""Fit time of ``auto`` on the default training mix (AlpacaEval judge + MMLU-Pro golden).

Side by side in one process: ``auto`` as shipped (every distinct prompt embedded once, its
surface features computed once, shared by all candidates and folds) and the plain way
(``share_embeddings=False``: every candidate fit embeds its own prompts). Wall and CPU
seconds, with the load average.

    python benchmarks/bench_auto_fit.py [--plain]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()


def timed_fit(battles, **params) -> tuple[float, float, object]:
    from prefroute.training import train_router

    wall, cpu = time.perf_counter(), time.process_time()
    router = train_router("auto", battles, **params)
    return time.perf_counter() - wall, time.process_time() - cpu, router


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--plain", action="store_true", help="also time the plain way")
    args = parser.parse_args()
    from prefroute.training import DEFAULT_TRAINING_MIX, load_training_battles

    battles = load_training_battles(list(DEFAULT_TRAINING_MIX), args.data_dir)
    print(f"{len(battles):,} battles, {len(set(battles.prompts)):,} distinct prompts; "
          f"load average {os.getloadavg()}")
    print("| auto fit | wall s | CPU s | load average after |")
    print("|---|---:|---:|---|")
    wall, cpu, router = timed_fit(battles)
    print(f"| shared embeddings (default) | {wall:.1f} | {cpu:.1f} | {os.getloadavg()} |",
          flush=True)
    if args.plain:
        wall, cpu, _ = timed_fit(battles, share_embeddings=False)
        print(f"| plain: every fit embeds on its own | {wall:.1f} | {cpu:.1f} | "
              f"{os.getloadavg()} |")
    print(f"chosen: {router.mode_} {router.member_names_}")


if __name__ == "__main__":
    main()
