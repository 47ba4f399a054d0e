"""Start-up times, this checkout against a baseline checkout, side by side in one run.

Measures in fresh processes, alternating baseline and current so machine load hits both alike:
- ``prefroute --help`` (process wall time);
- ``load_router(checkpoint)`` and the first ``route()`` after it, for an sw_bt and an mf
  checkpoint trained here on the AlpacaEval battles (timed inside the process, plus its wall).

The baseline is an older checkout of the code; by default the commit before issue #16,
exported with ``git archive`` into a temporary folder:

    python benchmarks/bench_startup.py --repeats 5
    python benchmarks/bench_startup.py --baseline /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from prefroute.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
BASELINE_REV = "45dcfc2"  # main before issue #16 (fast start)

LOAD_AND_ROUTE = """
import json, sys, time
t0 = time.perf_counter()
from prefroute import load_router
router = load_router(sys.argv[1])
t1 = time.perf_counter()
router.route(["Prove that sqrt(2) is irrational."])
t2 = time.perf_counter()
router.route(["Write a haiku about routers."])
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "first_route_s": t2 - t1, "second_route_s": t3 - t2}))
"""


def run(code_root: Path, argv: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, cwd=code_root
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed under {code_root}:\n{result.stderr[-2000:]}")
    return wall, result.stdout


def train_checkpoints(data_dir: Path, out: Path) -> dict[str, Path]:
    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.router import Router, make_router

    battles = apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())
    prompts = sorted(set(battles.prompts))
    paths = {}
    for name in ("sw_bt", "mf"):
        params = {"progress": False} if name == "mf" else {}
        predictor = make_router(name, strong_model=STRONG, weak_model=WEAK, **params)
        router = Router(predictor.fit(battles))
        router.calibrate(prompts, strong_rate=0.3)
        paths[name] = router.save_pretrained(out / name)
    return paths


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", type=Path, help=f"older checkout (default: git archive of {BASELINE_REV})"
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        baseline = args.baseline
        if baseline is None:
            baseline = Path(folder) / "baseline"
            baseline.mkdir()
            archive = subprocess.run(
                ["git", "archive", BASELINE_REV], cwd=ROOT, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        sides = {"before": baseline.resolve(), "after": ROOT}
        checkpoints = train_checkpoints(args.data_dir, Path(folder))
        results: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
        steps = [("help", None)] + [(f"load+route {n}", p) for n, p in checkpoints.items()]
        with tqdm(total=args.repeats * len(steps) * 2, desc="start-up runs") as bar:
            for _ in range(args.repeats):
                for step, checkpoint in steps:
                    for side, root in sides.items():  # alternate: load hits both alike
                        timings = results[side]
                        if checkpoint is None:
                            wall, _ = run(root, ["-m", "prefroute.cli.main", "--help"])
                            timings.setdefault("help_wall_s", []).append(wall)
                        else:
                            wall, out = run(root, ["-c", LOAD_AND_ROUTE, str(checkpoint)])
                            inner = json.loads(out.strip().splitlines()[-1])
                            for key, value in {**inner, "wall_s": wall}.items():
                                timings.setdefault(f"{step} {key}", []).append(value)
                        bar.update()
    load = os.getloadavg()
    print(
        f"\nmachine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"medians of {args.repeats} fresh processes each"
    )
    print("| measurement | before | after | before / after |")
    print("|---|---:|---:|---:|")
    summary = {}
    for key in results["before"]:
        before, after = median(results["before"][key]), median(results["after"][key])
        ratio = before / after if after > 0 else float("inf")
        summary[key] = {"before_s": before, "after_s": after, "ratio": ratio}
        print(f"| {key} | {before:.3f} s | {after:.3f} s | {ratio:.1f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.out, json.dumps({"load": load, "results": results, "summary": summary}, indent=2)
    )
    print(f"\nraw timings: {args.out}")


if __name__ == "__main__":
    main()
