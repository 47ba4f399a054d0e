"""Neural routers within a laptop's memory: peak RSS and time per step, before and after.

Trains bert and causal_llm through the CLI, exactly as a user would, on MMLU-Pro golden
battles (gpt-4o-2024-05-13 vs Mixtral-8x7B-Instruct-v0.1) from the training 80% of a seeded
80/20 question split, at 600 and 4,000 battles. Each run is a child process under
``/usr/bin/time -v`` (peak RSS) and ``prlimit --as`` (a cap, so a run that would take the whole
machine fails instead of stalling it). "before" runs the code of ``--before`` (a checkout of an
earlier commit), "after" this checkout. Runs marked with a step cap measure time per step and
the peak over those steps only.

Then the routers trained at defaults on 600 battles are scored on a seeded sample of the
held-out 20% beside kNN (same 600 battles), prompt length and random, with 95% CIs.

    python benchmarks/bench_neural_memory.py --before /tmp/prefroute-before
    python benchmarks/bench_neural_memory.py --report     # tables from the cached runs
    python benchmarks/bench_neural_memory.py --score-mmlu after-bert-600,after-causal_llm-600
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
STRONG, WEAK = "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"
SIZES = (600, 4000)
GIB = 2**30
# step-capped runs measure training steps only: no validation pass at the end
CAPPED = ["--params", '{"val_fraction": 0}', "--max-steps"]
# (name, code, router, battles, extra CLI args, address-space cap in GiB)
RUNS = [
    ("before-bert-600", "before", "bert", 600, [*CAPPED, "5"], 12),
    ("after-bert-600", "after", "bert", 600, [], 12),
    ("before-causal_llm-600", "before", "causal_llm", 600, [*CAPPED, "3"], 8),
    ("after-causal_llm-600", "after", "causal_llm", 600, [], 12),
    ("before-bert-4000", "before", "bert", 4000, [*CAPPED, "5"], 12),
    ("after-bert-4000", "after", "bert", 4000, [*CAPPED, "5"], 12),
    ("before-causal_llm-4000", "before", "causal_llm", 4000, [*CAPPED, "3"], 8),
    ("after-causal_llm-4000", "after", "causal_llm", 4000, [*CAPPED, "3"], 12),
]


def split_questions(table, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    cut = int(0.8 * len(table))
    return np.sort(order[:cut]), np.sort(order[cut:])


def write_battles(data_dir: Path, out: Path) -> dict[int, Path]:
    from prefroute.data.loaders import golden_battles
    from prefroute.data.outcomes import load_outcomes

    table = load_outcomes("mmlu_pro", data_dir)
    train_rows, _ = split_questions(table)
    battles = golden_battles(table.subset(train_rows), STRONG, WEAK)
    rng = np.random.default_rng(0)
    paths = {}
    for n in SIZES:
        take = np.sort(rng.choice(len(battles), size=n, replace=False))
        path = out / f"battles_{n}.jsonl"
        battles.take(take).to_jsonl(path)
        paths[n] = path
    return paths


def run_training(name: str, code: Path, router: str, data: Path, extra: list[str], cap_gib: int,
                 out: Path) -> dict:
    ckpt = out / "ckpt" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["/usr/bin/time", "-v", "prlimit", f"--as={cap_gib * GIB}", sys.executable, "-m",
           "prefroute.cli.main", "train", "--router", router, "--data", str(data),
           "--strong-model", STRONG, "--weak-model", WEAK, "--out", str(ckpt), *extra]
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.time()
    # -m puts the working folder first on sys.path: run from the code under test
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    wall = time.time() - start
    log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = {"name": name, "router": router, "rc": proc.returncode, "wall_s": round(wall, 1),
              "peak_rss_gib": round(int(peak_kb.group(1)) / 2**20, 2) if peak_kb else None,
              "cap_gib": cap_gib, "args": extra}
    config = ckpt / "config.json"
    if proc.returncode == 0 and config.is_file():
        training = json.loads(config.read_text())["state"]["training"]
        steps = len(training.get("step", []))
        result.update(steps=steps, train_s=training.get("seconds"),
                      s_per_step=round(training["seconds"] / max(steps, 1), 1),
                      memory_plan=training.get("memory_plan"),
                      train_last_layers=training.get("train_last_layers"))
    else:
        # the last error line of the run itself (/usr/bin/time's report lines are indented)
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if "error" in ln.lower() and not ln.startswith(("\t", " "))]
        result["failure"] = tail[-1][:200] if tail else f"exit {proc.returncode}"
    return result


def score_mmlu(name: str, data_dir: Path, out: Path, limit: int | None) -> dict:
    """``prefroute score`` of every MMLU prompt (14k) with checkpoint ``name``: peak RSS, wall,
    and whether the progress bar was shown."""
    from prefroute.data.outcomes import load_outcomes

    prompts = out / "mmlu_prompts.jsonl"
    if not prompts.is_file():
        rows = load_outcomes("mmlu", data_dir).prompts
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    scores = out / "scores" / f"{name}.parquet"
    scores.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "prefroute.cli.main", "score",
           str(out / "ckpt" / name), "--prompts", str(prompts), "--out", str(scores),
           "--overwrite", *(["--limit", str(limit)] if limit else [])]
    start = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, cwd=ROOT)
    wall = time.time() - start
    (out / "logs" / f"score-{name}.log").write_text(" ".join(cmd) + "\n\n" + proc.stderr)
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    n = sum(1 for _ in prompts.open()) if not limit else limit
    return {"name": name, "rc": proc.returncode, "prompts": n, "wall_s": round(wall, 1),
            "prompts_per_s": round(n / wall, 1),
            "peak_rss_gib": round(int(peak_kb.group(1)) / 2**20, 2) if peak_kb else None,
            "progress_bar_shown": "scoring" in proc.stderr and "prompt/s" in proc.stderr}


def evaluate(data_dir: Path, out: Path, n_eval: int) -> list[dict]:
    from prefroute.data.battles import Battles
    from prefroute.data.outcomes import load_outcomes
    from prefroute.evaluate.baselines import knn_probs, prompt_length_probs, strong_win_labels
    from prefroute.evaluate.benchmarks import evaluate_router, format_apgr
    from prefroute.router import load_router

    table = load_outcomes("mmlu_pro", data_dir)
    _, test_rows = split_questions(table)
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(test_rows, size=min(n_eval, len(test_rows)), replace=False))
    test = table.subset(sample)
    train = Battles.read_jsonl(out / "battles_600.jsonl")
    prompts, labels = strong_win_labels(train, STRONG, WEAK)
    scorers = {
        "kNN (k=50, same 600 battles)": lambda p: knn_probs(prompts, labels, p, k=50),
        "prompt length": prompt_length_probs,
    }
    for router in ("bert", "causal_llm"):
        ckpt = out / "ckpt" / f"after-{router}-600"
        if (ckpt / "config.json").is_file():
            scorers[f"{router} (defaults, 600 battles)"] = load_router(ckpt).strong_win_prob
    rows = []
    for name, fn in scorers.items():
        result = evaluate_router(fn, test, strong_model=STRONG, weak_model=WEAK, name=name,
                                 decontaminate=False, exclude_routellm_contaminated=False)
        rows.append({"name": name, "apgr": format_apgr(result.router),
                     "random": format_apgr(result.random), "oracle": format_apgr(result.oracle),
                     "n": result.n_prompts})
    return rows


def report(out: Path) -> str:
    runs = json.loads((out / "runs.json").read_text()) if (out / "runs.json").is_file() else {}
    lines = ["| run | exit | peak RSS (GiB) | steps | s / step | wall (s) | notes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, _, _, _, _, _ in RUNS:
        r = runs.get(name)
        if r is None:
            continue
        note = r.get("failure") or r.get("memory_plan") or ""
        if r.get("args"):
            note = f"{' '.join(r['args'])}; {note}"
        lines.append(f"| {name} | {r['rc']} | {r['peak_rss_gib']} | {r.get('steps', '')} | "
                     f"{r.get('s_per_step', '')} | {r['wall_s']} | {note} |")
    quality = out / "quality.json"
    if quality.is_file():
        q = json.loads(quality.read_text())
        lines += ["", f"APGR on {q[0]['n']} held-out MMLU-Pro questions (95% CI):", "",
                  "| router | APGR |", "|---|---|"]
        lines += [f"| {r['name']} | {r['apgr']} |" for r in q]
        lines += [f"| random | {q[0]['random']} |", f"| oracle | {q[0]['oracle']} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/out/neural_memory")
    parser.add_argument("--before", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--runs", default="all", help="comma-separated run names, or 'all'")
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--report", action="store_true", help="only print the cached tables")
    parser.add_argument("--score-mmlu", default="",
                        help="comma-separated trained runs to score all MMLU prompts with")
    parser.add_argument("--score-limit", type=int, help="score only the first N MMLU prompts")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.score_mmlu:
        cache = out / "scoring.json"
        done = json.loads(cache.read_text()) if cache.is_file() else {}
        for name in args.score_mmlu.split(","):
            print(f"scoring MMLU with {name} ...", flush=True)
            done[name] = score_mmlu(name, args.data_dir, out, args.score_limit)
            print(json.dumps(done[name]), flush=True)
            cache.write_text(json.dumps(done, indent=1))
        return
    if not args.report:
        paths = write_battles(args.data_dir, out)
        cache = out / "runs.json"
        runs = json.loads(cache.read_text()) if cache.is_file() else {}
        wanted = None if args.runs == "all" else set(args.runs.split(","))
        for name, code, router, n, extra, cap in RUNS:
            skip_before = code == "before" and not args.before
            if (wanted is not None and name not in wanted) or skip_before:
                continue
            root = args.before if code == "before" else ROOT
            print(f"running {name} ...", flush=True)
            runs[name] = run_training(name, root, router, paths[n], extra, cap, out)
            print(json.dumps(runs[name]), flush=True)
            cache.write_text(json.dumps(runs, indent=1))
        if not args.skip_eval:
            (out / "quality.json").write_text(json.dumps(evaluate(args.data_dir, out,
                                                                  args.n_eval), indent=1))
    print(f"load average {os.getloadavg()}")
    print(report(out))


if __name__ == "__main__":
    main()
