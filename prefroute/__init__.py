"""prefroute: learn to route each prompt to the right LLM from preference data."""

from prefroute.calibrate import Calibration, Prices, calibrate_budget, calibrate_strong_rate
from prefroute.data.battles import Battles
from prefroute.router import Router, load_router, make_router
from prefroute.routers.base import WinPredictor
from prefroute.serve.controller import AsyncController, Controller

__version__ = "0.1.0"

__all__ = [
    "AsyncController",
    "Controller",
    "Battles",
    "Calibration",
    "Prices",
    "Router",
    "WinPredictor",
    "calibrate_budget",
    "calibrate_strong_rate",
    "load_router",
    "make_router",
]
