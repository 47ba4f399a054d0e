"""The README's quick start and its CLI examples, run verbatim in a fresh copy of the repo.

The copy holds only git-tracked files (as a fresh clone would) beside a ``shared/data`` link to
the reference data, so the README's ``../shared/data`` paths resolve as they do for a user.
``prefroute`` is this checkout's CLI. ``prefroute serve`` runs until it answers ``/health``
(with ``--port`` added, since tests never take a fixed port). The two set-up commands are
covered elsewhere: ``make run``'s job is ``benchmarks/run_all``'s last step and ``make test``
is what CI runs; here the test checks they still name those jobs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands(block: str) -> list[str]:
    """Commands of a bash block, with backslash continuations joined and comments dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory, data_dir) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("clone")
    repo = root / "prefroute"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        source = REPO_ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    shutil.copy2(README, repo / "README.md")  # the README under test, committed or not
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data_dir, target_is_directory=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "prefroute"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m prefroute.cli.main "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    env.pop("OPENAI_API_KEY", None)
    return repo, env


def test_the_two_commands_still_name_the_main_job_and_the_suite():
    blocks = code_blocks(README.read_text(), "bash")
    assert shell_commands(blocks[0]) == [
        "make run    # installs into .venv (CPU torch first), then trains, calibrates and "
        "evaluates (the main job)",
        "make test   # runs the test suite (installs first if needed)",
    ]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "prefroute benchmark --data-dir $(DATA_DIR) --out $(OUT)" in makefile
    assert "-m pytest" in makefile
    run_all = (REPO_ROOT / "benchmarks" / "run_all").read_text()
    assert "prefroute.cli.main benchmark" in run_all


@pytest.mark.slow
def test_quick_start_and_every_cli_example_run_verbatim(fresh_copy):
    repo, env = fresh_copy
    text = (repo / "README.md").read_text()
    # the quick start section (with its LiteLLM and sharing subsections)
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [
        c
        for block in code_blocks(quick_start, "bash")
        for c in shell_commands(block)
        if " ... " not in f"{c} "  # a sketch with elided options, not a runnable example
    ]
    assert any(c.startswith("prefroute train") for c in commands)
    ran = []
    for command in commands:
        if command.startswith("prefroute serve"):
            port = free_port()
            server = subprocess.Popen(
                f"exec {command} --port {port}", shell=True, cwd=repo, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 180
                while True:
                    assert server.poll() is None, server.stdout.read()
                    try:
                        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, "serve did not come up"
                        time.sleep(0.5)
                assert health.json()["routers"] == ["sw_bt"]
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
                assert "router-sw_bt@30" in [m["id"] for m in models["data"]]
            finally:
                with contextlib.suppress(ProcessLookupError):  # it may have exited already
                    os.killpg(server.pid, signal.SIGTERM)  # the shell, the shim and the server
                server.wait(timeout=30)
        else:
            result = subprocess.run(
                command, shell=True, cwd=repo, env=env, capture_output=True, text=True,
                timeout=900,
            )  # fmt: skip
            assert result.returncode == 0, (
                f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
        ran.append(command.split()[:2])
    assert (repo / "runs" / "sw_bt" / "README.md").exists()
    assert (repo / "runs" / "scores.jsonl").read_text().count("\n") == 2
    assert (repo / "runs" / "mt-bench.png").stat().st_size > 10_000
    # nothing is written outside runs/ (the repository root stays as cloned)
    untracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    extra = {p.name for p in repo.iterdir()} - {Path(n).parts[0] for n in untracked if n} - {"runs"}
    assert not extra, f"README examples wrote outside runs/: {extra}"

    # then the Python blocks: the quick start, and the LiteLLM snippets (which use runs/sw_bt)
    for block in code_blocks(quick_start, "python"):
        result = subprocess.run(
            [sys.executable, "-c", block], cwd=repo, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
    assert (repo / "runs" / "mf" / "README.md").exists()


def test_every_benchmark_script_starts():
    """`benchmarks/run_all --help-check`: each bench_*.py imports what it uses and parses
    --help (a benchmark broken by a moved class fails here, not months later)."""
    done = subprocess.run(
        [str(REPO_ROOT / "benchmarks" / "run_all"), "--help-check"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scripts = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("bench_*.py"))
    assert all(f"ok: {name} --help" in done.stdout for name in scripts), done.stdout[-2000:]
