"""The traps a new user met in the first week (issue #16), each pinned by a test.

Routers are small mf routers trained on the real AlpacaEval battles; commands run through the
real CLI (in-process with typer's runner, or as subprocesses where start-up is the point).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prefroute.cli.main import app
from prefroute.errors import CheckpointError, ConfigError
from prefroute.router import Router, load_router, make_router
from prefroute.serve.errors import InvalidRequestError
from prefroute.serve.routing import RouterTable, parse_model_name
from prefroute.serve.settings import UpstreamSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
HEAVY_MODULES = ("torch", "pandas", "pyarrow", "openai", "litellm", "fastapi", "transformers")


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300
    )


@pytest.fixture(scope="module")
def prompts(alpaca_battles) -> list[str]:
    return sorted(set(alpaca_battles.prompts))


@pytest.fixture(scope="module")
def mf_dir(tmp_path_factory, alpaca_battles, prompts) -> Path:
    """A small mf router calibrated to 30% strong calls on the even-numbered prompts."""
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, dim=32, epochs=3, progress=False
    )
    predictor.fit(alpaca_battles)
    router = Router(predictor, training={"sources": ["alpaca_eval"], "n_battles": 36700})
    router.calibrate(prompts[::2], strong_rate=0.3)
    directory = tmp_path_factory.mktemp("ckpt") / "mf"
    router.save_pretrained(directory)
    return directory


def table_for(directory: Path) -> RouterTable:
    upstream = UpstreamSettings(base_url="http://127.0.0.1:9/v1")
    return RouterTable({"mf": load_router(directory)}, upstream, upstream)


# 1. thresholds by rate -----------------------------------------------------------------
def test_rate_named_model_routes_about_30_percent_strong(mf_dir, prompts):
    table = table_for(mf_dir)
    router = table.routers["mf"]
    held_out = prompts[1::2]  # not used for calibration
    probs = router.strong_win_prob(held_out)
    for percent in (10, 30, 70):
        resolved = table.resolve(f"router-mf@{percent}")
        sides = [table.decide(resolved, p).side for p in probs]
        rate = sides.count("strong") / len(sides)
        # 322 held-out prompts from the calibration prompts' distribution
        assert abs(rate - percent / 100) < 0.08, (percent, rate)
    # on the calibration prompts themselves the rate is exact to the prompt
    calibration_probs = router.strong_win_prob(prompts[::2])
    resolved = table.resolve("router-mf@30")
    assert np.mean(calibration_probs >= resolved.threshold) == pytest.approx(0.3, abs=1 / 322)
    # the rate names are listed beside the calibrated and explicit ones
    ids = [card["id"] for card in table.model_cards(0)]
    assert "router-mf@30" in ids and "router-mf@90" in ids
    card = next(c for c in table.model_cards(0) if c["id"] == "router-mf@30")
    assert card["threshold"] == pytest.approx(resolved.threshold) and card["strong_rate"] == 0.3


def test_threshold_spellings_parse():
    names = {"mf", "my-router", "sw_bt"}
    assert parse_model_name("router-mf", names).kind == "calibrated"
    for text, value in [("1e-3", 0.001), (".5", 0.5), ("1", 1.0), ("0", 0.0), ("2.5E-1", 0.25)]:
        parsed = parse_model_name(f"router-mf-{text}", names)
        assert (parsed.router_name, parsed.kind, parsed.value) == ("mf", "threshold", value)
    parsed = parse_model_name("router-my-router-0.3", names)
    assert (parsed.router_name, parsed.value) == ("my-router", 0.3)
    parsed = parse_model_name("router-sw_bt@12.5", names)
    assert (parsed.router_name, parsed.kind, parsed.value) == ("sw_bt", "rate", 12.5)
    assert parse_model_name("router-nope-0.5", names) is None
    assert parse_model_name("gpt-4", names) is None
    for bad, code in [
        ("router-mf-1e5", "invalid_threshold"),
        ("router-mf--0.1", "invalid_threshold"),
        ("router-mf-nan", "invalid_threshold"),
        ("router-mf@101", "invalid_rate"),
        ("router-mf@thirty", "invalid_rate"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            parse_model_name(bad, names)
        assert info.value.code == code, bad


def test_threshold_outside_calibration_range_warns_once(mf_dir, caplog):
    table = table_for(mf_dir)
    low, high = table.routers["mf"].calibration["score_range"]
    above = min(1.0, high + (1 - high) / 2)
    inside = (low + high) / 2
    with caplog.at_level(logging.WARNING, logger="prefroute"):
        table.resolve(f"router-mf-{inside!r}")
        assert not [r for r in caplog.records if "outside" in r.message]
        table.resolve(f"router-mf-{above!r}")
        table.resolve(f"router-mf-{above!r}")
    warnings = [r.message for r in caplog.records if "outside the calibration" in r.message]
    assert len(warnings) == 1
    assert "to the weak model" in warnings[0] and "router-mf@30" in warnings[0]


def test_rate_name_needs_a_stored_rate_table(mf_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(mf_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["router"]["calibration"]["rate_thresholds"]  # as calibrated before this release
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequestError, match="prefroute calibrate") as info:
        table_for(old).resolve("router-mf@30")
    assert info.value.code == "no_rate_calibration"


# 2. one spelling per idea ----------------------------------------------------------------
def test_augment_golden_takes_strong_model_and_the_old_spelling(data_dir, tmp_path):
    runner = CliRunner()
    common = ["augment", "golden", "--table", "mmlu_pro", "--data-dir", str(data_dir)]
    pair = ["gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"]
    new = runner.invoke(
        app,
        [
            *common,
            "--strong-model",
            pair[0],
            "--weak-model",
            pair[1],
            "--out",
            str(tmp_path / "a.jsonl"),
        ],
    )
    assert new.exit_code == 0, new.output
    old = runner.invoke(
        app, [*common, "--strong", pair[0], "--weak", pair[1], "--out", str(tmp_path / "b.jsonl")]
    )
    assert old.exit_code == 0, old.output
    assert "--strong is now --strong-model" in old.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    help_text = runner.invoke(app, ["augment", "golden", "--help"]).output
    assert "--strong-model" in help_text and "--strong " not in help_text


def test_augment_judge_names_stored_sides_with_strong_model(data_dir, tmp_path):
    runner = CliRunner()
    outputs = str(data_dir / "alpaca_eval" / "outputs.jsonl")
    base = [
        "augment", "judge", "--outputs", outputs, "--judge-model", "judge",
        "--judge-base-url", "http://127.0.0.1:9/v1", "--limit", "5", "--dry-run",
        "--out", str(tmp_path / "judged.jsonl"),
    ]  # fmt: skip
    new = runner.invoke(
        app,
        [*base, "--strong-model", "gpt4_1106_preview",
         "--weak-model", "Mixtral-8x7B-Instruct-v0.1_concise"],
    )  # fmt: skip
    assert new.exit_code == 0, new.output
    assert "dry run" in new.output
    old = runner.invoke(
        app,
        [*base, "--strong-name", "gpt4_1106_preview",
         "--weak-name", "Mixtral-8x7B-Instruct-v0.1_concise"],
    )  # fmt: skip
    assert old.exit_code == 0, old.output
    assert "--strong-name is now --strong-model" in old.output
    clash = runner.invoke(
        app, [*base, "--strong-model", "a", "--strong-name", "b", "--weak-model", "c"]
    )
    assert clash.exit_code != 0
    assert isinstance(clash.exception, ConfigError) and "give only --strong-model" in str(
        clash.exception
    )


# 3. fast start ---------------------------------------------------------------------------
def test_help_imports_no_heavy_module_and_shows_no_bool_metavar():
    code = (
        "import sys\n"
        "from prefroute.cli.main import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY', [m for m in {HEAVY_MODULES!r} if m in sys.modules])\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "train" in result.stdout and "info" in result.stdout
    for command in (["--help"], ["eval", "--help"], ["augment", "judge", "--help"]):
        output = CliRunner().invoke(app, command).output
        assert "<bool>" not in output, command


def test_load_router_warms_the_embedder_before_the_first_route(mf_dir):
    code = (
        "from prefroute.embed import wordllama_embedder as w\n"
        "from prefroute.router import load_router\n"
        f"router = load_router({str(mf_dir)!r})\n"
        "model = next(iter(w._MODELS.values()), None)\n"
        "print('WARM', model is not None and getattr(model, '_prefroute_tokenizers', None)"
        " is not None)\n"
        "import sys\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "WARM True" in result.stdout
    assert "TORCH False" in result.stdout  # an mf router scores in numpy: no torch to load


def test_mf_progress_bar_says_early_stopping_ended_training(alpaca_battles, capfd):
    predictor = make_router(
        "mf", strong_model=STRONG, weak_model=WEAK, dim=16, epochs=30, patience=1,
        lr=0.05, progress=True,
    )  # fmt: skip
    predictor.fit(alpaca_battles)
    stopped = predictor.training_curve_.get("early_stopped_epoch")
    assert stopped is not None and stopped < 30
    err = capfd.readouterr().err
    assert f"early stop at epoch {stopped}/30" in err


# 6. checkpoints that explain themselves ------------------------------------------------
def test_model_card_and_info(mf_dir, data_dir, tmp_path):
    card = (mf_dir / "README.md").read_text()
    for fact in (
        STRONG,
        WEAK,
        "alpaca_eval",
        "36,700",
        "rate of 30.0%",
        "router-mf@30",
        "load_router",
    ):
        assert fact in card, fact
    assert "No evaluation recorded" in card
    # an evaluation recorded on the router lands in the card, beside random and the oracle
    from prefroute.evaluate import evaluate_router

    router = load_router(mf_dir)
    result = evaluate_router(router, "mt-bench", data_dir, n_bootstrap=200)
    router.record_evaluation(result, protocol="transfer")
    evaluated = tmp_path / "evaluated"
    router.save_pretrained(evaluated)
    card = (evaluated / "README.md").read_text()
    assert "| mt-bench | transfer |" in card and f"{result.apgr:.3f} [" in card
    assert load_router(evaluated).evaluation[0]["apgr"] == pytest.approx(result.apgr)
    info = CliRunner().invoke(app, ["info", str(evaluated)])
    assert info.exit_code == 0, info.output
    for fact in (
        STRONG,
        WEAK,
        "36,700 battles",
        "strong calls on 322 prompts",
        "mt-bench",
        "README.md",
    ):
        assert fact in info.output, fact


def test_from_pretrained_through_an_offline_hub_cache(mf_dir, tmp_path, prompts):
    """A router 'downloaded' before: the hub cache layout, read with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--prefroute-test--mf-router"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in mf_dir.iterdir():  # as huggingface_hub lays it out: snapshot files link blobs
        blob = repo / "blobs" / f"blob-{path.name}"
        shutil.copy2(path, blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    expected = load_router(mf_dir).route(prompts[:20])
    code = (
        "import json\n"
        "from prefroute import load_router\n"
        "router = load_router('prefroute-test/mf-router')\n"
        f"print('ROUTES', json.dumps(router.route({prompts[:20]!r})))\n"
        "try:\n"
        "    load_router('prefroute-test/not-there')\n"
        "except Exception as e:\n"
        "    print('MISSING', type(e).__name__, e)\n"
    )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    routes = json.loads(result.stdout.split("ROUTES ", 1)[1].splitlines()[0])
    assert routes == expected
    assert "MISSING CheckpointError" in result.stdout and "not a local checkpoint" in result.stdout
    info = subprocess.run(
        [sys.executable, "-m", "prefroute.cli.main", "info", "prefroute-test/mf-router"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert STRONG in info.stdout and "strong calls on 322 prompts" in info.stdout


def test_a_missing_local_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_router(tmp_path / "nowhere" / "deeper")
    # a typo under an existing folder is a local path, never a hub lookup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_router("runs/typo")


# 4. output a newcomer understands --------------------------------------------------------
def test_apgr_columns_always_hold_an_interval(mf_dir, data_dir):
    from prefroute.evaluate import evaluate_router, results_markdown

    result = evaluate_router(load_router(mf_dir), "mt-bench", data_dir, n_bootstrap=200)
    rows = results_markdown([result]).splitlines()[2:]
    assert len(rows) == 3  # the router, random, oracle
    router_cell, random_cell, oracle_cell = (row.split(" | ")[3] for row in rows)
    for cell in (router_cell, random_cell, oracle_cell):
        assert re.search(r"\[-?\d\.\d{3}, -?\d\.\d{3}\]", cell), cell
    assert "seed spread" in random_cell and "seeds" in random_cell
    assert oracle_cell.endswith("exact")
    assert not re.search(r"\d ± \d", "\n".join(rows))  # the old bare "0.479 ± 0.038"


def test_routing_curve_lines_have_distinct_colours_and_legend_entries(
    mf_dir, data_dir, tmp_path, monkeypatch
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from prefroute.evaluate import evaluate_router, plot_routing_curves

    router = load_router(mf_dir)
    results = [
        evaluate_router(router, "mt-bench", data_dir, n_bootstrap=50, name=name)
        for name in ("mf", "mf again")
    ]
    monkeypatch.setattr(plt, "close", lambda *args: None)  # keep the figure to inspect it
    plot_routing_curves(results, tmp_path / "curves.png")
    ax = plt.gcf().axes[0]
    lines = ax.get_lines()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == len(lines) == 6  # 2 routers, random, oracle, weak, strong
    colours = [to_hex(line.get_color()) for line in lines]
    assert len(set(colours)) == len(colours), colours
    plt.close("all")


def test_benchmark_prints_a_legend():
    from prefroute.cli.benchmark import LEGEND

    for term in ("APGR", "CPT(50%)", "95% bootstrap CI", "seed spread", "transfer protocol",
                 "Below random"):  # fmt: skip
        assert term in LEGEND, term
