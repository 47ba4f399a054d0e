"""Benchmark the routing server: overhead per request and throughput on loopback.

Starts, as separate processes, a fake OpenAI-compatible upstream (tests/upstream_server.py)
and ``prefroute serve`` with an mf router (trained here on the AlpacaEval battles, one per
embedder: the fast wordllama and the BERT-style minilm; or ``--checkpoint``), then drives
both with an asyncio + httpx load generator at several concurrency levels: the same
requests sent directly to the upstream (the baseline) and through the router.

Reports latency p50/p99, throughput and their ratio, the router's own routing latency (the
``x-prefroute-routing-ms`` header), for three batching settings: no batching (max batch 1),
batching what is queued (window 0 ms), and a 2 ms window. Paths run in interleaved rounds
so that load from other processes hits them alike; CPU seconds per request of each server
process (from /proc) are reported since they depend less on that load than wall times.
Also times the router alone on one prompt vs a batch of 64. Prints markdown tables.

With ``--compare-root DIR`` (another checkout, e.g. ``git archive <commit> | tar -x -C DIR``)
the suite instead runs the default server (batch what is queued) from DIR ("before") and from
this checkout ("after") side by side in the same interleaved rounds, to measure what a change
costs per request.

Usage: ``nice -n 10 python benchmarks/bench_serve.py [--checkpoint DIR] [--scale 1.0]
[--compare-root DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
CONFIGS = {  # name -> (batch window ms, max batch size)
    "no batching": (0.0, 1),
    "batch queued (0 ms)": (0.0, 64),
    "batch 2 ms window": (2.0, 64),
}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def start_upstream() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "upstream_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def start_router(
    checkpoint: Path, upstream: str, window_ms: float, max_batch: int, root: Path = ROOT
):
    port = free_port()
    command = [
        sys.executable, "-m", "prefroute.cli.serve", f"mf={checkpoint}", "--port", str(port),
        "--strong-base-url", upstream, "--weak-base-url", upstream, "--no-access-log",
        "--batch-window-ms", str(window_ms), "--max-batch-size", str(max_batch),
    ]  # fmt: skip
    # PYTHONSAFEPATH and cwd: `python -m` puts the working folder first on sys.path, so run
    # from the repository root a --compare-root server imported this checkout (until session 9)
    env = {**os.environ, "PYTHONPATH": str(root), "OPENAI_API_KEY": "bench-key",
           "PYTHONSAFEPATH": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", process)
    return process, f"{url}/v1"


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def drive(base_url: str, model: str, prompts: list[str], n_requests: int, concurrency: int):
    """Send ``n_requests`` completions from ``concurrency`` workers; latencies, wall, headers."""
    latencies: list[float] = []
    routing_ms: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        counter = iter(range(n_requests))

        async def worker() -> None:
            nonlocal failures
            for i in counter:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                }
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                except httpx.HTTPError:  # counted, not fatal: a busy machine can drop a socket
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures += 1
                if "x-prefroute-routing-ms" in response.headers:
                    routing_ms.append(float(response.headers["x-prefroute-routing-ms"]))

        # warm the connections, then time
        await asyncio.gather(
            *(
                client.post(
                    "/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "warm up"}]},
                )
                for _ in range(concurrency)
            )
        )
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return np.array(latencies) * 1000.0, wall, np.array(routing_ms), failures


def train_checkpoint(directory: Path, embedder: str) -> None:
    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.data.paths import default_data_dir
    from prefroute.router import Router, make_router

    battles = apply_aliases(load_source("alpaca_eval", default_data_dir()), ModelAliases())
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, embedder=embedder, epochs=3, progress=False
    )
    router = Router(predictor.fit(battles))
    router.calibrate(sorted(set(battles.prompts)), strong_rate=0.3)
    router.save_pretrained(directory)


def router_alone(checkpoint: Path, prompts: list[str], repeats: int) -> dict[str, float]:
    """ms per prompt for the router scoring one prompt at a time vs batches of 64."""
    from prefroute.router import load_router

    router = load_router(checkpoint)
    router.strong_win_prob(prompts[:64])
    started = time.perf_counter()
    for i in range(repeats):
        router.strong_win_prob([prompts[i % len(prompts)]])
    single = (time.perf_counter() - started) / repeats * 1000
    batches = max(1, repeats // 64)
    started = time.perf_counter()
    for b in range(batches):
        router.strong_win_prob([prompts[(b * 64 + j) % len(prompts)] for j in range(64)])
    batched = (time.perf_counter() - started) / (batches * 64) * 1000
    return {"single": single, "batch64": batched}


def run_suite(
    checkpoint: Path,
    prompts: list[str],
    levels: dict[int, int],
    rounds: int,
    configs: dict[str, tuple[float, int, Path]],
):
    """Every path at every concurrency, in interleaved rounds (so load drift hits all alike)."""
    upstream_process, upstream = start_upstream()
    routers = {}
    totals: dict[tuple[int, str], dict] = {}
    try:
        for name, (window, max_batch, root) in configs.items():
            routers[name] = start_router(checkpoint, upstream, window, max_batch, root)
        paths = ["direct", *configs]
        runs = [
            (c, r, paths[(i + r) % len(paths)])
            for c in levels
            for r in range(rounds)
            for i in range(len(paths))
        ]
        for concurrency, _, name in tqdm(runs, desc="runs", file=sys.stderr):
            n = max(concurrency, levels[concurrency] // rounds)
            if name == "direct":
                base, model = upstream, STRONG
            else:
                base, model = routers[name][1], "router-mf"
            pids = {"upstream": upstream_process.pid}
            if name != "direct":
                pids["router"] = routers[name][0].pid
            cpu_before = {k: cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
            latencies, wall, routing_ms, failures = asyncio.run(
                drive(base, model, prompts, n, concurrency)
            )
            total = totals.setdefault(
                (concurrency, name),
                {"lat": [], "route": [], "wall": 0.0, "n": 0, "failures": 0, "cpu": {}},
            )
            total["lat"].append(latencies)
            total["route"].append(routing_ms)
            total["wall"] += wall
            total["n"] += n
            total["failures"] += failures
            for k, pid in pids.items():
                used = (cpu_seconds(pid) or 0.0) - cpu_before[k]
                total["cpu"][k] = total["cpu"].get(k, 0.0) + used
        batch_sizes = {}
        for name, (_, url) in routers.items():
            stats = httpx.get(url.removesuffix("/v1") + "/metrics.json", timeout=10)
            if stats.status_code == 404:  # a checkout from before /metrics became Prometheus
                stats = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10)
            batch_sizes[name] = stats.json()["batching"]["routers"]["mf"]["mean_batch_size"]
    finally:
        for process, _ in routers.values():
            stop(process)
        stop(upstream_process)
    rows = []
    for (concurrency, name), t in totals.items():
        lat, route = np.concatenate(t["lat"]), np.concatenate(t["route"])
        rows.append({
            "concurrency": concurrency, "path": name, "n": t["n"], "failures": t["failures"],
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "rps": t["n"] / t["wall"],
            "route_p50": float(np.percentile(route, 50)) if len(route) else None,
            "route_p99": float(np.percentile(route, 99)) if len(route) else None,
            "upstream_cpu_ms": t["cpu"]["upstream"] / t["n"] * 1000,
            "router_cpu_ms": t["cpu"]["router"] / t["n"] * 1000 if "router" in t["cpu"] else None,
        })  # fmt: skip
    rows.sort(key=lambda r: (r["concurrency"], ["direct", *configs].index(r["path"])))
    return rows, batch_sizes


def print_table(title: str, alone: dict[str, float], rows: list[dict], batch_sizes: dict) -> None:
    print(f"\n### {title}\n")
    print(
        f"Router alone: {alone['single']:.3f} ms per prompt one at a time, "
        f"{alone['batch64']:.3f} ms per prompt in batches of 64 "
        f"({alone['single'] / alone['batch64']:.1f}x)\n"
    )
    print(
        "| concurrency | path | requests | p50 ms | p99 ms | req/s | req/s vs direct "
        "| overhead p50 ms | overhead p99 ms | routing p50 ms | routing p99 ms "
        "| router CPU ms/req | upstream CPU ms/req | failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    direct = {r["concurrency"]: r for r in rows if r["path"] == "direct"}
    for r in rows:
        d = direct[r["concurrency"]]
        cells = [r["concurrency"], r["path"], r["n"], f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                 f"{r['rps']:.0f}", f"{r['rps'] / d['rps']:.2f}"]  # fmt: skip
        if r["path"] == "direct":
            cells += ["-"] * 5
        else:
            cells += [f"{r['p50'] - d['p50']:.2f}", f"{r['p99'] - d['p99']:.2f}"]
            cells += [f"{r[k]:.2f}" for k in ("route_p50", "route_p99", "router_cpu_ms")]
        cells += [f"{r['upstream_cpu_ms']:.2f}", r["failures"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(
        "\nMean routing batch size over the suite: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in batch_sizes.items() if v is not None)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="an mf checkpoint (default: train one)")
    parser.add_argument(
        "--embedders", nargs="+", default=["wordllama", "minilm"],
        help="train one mf router per embedder (ignored with --checkpoint)",
    )  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the request counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level")
    parser.add_argument(
        "--compare-root", type=Path, help="another checkout to run beside this one (before/after)"
    )
    args = parser.parse_args()
    if args.compare_root:
        configs = {
            f"before ({args.compare_root.name})": (0.0, 64, args.compare_root.resolve()),
            "after (this checkout)": (0.0, 64, ROOT),
        }
    else:
        configs = {name: (*setting, ROOT) for name, setting in CONFIGS.items()}

    from prefroute.data import load_source
    from prefroute.data.paths import default_data_dir

    prompts = sorted(set(load_source("alpaca_eval", default_data_dir()).prompts))
    suites = (
        [("checkpoint", args.checkpoint)]
        if args.checkpoint
        else [(e, None) for e in args.embedders]
    )
    with tempfile.TemporaryDirectory() as tmp:
        for embedder, checkpoint in suites:
            if checkpoint is None:
                checkpoint = Path(tmp) / embedder
                print(f"training an mf router ({embedder}) on AlpacaEval...", file=sys.stderr)
                train_checkpoint(checkpoint, embedder)
            # a slow embedder gets fewer requests so the suite stays within minutes
            slow = embedder == "minilm"
            levels = {1: 30, 16: 160} if slow else {1: 200, 16: 600, 64: 1800}
            levels = {c: max(c, int(n * args.scale)) for c, n in levels.items()}
            alone = router_alone(checkpoint, prompts, repeats=64 if slow else 256)
            rows, batch_sizes = run_suite(checkpoint, prompts, levels, args.rounds, configs)
            print_table(f"mf router, {embedder} embedder", alone, rows, batch_sizes)
            sys.stdout.flush()
    print(
        f"\n(CPU cores: {os.cpu_count()}; load average at end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )


if __name__ == "__main__":
    main()
