"""`prefroute score` end to end: throughput, profile, memory, workers and Ray (issue 18).

Every figure is measured on fresh processes through the real command line, side by side in
one run with the command before this work (the tree at ``--before`` unpacked with ``git
archive``) and with the library called in-process. Throughput counts 20,000 MMLU-Pro
prompts minus 1 so start-up cancels out: rate = 19,999 / (median time(20,000) - median
time(1)) over ``--repeats`` interleaved runs.

    python benchmarks/bench_score_cli.py --data-dir ../shared/data --out benchmarks/out/score
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
BEFORE_COMMIT = "45dcfc2"  # main before issue 18
PREVIOUS_COMMIT = "8dcd375"  # main before scoring in threads
PYCACHE = Path("/tmp/prefroute-bench-pycache")


def mmlu_pro_prompts(data_dir: Path, n: int) -> list[str]:
    """n distinct real prompts: each question with its options, alone, then options reversed."""
    questions = [orjson.loads(x) for x in open(data_dir / "mmlu_pro" / "questions.jsonl", "rb")]

    def lettered(q: dict, options: list[str]) -> str:
        letters = (f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
        return q["question"] + "\n" + "\n".join(letters)

    pool = [lettered(q, q["options"]) for q in questions] + [q["question"] for q in questions]
    pool += [lettered(q, q["options"][::-1]) for q in questions]
    pool = list(dict.fromkeys(pool))
    if n > len(pool):
        raise SystemExit(f"only {len(pool):,} distinct prompts; ask for fewer")
    return pool[:n]


def cycled_table(base: list[str], n: int) -> pa.Table:
    """n distinct prompts: real questions cycled, each with its row number appended."""
    texts = pa.array(base * (n // len(base) + 1))[:n]
    rows = pa.array(np.arange(n).astype(str))
    prompts = pc.binary_join_element_wise(texts, pa.scalar(" (row "), rows, pa.scalar(")"), "")
    return pa.table({"id": pa.array(np.arange(n)), "prompt": prompts})


def write_jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "prompt": p}) + b"\n" for i, p in enumerate(prompts))
    )
    return path


def ensure_checkpoints(out: Path, data_dir: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from prefroute.router import Router
    from prefroute.training import load_training_battles, train_router

    paths = {name: out / "ckpt" / name for name in ("sw_bt", "mf", "random")}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    battles = load_training_battles(["alpaca_eval"], data_dir)
    for name, path in paths.items():
        if (path / "config.json").exists():
            continue
        params = {"progress": False} if name == "mf" else {}
        predictor = train_router(name, battles, strong_model=PAIR[0], weak_model=PAIR[1], **params)
        Router(predictor).save_pretrained(path)
    return paths


def unpack_before(out: Path, commit: str) -> Path:
    """The package as it was at ``commit`` (library and CLI), to run the old command."""
    tree = out / f"before-{commit}"
    if not (tree / "prefroute").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit, "prefroute"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(tree, filter="data")
    return tree


def process_env(package_root: Path) -> dict[str, str]:
    """The environment of a timed command: ``package_root`` importable, and bytecode cached
    (under the --out folder) as in an installed package. Without it every process compiles
    the sources again and start-up varies by ±0.5 s, more than 20,000 prompts take."""
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    # `python -c` and `python -m` put the working directory first on sys.path, so run from
    # the repository root they imported *this* checkout whatever PYTHONPATH said: every
    # "before"/"previous" column timed the current code until this was found (session 9).
    env["PYTHONSAFEPATH"] = "1"
    check_imports_from(package_root, env)
    return env


def check_imports_from(package_root: Path, env: dict[str, str]) -> None:
    """Fail unless a process started with ``env`` imports prefroute from ``package_root``."""
    done = subprocess.run([sys.executable, "-c", "import prefroute; print(prefroute.__file__)"],
                          env=env, capture_output=True, text=True, check=True)
    found = Path(done.stdout.strip()).resolve()
    if not found.is_relative_to(Path(package_root).resolve()):
        raise SystemExit(f"a timed process would import prefroute from {found}, "
                         f"not from {package_root}")


def rate_interval(runs: list, n: int, draws: int = 2000) -> list[float]:
    """95% bootstrap interval of (n - 1) / (median wall(n) - median wall(1)) over repeats."""
    rng = np.random.default_rng(0)
    one = np.array([r[0][0] for r in runs])
    full = np.array([r[1][0] for r in runs])
    gaps = []
    for _ in range(draws):
        i = rng.integers(len(runs), size=len(runs))
        gaps.append(np.median(full[i]) - np.median(one[i]))
    # percentiles of the gap, then rates: a gap <= 0 (start-up noise above the work) is an
    # unbounded rate, written inf, where percentiles of rates would give nan
    low_gap, high_gap = np.percentile(gaps, [2.5, 97.5])
    return [(n - 1) / high_gap if high_gap > 0 else np.inf,
            (n - 1) / low_gap if low_gap > 0 else np.inf]


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and every child it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak memory in MB of the command and its children, sampled every 50 ms; wall s).

    Memory is PSS (proportional set size): forked workers share the parent's pages, which
    plain RSS would count once per process.
    """
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            family = [proc, *proc.children(True)]
            peak = max(peak, sum(p.memory_full_info().pss for p in family))
        except psutil.Error:
            pass
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return peak / 1e6, time.perf_counter() - start


