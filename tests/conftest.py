"""Shared fixtures: the real reference data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("PREFROUTE_DATA_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


DATA_DIR = _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "alpaca_eval").is_dir():
        pytest.fail(f"reference data not found at {DATA_DIR}; set PREFROUTE_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def alpaca_battles(data_dir):
    from prefroute.data import ModelAliases, apply_aliases, load_source

    return apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())
