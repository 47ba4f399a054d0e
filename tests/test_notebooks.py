"""Every notebook runs end to end (papermill, small=True) on the real data and leaves its outputs.

Notebooks are stored without outputs; each has a cell tagged ``parameters`` that papermill
overrides. The kernel is the ``python3`` kernel spec of the running interpreter's environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = [
    "01_train_win_predictors",
    "02_calibrate_to_budget",
    "03_export_and_serve",
    "04_multi_llm_routing",
    "05_the_preference_loop",
]


def run_notebook(name: str, tmp_path: Path, data_dir: Path, **params) -> nbformat.NotebookNode:
    out_dir = tmp_path / "out"
    executed = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(executed),
        parameters={"data_dir": str(data_dir), "out_dir": str(out_dir), "small": True, **params},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    return nbformat.read(executed, as_version=4)


def text_outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/plain", "text/markdown"):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)


def n_images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stored_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for knob in ("data_dir", "small", "out_dir"):
        assert f"{knob} =" in tagged[0].source
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_01_trains_evaluates_and_saves_routers(tmp_path, data_dir):
    # causal_llm is left out here (minutes on a shared CPU); tests/test_neural_routers.py covers it
    nb = run_notebook("01_train_win_predictors", tmp_path, data_dir,
                      neural_routers=["bert"], n_eval_prompts=100)
    out = tmp_path / "out"
    assert (out / "gsm8k_routing_curves.png").stat().st_size > 10_000
    for name in ("sw_bt", "mf", "bert"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["router"]["strong_model"] == "gpt-4-1106-preview"
    text = text_outputs(nb)
    assert "golden:mmlu_pro" in text and "APGR" in text
    assert n_images(nb) >= 1


def test_02_calibrates_to_the_budget_and_plots_cost_quality(tmp_path, data_dir):
    budget = 4.0
    nb = run_notebook("02_calibrate_to_budget", tmp_path, data_dir, budget_per_1k_requests=budget)
    out = tmp_path / "out"
    assert (out / "cost_quality.png").stat().st_size > 10_000
    calibration = json.loads((out / "router" / "config.json").read_text())["router"]["calibration"]
    assert calibration["method"] == "budget"
    assert calibration["budget"] == {"per_1k_requests": budget}
    assert calibration["cost_per_1k_requests"] <= budget
    assert "gsm8k" in text_outputs(nb) and "mmlu" in text_outputs(nb)
    assert n_images(nb) >= 1


def test_03_exports_reloads_and_serves_over_http(tmp_path, data_dir):
    nb = run_notebook("03_export_and_serve", tmp_path, data_dir, n_requests=10)
    assert (tmp_path / "out" / "mf_router" / "config.json").is_file()
    text = text_outputs(nb)
    assert "identical P(strong wins)" in text
    assert "10 requests:" in text and "servers stopped" in text
    assert '"routing_latency"' in text and '"errors"' in text  # the /metrics.json JSON
    assert "prefroute_requests_total{" in text  # the Prometheus /metrics


def test_04_routes_among_many_llms_with_aiq(tmp_path, data_dir):
    nb = run_notebook("04_multi_llm_routing", tmp_path, data_dir)
    out = tmp_path / "out"
    for table in ("routerbench", "mmlu_pro"):
        assert (out / f"{table}_routing.png").stat().st_size > 10_000
        assert (out / f"{table}-mlc").is_dir()
    text = text_outputs(nb)
    assert "AIQ of mixing single models" in text
    assert n_images(nb) == 2


def test_05_runs_the_preference_loop_over_http(tmp_path, data_dir):
    nb = run_notebook("05_the_preference_loop", tmp_path, data_dir)
    out = tmp_path / "out"
    lineage = json.loads((out / "v2" / "config.json").read_text())["router"]["training"]
    assert lineage["lineage"][0]["parent"]["name"] == "v1"
    assert (out / "swap_apgr.png").stat().st_size > 10_000
    text = text_outputs(nb)
    assert "unknown id -> 404" in text and "'feedback': 3" in text
    assert "update of sw_bt" in text and "swap of sw_bt" in text
    assert "paired bootstrap CI" in text
    assert n_images(nb) == 1