LIBRARY_SCRIPT = """
import sys, time, orjson
from prefroute.router import load_router
router = load_router(sys.argv[1])
prompts = [orjson.loads(x)["prompt"] for x in open(sys.argv[2], "rb")]
router.predictor.predict_proba(["Route this prompt.", "And this one, please."])
start = time.perf_counter()
router.predictor.predict_proba(prompts, batch_size=int(sys.argv[3]))
print(time.perf_counter() - start)
"""


PIPELINE_SCRIPT = """
import sys, time
from prefroute.router import load_router
from prefroute.scoring import score_file
router = load_router(sys.argv[1])
threads = None if sys.argv[4] == "default" else int(sys.argv[4])
start = time.perf_counter()
score_file(router, sys.argv[2], sys.argv[3], threads=threads, overwrite=True, progress=False)
print(time.perf_counter() - start)
"""


def pipeline(args, ckpts, previous_tree, files, n) -> dict:
    """What the CLI does after loading the checkpoint (``score_file`` with the CLI's defaults:
    read, warm-up, score, write), timed inside a fresh process: the 20,000-minus-1 protocol
    without the ±0.5 s of start-up noise it subtracts. The ``--previous`` commit runs
    interleaved with this tree, so the ratio between them is a side-by-side figure."""
    trees = {"after": process_env(ROOT), f"previous ({args.previous})": process_env(previous_tree)}
    results: dict = {}
    for name in args.routers.split(","):
        if name == "random":
            continue
        runs: dict[str, list[float]] = {
            f"{tree}, threads={threads}": [] for tree in trees for threads in ("default", "1")}
        for _ in range(args.repeats):
            for key in runs:
                tree, threads = key.split(", threads=")
                done = subprocess.run(
                    [sys.executable, "-c", PIPELINE_SCRIPT, str(ckpts[name]), str(files[n]),
                     str(args.out / "pipeline_scores.jsonl"), threads],
                    env=trees[tree], capture_output=True, text=True, check=True)
                runs[key].append(float(done.stdout.strip().splitlines()[-1]))
        results[name] = {
            key: {"median_s": statistics.median(v), "rate": n / statistics.median(v),
                  "rate_range": [n / max(v), n / min(v)], "runs": v}
            for key, v in runs.items()}
        print(name, {k: round(r["rate"]) for k, r in results[name].items()})
    return results


def library_seconds(ckpt: Path, prompts: Path, env: dict[str, str], batch: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_SCRIPT, str(ckpt), str(prompts), str(batch)],
        env=env, capture_output=True, text=True, check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def throughput(args, ckpts, before_tree, previous_tree, files, n) -> dict:
    env_after = process_env(ROOT)
    env_before = process_env(before_tree)
    env_previous = process_env(previous_tree)
    cli = [sys.executable, "-m", "prefroute.cli.main", "score"]
    variants = {
        "before: CLI (batch 1,024, json, torch pooling)": (env_before, []),
        "previous: CLI, default options (one thread)": (env_previous, ["--overwrite"]),
        "after: CLI, default options": (env_after, ["--overwrite"]),
        "after: CLI, --threads 1": (env_after, ["--overwrite", "--threads", "1"]),
    }
    results: dict = {}
    for name, ckpt in ((r, ckpts[r]) for r in args.routers.split(",")):
        samples: dict[str, list] = {v: [] for v in variants}
        samples["library in-process, 1 process (4,096 per call)"] = []
        for env, extra in variants.values():  # untimed: writes each tree's bytecode cache
            out = args.out / "scores.jsonl"
            out.unlink(missing_ok=True)
            run_timed([*cli, str(ckpt), "--prompts", str(files[1]), "--out", str(out), *extra],
                      env)
            out.unlink(missing_ok=True)
        for _ in range(args.repeats):  # interleaved, so load changes hit every method alike
            for variant, (env, extra) in variants.items():
                out = args.out / "scores.jsonl"
                out.unlink(missing_ok=True)
                one = run_timed([*cli, str(ckpt), "--prompts", str(files[1]), "--out", str(out),
                                 *extra], env)
                out.unlink(missing_ok=True)
                full = run_timed([*cli, str(ckpt), "--prompts", str(files[n]), "--out", str(out),
                                  *extra], env)
                samples[variant].append((one, full))
            seconds = library_seconds(ckpt, files[n], env_after, 4096)
            samples["library in-process, 1 process (4,096 per call)"].append(seconds)
        results[name] = {}
        for variant, runs in samples.items():
            if variant.startswith("library"):
                results[name][variant] = {"rate_wall": n / statistics.median(runs),
                                          "rate_cpu": None, "runs": runs}
                continue
            # medians of each run length first: one slow start-up then moves one median a
            # little instead of making one rate negative
            one_wall = statistics.median(r[0][0] for r in runs)
            full_wall = statistics.median(r[1][0] for r in runs)
            one_cpu = statistics.median(r[0][1] for r in runs)
            full_cpu = statistics.median(r[1][1] for r in runs)
            results[name][variant] = {
                "rate_wall": (n - 1) / (full_wall - one_wall),
                "rate_wall_ci95": rate_interval(runs, n),
                "rate_cpu": (n - 1) / max(full_cpu - one_cpu, 1e-9),
                "median_wall_1": one_wall, "median_wall_n": full_wall, "runs": runs,
            }
        print(name, json.dumps({v: [round(r["rate_wall"]), r.get("rate_wall_ci95")]
                                for v, r in results[name].items()}))
    return results


