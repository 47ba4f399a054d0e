"""Neural routers train within a memory budget: micro-batches, bucketing, fail-fast budgets.

The end-to-end cases train through the CLI in a child process under ``/usr/bin/time -v`` and
assert its peak RSS, on real MMLU-Pro questions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefroute.data.battles import Battles
from prefroute.data.outcomes import load_outcomes
from prefroute.routers.memory_plan import MemoryPlan, micro_batches
from prefroute.routers.neural_common import LengthBucketedBatchSampler, cut_middle

REPO = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"
GIB = 2**30


@pytest.fixture(scope="module")
def mmlu_pro(data_dir):
    return load_outcomes("mmlu_pro", data_dir)


def _plan(budget_gib: float) -> MemoryPlan:
    return MemoryPlan(int(budget_gib * GIB), int(1.5 * GIB), False, 4, 576 + 1536, 9)


def test_micro_batches_fit_the_plan_and_hold_every_row_once(mmlu_pro):
    lengths = [len(p) // 4 + 1 for p in mmlu_pro.prompts[:64]]  # real prompt sizes in tokens
    plan = _plan(2.0)
    groups = micro_batches(lengths, plan)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) == 1 or plan.bytes_for(len(g), longest) <= plan.budget_bytes
    assert len(groups) > 1  # the budget really cuts this batch
    # a generous budget keeps the batch whole
    assert len(micro_batches(lengths, _plan(200.0))) == 1


def test_bucketed_batches_are_deterministic_complete_and_pad_less(mmlu_pro):
    lengths = [len(p) for p in mmlu_pro.prompts[:2000]]
    first = list(LengthBucketedBatchSampler(lengths, 16, shuffle=True, seed=3))
    again = list(LengthBucketedBatchSampler(lengths, 16, shuffle=True, seed=3))
    assert first == again
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))
    sampler = LengthBucketedBatchSampler(lengths, 16, shuffle=True, seed=3)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert epoch1 != epoch2  # a new order every epoch

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    rng = np.random.default_rng(0)
    order = rng.permutation(len(lengths))
    random_batches = [order[i : i + 16].tolist() for i in range(0, len(order), 16)]
    assert padded(first) < 0.7 * padded(random_batches)


def test_cut_middle_keeps_both_ends():
    ids = list(range(100))
    assert cut_middle(ids, 200) == ids
    kept = cut_middle(ids, 10)
    assert kept == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]


def _battles_file(table, path: Path, n: int, *, min_chars: int = 0) -> Path:
    """``n`` real golden battles; with ``min_chars``, each prompt is real questions joined."""
    from prefroute.data.loaders import golden_battles

    battles = golden_battles(table.subset(np.arange(4 * n)), STRONG, WEAK).take(np.arange(n))
    if min_chars:
        prompts = table.prompts
        long = []
        for i in range(n):
            parts, j = [], i
            while sum(len(p) for p in parts) < min_chars:
                parts.append(prompts[j % len(prompts)])
                j += 97
            long.append("\n\n".join(parts))
        battles = Battles.from_columns(long, battles.column("model_a"), battles.column("model_b"),
                                       battles.column("winner"), source=["golden:mmlu_pro"] * n)
    battles.to_jsonl(path)
    return path


def _train(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float | None]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "prefroute.cli.main", "train", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=1500)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return proc, int(peak.group(1)) * 1024 / GIB if peak else None


def test_a_budget_that_cannot_hold_one_step_fails_before_training(mmlu_pro, tmp_path):
    data = _battles_file(mmlu_pro, tmp_path / "battles.jsonl", 40)
    out = tmp_path / "bert"
    proc, _ = _train(["--router", "bert", "--data", str(data), "--strong-model", STRONG,
                      "--weak-model", WEAK, "--out", str(out), "--max-memory-gb", "0.3"],
                     tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--max-memory-gb 0.3 cannot hold one training step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_causal_llm_on_20k_character_prompts_stays_within_its_budget(mmlu_pro, tmp_path):
    data = _battles_file(mmlu_pro, tmp_path / "long.jsonl", 64, min_chars=20_000)
    lengths = [len(json.loads(line)["prompt"]) for line in data.read_text().splitlines()]
    assert min(lengths) >= 20_000 and len(lengths) == 64
    out = tmp_path / "cllm"
    budget = 3.0
    proc, peak = _train(["--router", "causal_llm", "--data", str(data), "--strong-model", STRONG,
                         "--weak-model", WEAK, "--out", str(out), "--max-steps", "2",
                         "--batch-size", "16", "--max-memory-gb", str(budget),
                         "--params", '{"torch_threads": 1, "val_fraction": 0.05}'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert peak is not None and peak < budget, f"peak RSS {peak:.2f} GiB"
    training = json.loads((out / "config.json").read_text())["state"]["training"]
    assert "memory budget 3.0 GiB" in training["memory_plan"]
    assert len(training["step"]) == 2 and np.isfinite(training["train_loss"]).all()


def test_a_cpu_token_cap_bounds_micro_batches_below_the_budget(mmlu_pro):
    lengths = [len(p) // 4 + 1 for p in mmlu_pro.prompts[:64]]
    capped = MemoryPlan(200 * GIB, int(1.5 * GIB), False, 4, 576 + 1536, 9, max_tokens=1024)
    groups = micro_batches(lengths, capped)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) == 1 or len(g) * longest <= 1024
    assert len(groups) > 1


TRIM_SCRIPT = """
import psutil, torch
from prefroute._torch_util import release_freed_memory
process = psutil.Process()
big = torch.ones(8_000_000)  # 32 MB, mmapped: freeing it raises glibc's mmap threshold
del big
chunks, keep = [], []
for i in range(100):
    chunks.append(torch.ones(1_000_000 + 1000 * i))  # ~4 MB each, now from the heap
    keep.append(torch.ones(1000))  # small live blocks between them pin the heap
del chunks
before = process.memory_info().rss
release_freed_memory()
print(before, process.memory_info().rss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_tensor_memory_goes_back_to_the_os():
    """Scoring calls this between forward passes: without it glibc kept ~0.25 GB per 1,024
    bert-scored MMLU prompts of freed tensors (variable shapes fragment the heap)."""
    done = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True,
                          cwd=REPO, check=True)
    before, after = (int(x) for x in done.stdout.split())
    assert before - after > 250e6, (before, after)  # ~400 MB of freed 4 MB tensors
