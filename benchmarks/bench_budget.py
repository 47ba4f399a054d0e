"""Drift benchmark of the budget controller: does the strong-call share hold when traffic shifts?

An mf router (wordllama, trained on the AlpacaEval battles) is calibrated to a 30% strong-call
share on the AlpacaEval prompts and served by ``prefroute serve`` against two local
OpenAI-compatible upstreams (tests/upstream_server.py, one per side). Traffic: 1,000
AlpacaEval prompts, then 2,000 GSM8K and MMLU prompts (1,000 each, shuffled together), sent
in order by a few concurrent clients. Three setups see the same traffic:

- static: the calibrated threshold (``prefroute serve`` without a controller);
- controller: ``--target-strong-rate 0.3 --window 1000``, one server;
- 3 replicas: three server processes with ``--state-url`` on one real redis-server, the
  requests spread round-robin over them.

Reports the strong share per phase (all of it, and after a 500-request settling period)
with Wilson 95% intervals, the routing and total latency per request of each setup, and
plots the share over the last 200 requests against the request index.

Usage: ``nice -n 10 python benchmarks/bench_budget.py [--concurrency 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_serve import (
    free_port,
    router_alone,
    start_upstream,
    stop,
    train_checkpoint,
    wait_healthy,
)
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
TARGET, WINDOW, SETTLE, BAND = 0.30, 1000, 500, 0.03
N_BEFORE, N_AFTER = 1000, 2000
ROLLING = 200


def drift_prompts(seed: int) -> tuple[list[str], list[str]]:
    """1,000 AlpacaEval prompts (every distinct one, then a shuffled repeat), 2,000 GSM8K+MMLU."""
    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.data.outcomes import load_routellm_gsm8k, load_routellm_mmlu
    from prefroute.data.paths import default_data_dir

    rng = np.random.default_rng(seed)
    data_dir = default_data_dir()
    alpaca = sorted(
        set(apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases()).prompts)
    )
    order = np.concatenate([rng.permutation(len(alpaca)) for _ in range(2)])[:N_BEFORE]
    before = [alpaca[i] for i in order]
    gsm8k, mmlu = load_routellm_gsm8k(data_dir).prompts, load_routellm_mmlu(data_dir).prompts
    after = [gsm8k[i] for i in rng.choice(len(gsm8k), N_AFTER // 2, replace=False)]
    after += [mmlu[i] for i in rng.choice(len(mmlu), N_AFTER // 2, replace=False)]
    return before, [after[i] for i in rng.permutation(len(after))]


def start_router(checkpoint: Path, strong: str, weak: str, extra: list[str]):
    port = free_port()
    command = [
        sys.executable, "-m", "prefroute.cli.serve", f"mf={checkpoint}", "--port", str(port),
        "--strong-base-url", strong, "--weak-base-url", weak, "--no-access-log", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "bench-key"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", process)
    return process, url


def start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


async def send(urls: list[str], prompts: list[str], concurrency: int, label: str) -> dict:
    """Send the prompts in order (request i to replica i mod len(urls)); sides and latencies."""
    n = len(prompts)
    side = np.zeros(n, dtype=bool)
    routing_ms = np.zeros(n)
    total_ms = np.zeros(n)
    next_index = iter(range(n))
    clients = [httpx.AsyncClient(base_url=u, timeout=60) for u in urls]
    progress = tqdm(total=n, desc=label, unit="req", leave=False)

    async def worker() -> None:
        for i in next_index:
            body = {"model": "router-mf", "messages": [{"role": "user", "content": prompts[i]}]}
            started = time.perf_counter()
            response = await clients[i % len(clients)].post("/v1/chat/completions", json=body)
            total_ms[i] = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"request {i} failed: {response.status_code} {response.text}")
            side[i] = response.headers["x-prefroute-side"] == "strong"
            routing_ms[i] = float(response.headers["x-prefroute-routing-ms"])
            progress.update()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        progress.close()
        for c in clients:
            await c.aclose()
    return {"strong": side, "routing_ms": routing_ms, "total_ms": total_ms}


def controller_overhead(redis_url: str, scores: np.ndarray) -> dict[str, float]:
    """Microseconds per request of the controller's threshold + record, per kind of state."""
    from prefroute.serve.budget import BudgetController, BudgetSettings
    from prefroute.serve.state import LocalState, RedisState

    setups = {
        "in-process state": (None, LocalState, 1),
        "Redis, re-read every 8 requests (default)": (redis_url, RedisState, 8),
        "Redis, re-read every request": (redis_url, RedisState, 1),
    }
    out = {}
    for i, (name, (url, kind, refresh)) in enumerate(setups.items()):
        settings = BudgetSettings(
            target_strong_rate=TARGET, window=WINDOW, state_url=url, refresh_every=refresh
        )
        state = LocalState() if url is None else kind(url, prefix=f"overhead{i}")
        controller = BudgetController(settings, {"mf": 0.5}, state)

        async def go(controller: BudgetController = controller) -> float:
            for p in scores[:WINDOW]:  # fill the window first
                await controller.record("mf", float(p), bool(p > 0.8))
            started = time.perf_counter()
            for p in scores:
                t = await controller.threshold("mf")
                await controller.record("mf", float(p), bool(p >= t))
            elapsed = time.perf_counter() - started
            await controller.aclose()
            return elapsed / len(scores) * 1e6

        out[name] = asyncio.run(go())

    async def ping() -> float:  # the floor of any shared state: one round trip to Redis
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        await client.ping()
        started = time.perf_counter()
        for _ in range(len(scores)):
            await client.ping()
        elapsed = time.perf_counter() - started
        await client.aclose()
        return elapsed / len(scores) * 1e6

    out["one Redis PING round trip, for reference"] = asyncio.run(ping())
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def phase_rows(strong: np.ndarray) -> dict[str, tuple[float, float, float]]:
    spans = {
        "AlpacaEval, all 1,000": (0, N_BEFORE),
        "AlpacaEval, after settling (500-1,000)": (SETTLE, N_BEFORE),
        "GSM8K+MMLU, first 500": (N_BEFORE, N_BEFORE + SETTLE),
        "GSM8K+MMLU, after settling (1,500-3,000)": (N_BEFORE + SETTLE, N_BEFORE + N_AFTER),
    }
    rows = {}
    for name, (a, b) in spans.items():
        part = strong[a:b]
        low, high = wilson(int(part.sum()), len(part))
        rows[name] = (float(part.mean()), low, high)
    return rows


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefroute.io import atomic_write

    colours = {
        "static threshold": "tab:red",
        "controller": "tab:blue",
        "3 replicas + Redis": "tab:green",
    }
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.axhspan(
        (TARGET - BAND) * 100, (TARGET + BAND) * 100, color="0.85",
        label=f"target {TARGET:.0%} ± {BAND * 100:.0f} points",
    )  # fmt: skip
    for start in (0, N_BEFORE):
        ax.axvspan(start, start + SETTLE, color="khaki", alpha=0.35,
                   label="settling period (500 requests)" if start == 0 else None)  # fmt: skip
    ax.axvline(N_BEFORE, color="black", linestyle="--", linewidth=1,
               label="traffic switches to GSM8K + MMLU")  # fmt: skip
    kernel = np.ones(ROLLING) / ROLLING
    for name, result in results.items():
        rolling = np.convolve(result["strong"].astype(float), kernel, mode="valid") * 100
        dashed = name.startswith("3 replicas")  # it lies on the one-server line: dash it
        ax.plot(np.arange(ROLLING, len(result["strong"]) + 1), rolling, color=colours[name],
                linewidth=1.6, linestyle="--" if dashed else "-", label=name)  # fmt: skip
    ax.set_xlabel("request number (AlpacaEval first, then GSM8K + MMLU)")
    ax.set_ylabel(f"strong-model calls over the last {ROLLING} requests (%)")
    ax.set_xlim(0, N_BEFORE + N_AFTER)
    ax.set_ylim(0, 60)
    ax.set_title("mf router calibrated to 30% strong calls on AlpacaEval: static threshold vs "
                 "online controller (window 1,000)", fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    with atomic_write(path, "wb", encoding=None) as handle:
        fig.savefig(handle, dpi=120, format="png")
    plt.close(fig)


def run_drift(checkpoint: Path, prompts: list[str], tmp: str, concurrency: int):
    """Per-request sides and latencies of each setup; the replicas' final /metrics.json views."""
    processes: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        strong_process, strong = start_upstream()
        weak_process, weak = start_upstream()
        processes += [strong_process, weak_process]
        controller = ["--target-strong-rate", str(TARGET), "--window", str(WINDOW)]
        for name, extra in {"static threshold": [], "controller": controller}.items():
            process, url = start_router(checkpoint, strong, weak, extra)
            processes.append(process)
            results[name] = asyncio.run(send([url], prompts, concurrency, name))
            stop(process)
        redis_process, redis_url = start_redis(tmp)
        processes.append(redis_process)
        replicas = [
            start_router(checkpoint, strong, weak, [*controller, "--state-url", redis_url])
            for _ in range(3)
        ]
        processes += [p for p, _ in replicas]
        name = "3 replicas + Redis"
        urls = [u for _, u in replicas]
        results[name] = asyncio.run(send(urls, prompts, concurrency * 3, name))
        views = [httpx.get(f"{u}/metrics.json", timeout=10).json()["budget"] for u in urls]
    finally:
        for process in processes:
            if process.poll() is None:
                stop(process)
    return results, [v["routers"]["mf"] for v in views]


def print_drift(results: dict[str, dict], views: list[dict]) -> None:
    names = list(results)
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    rows = {name: phase_rows(r["strong"]) for name, r in results.items()}
    for phase in rows[names[0]]:
        cells = [
            f"{rows[n][phase][0]:.1%} [{rows[n][phase][1]:.1%}, {rows[n][phase][2]:.1%}]"
            for n in names
        ]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("\n| setup | routing ms (mean) | total ms p50 | total ms p99 |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        p50, p99 = np.percentile(r["total_ms"], [50, 99])
        print(f"| {name} | {r['routing_ms'].mean():.3f} | {p50:.2f} | {p99:.2f} |")
    sent = int(results[names[-1]]["strong"][-WINDOW:].sum())
    print(
        "\n3 replicas at the end: window "
        + ", ".join(f"{v['window_requests']}/{v['window_strong']}" for v in views)
        + f" (requests/strong, as each replica reads Redis); last {WINDOW} requests sent: "
        f"{sent} strong"
    )


def print_overhead(checkpoint: Path, prompts: list[str], tmp: str, seed: int) -> None:
    """The controller's cost per request beside the router's own scoring of one prompt."""
    alone = router_alone(checkpoint, prompts, 500)
    redis_process, redis_url = start_redis(tmp)
    try:
        scores = np.random.default_rng(seed).uniform(0.3, 1.0, 5000)
        overhead = controller_overhead(redis_url, scores)
    finally:
        stop(redis_process)
    single = alone["single"] * 1000
    print("\n| per request | µs | vs mf scoring one prompt |")
    print("|---|---:|---:|")
    print(f"| mf router scores one prompt (every request pays this) | {single:.1f} | 1.00 |")
    for name, micros in overhead.items():
        what = name if name.startswith("one Redis") else f"controller, {name} (threshold + record)"
        print(f"| {what} | {micros:.1f} | {micros / single:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "drift", "overhead"), default="all")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument(
        "--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "budget_drift.png"
    )
    args = parser.parse_args()
    # a plain kill still stops the servers this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    before, after = drift_prompts(args.seed)
    prompts = before + after
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or Path(tmp) / "mf"
        if args.checkpoint is None:
            train_checkpoint(checkpoint, "wordllama")
        if args.part in ("all", "drift"):
            results, views = run_drift(checkpoint, prompts, tmp, args.concurrency)
            plot(results, args.figure)
            load = os.getloadavg()
            print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
                  f"concurrency {args.concurrency} per server; seed {args.seed}\n")  # fmt: skip
            print_drift(results, views)
            print(f"figure: {args.figure}")
        if args.part in ("all", "overhead"):
            print_overhead(checkpoint, prompts, tmp, args.seed)
            load = os.getloadavg()
            print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