def profile_top(cmd_module_args: list[str], env_path: Path, top: int) -> str:
    """cProfile of one CLI run in this process, the top entries by own time."""
    code = (
        "import cProfile, pstats, sys; sys.argv = ['prefroute'] + sys.argv[1:]; "
        f"sys.path.insert(0, {str(env_path)!r}); "
        "from prefroute.cli.main import app; pr = cProfile.Profile(); pr.enable()\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "pr.disable(); pstats.Stats(pr).sort_stats('tottime').print_stats(%d)" % top
    )
    done = subprocess.run([sys.executable, "-c", code, *cmd_module_args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(env_path)})
    text = done.stdout
    return text[text.find("   ncalls"):] if "   ncalls" in text else text + done.stderr[-2000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "score")
    parser.add_argument("--parts", default="throughput,profile,workers,ray,rss")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--routers", default="sw_bt,mf,random",
                        help="checkpoints timed by the throughput and pipeline parts")
    parser.add_argument("--rss-sizes", default="100000,500000,1000000,2000000")
    parser.add_argument("--rss-before-sizes", default="100000,200000")
    parser.add_argument("--rss-router", default="mf", help="sw_bt, mf or random")
    parser.add_argument("--rss-earlier", type=Path,
                        help="JSON report of an earlier rss run to draw beside this one")
    parser.add_argument("--scale-n", type=int, default=200_000, help="rows for workers / Ray")
    parser.add_argument("--before", default=BEFORE_COMMIT)
    parser.add_argument("--previous", default=PREVIOUS_COMMIT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    report: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    ckpts = ensure_checkpoints(args.out, args.data_dir)
    before_tree = unpack_before(args.out, args.before)
    previous_tree = unpack_before(args.out, args.previous)
    prompts = mmlu_pro_prompts(args.data_dir, args.n)
    files = {1: write_jsonl(args.out / "p1.jsonl", prompts[:1]),
             args.n: write_jsonl(args.out / f"p{args.n}.jsonl", prompts)}
    env_after = process_env(ROOT)
    cli = [sys.executable, "-m", "prefroute.cli.main", "score"]

    if "throughput" in parts:
        report["throughput"] = throughput(args, ckpts, before_tree, previous_tree, files, args.n)
    if "pipeline" in parts:
        report["pipeline"] = pipeline(args, ckpts, previous_tree, files, args.n)
    if "profile" in parts:
        out = args.out / "profile_scores.jsonl"
        common = [str(ckpts["sw_bt"]), "--prompts", str(files[args.n]), "--out", str(out)]
        out.unlink(missing_ok=True)
        report["profile_before"] = profile_top(["score", *common], before_tree, 15)
        out.unlink(missing_ok=True)
        report["profile_after"] = profile_top(["score", *common, "--threads", "1"], ROOT, 15)
        for key in ("profile_before", "profile_after"):
            (args.out / f"{key}.txt").write_text(report[key])
            print(key, report[key][:2500], sep="\n")

    base = mmlu_pro_prompts(args.data_dir, 9_000)
    if "workers" in parts or "ray" in parts:
        scale = args.out / f"scale_{args.scale_n}.parquet"
        pq.write_table(cycled_table(base, args.scale_n), scale, row_group_size=65_536)
        scale_runs: dict = {}
        for label, extra in (("--workers 1 --threads 1", ["--workers", "1", "--threads", "1"]),
                             ("--workers 2 (processes)", ["--workers", "2"]),
                             ("default (2 threads)", [])):
            if "workers" not in parts:
                continue
            for name in ("sw_bt", "mf"):
                out = args.out / "scale_scores.parquet"
                wall, cpu = run_timed([*cli, str(ckpts[name]), "--prompts", str(scale), "--out",
                                       str(out), "--id-field", "id", "--overwrite", *extra],
                                      env_after)
                scale_runs[f"{name} {label}"] = {"wall": wall, "cpu": cpu,
                                                 "rate": args.scale_n / wall}
                print(name, label, round(wall, 1), "s")
        if "ray" in parts:
            for name in ("mf",):  # the plain command right before Ray, for a fair pair
                wall, cpu = run_timed([*cli, str(ckpts[name]), "--prompts", str(scale), "--out",
                                       str(args.out / "scale_scores.parquet"), "--id-field", "id",
                                       "--overwrite"], env_after)
                scale_runs[f"{name} plain CLI, default options (next to Ray)"] = {
                    "wall": wall, "cpu": cpu, "rate": args.scale_n / wall}
                print(name, "plain next to ray", round(wall, 1), "s")
                out = args.out / "scale_ray"
                wall, cpu = run_timed([*cli, str(ckpts[name]), "--prompts", str(scale), "--out",
                                       str(out), "--id-field", "id", "--overwrite",
                                       "--engine", "ray"], env_after)
                scale_runs[f"{name} --engine ray (local cluster, started by the command)"] = {
                    "wall": wall, "cpu": cpu, "rate": args.scale_n / wall}
                print(name, "ray", round(wall, 1), "s")
        report["scale"] = scale_runs

    if "rss" in parts:
        rss: dict = {"after": {}, "before": {}}
        for size in [int(s) for s in args.rss_sizes.split(",") if s]:
            source = args.out / f"rss_{size}.parquet"
            pq.write_table(cycled_table(base, size), source, row_group_size=65_536)
            out = args.out / "rss_scores.parquet"
            mb, wall = peak_rss([*cli, str(ckpts[args.rss_router]), "--prompts", str(source),
                                 "--out", str(out), "--id-field", "id", "--overwrite"], env_after)
            rss["after"][size] = {"peak_mb": mb, "wall": wall,
                                  "input_mb": source.stat().st_size / 1e6}
            source.unlink()
            print("rss after", size, round(mb), "MB", round(wall), "s")
        for size in [int(s) for s in args.rss_before_sizes.split(",") if s]:
            source = args.out / f"rss_{size}.jsonl"
            table = cycled_table(base, size)
            write_jsonl(source, table.column("prompt").to_pylist())
            out = args.out / "rss_scores.jsonl"
            out.unlink(missing_ok=True)
            env_before = process_env(before_tree)
            mb, wall = peak_rss([*cli, str(ckpts[args.rss_router]), "--prompts", str(source),
                                 "--out", str(out)], env_before)
            rss["before"][size] = {"peak_mb": mb, "wall": wall,
                                   "input_mb": source.stat().st_size / 1e6}
            source.unlink()
            print("rss before", size, round(mb), "MB", round(wall), "s")
        report["rss"] = rss
        if args.rss_earlier:  # a saved report of an earlier run, drawn beside this one
            earlier = json.loads(args.rss_earlier.read_text())["rss"]
            rss = {**rss, "earlier": earlier["after"],
                   "before": rss["before"] or earlier["before"]}
        plot_rss(rss, args.out / f"score_rss_{args.rss_router}.png", args.rss_router)

    report["load_after"] = os.getloadavg()
    name = f"score_bench_{'_'.join(sorted(parts))}_{args.rss_router}.json"
    (args.out / name).write_text(json.dumps(report, indent=1, default=str))
    print("load average before/after:", report["load_before"], report["load_after"])


def plot_rss(rss: dict, path: Path, router: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, colour, marker in (
        ("after", "prefroute score now (streamed Parquet, 2 processes)", "tab:blue", "o"),
        ("earlier", "first streaming version (pre-buffered reader, 2M-segment cache)",
         "tab:orange", "^"),
        ("before", "prefroute score before (whole file in memory)", "tab:red", "s"),
    ):
        points = sorted((int(k), v["peak_mb"]) for k, v in rss.get(key, {}).items())
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=marker, color=colour, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("prompts in the input file (MMLU-Pro questions, ~500 characters)")
    ax.set_ylabel("peak memory (PSS), MB, all processes")
    ax.set_title(f"Memory of `prefroute score` ({router} router) against input size")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
