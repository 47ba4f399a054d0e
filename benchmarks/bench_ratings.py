"""Benchmark Bradley-Terry fitting.

Times, on the AlpacaEval judge battles (36,700 soft-labelled battles, 58 models):
- ``fit_ratings`` end to end (model indices, soft outcomes, wins matrix, Newton fit);
- a straightforward baseline: L-BFGS (scipy) on the per-battle logistic likelihood;
- ``fit_ratings`` with 100 bootstrap resamples;
and the batched solver on B=1000 random 10x10 (tier) and 60x60 wins matrices against a
Python loop over the single-problem solver. Prints a markdown table.

Usage: ``python benchmarks/bench_ratings.py [--data-dir ../shared/data] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from prefroute.data.battles import Battles
from prefroute.data.ratings import fit_bt, fit_bt_batched, fit_ratings, pairwise_counts

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()`` over ``repeats`` runs.

    CPU time is reported too because it is less sensitive to other load on a shared machine.
    """
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def load_alpaca(data_dir: Path) -> Battles:
    keys = ("prompt", "model_a", "model_b", "winner", "p_b_wins", "source")
    with open(data_dir / "alpaca_eval" / "judge_battles.jsonl", encoding="utf-8") as f:
        return Battles.from_records({k: json.loads(line)[k] for k in keys} for line in f)


def scipy_fit(a: np.ndarray, b: np.ndarray, y: np.ndarray, n: int, reg: float) -> np.ndarray:
    """Per-battle logistic likelihood minimised by L-BFGS (the baseline)."""

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[a] - theta[b]
        value = -(y * log_expit(d) + (1 - y) * log_expit(-d)).sum() + 0.5 * reg * theta @ theta
        r = y - expit(d)
        grad = -(np.bincount(a, r, n) - np.bincount(b, r, n)) + reg * theta
        return value, grad

    res = minimize(
        nll,
        np.zeros(n),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "gtol": 1e-9, "ftol": 1e-16, "maxcor": 30},
    )
    return res.x - res.x.mean()


def random_wins(rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
    """Soft wins matrices like a similarity-weighted router's: positive weights per pair."""
    strength = rng.normal(size=n)
    p = expit(strength[:, None] - strength[None, :])
    games = rng.gamma(2.0, 5.0, size=(batch, n, n))
    games = games + games.transpose(0, 2, 1)
    wins = games * p
    wins[:, np.arange(n), np.arange(n)] = 0.0
    return wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    battles = load_alpaca(args.data_dir)
    models = battles.models()
    n = len(models)
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[m] for m in battles.column("model_a")])
    b = np.array([index[m] for m in battles.column("model_b")])
    y = 1.0 - battles.numeric("p_b_wins")
    reg = 1e-6

    rows = []
    t_full = median_time(lambda: fit_ratings(battles), args.repeats)
    rows.append((f"fit_ratings, {len(battles):,} battles, {n} models", t_full))
    t_core = median_time(lambda: fit_bt(pairwise_counts(a, b, y, None, n), reg=reg), args.repeats)
    rows.append(("pairwise_counts + fit_bt (indices given)", t_core))
    t_scipy = median_time(lambda: scipy_fit(a, b, y, n, reg), args.repeats)
    rows.append(("scipy L-BFGS per-battle logistic (indices given)", t_scipy))
    gap = np.abs(fit_ratings(battles).theta - scipy_fit(a, b, y, n, reg)).max()
    t_boot = median_time(lambda: fit_ratings(battles, bootstrap=100), max(1, args.repeats // 3))
    rows.append(("fit_ratings, bootstrap=100", t_boot))

    rng = np.random.default_rng(0)
    for size in (10, 60):
        wins = random_wins(rng, 1000, size)
        t_batch = median_time(lambda w=wins: fit_bt_batched(w), args.repeats)
        t_loop = median_time(lambda w=wins: [fit_bt(x) for x in w], 1, warmup=False)
        rows.append((f"fit_bt_batched, B=1000, {size}x{size}", t_batch))
        rows.append((f"loop of fit_bt, B=1000, {size}x{size}", t_loop))

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| task | median wall | median CPU |")
    print("|---|---:|---:|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall * 1e3:.1f} ms | {cpu * 1e3:.1f} ms |")
    print()
    print(
        f"max |theta - scipy theta| = {gap:.1e}; speed-up of the core fit over scipy: "
        f"{t_scipy[0] / t_core[0]:.1f}x wall"
    )


if __name__ == "__main__":
    main()
