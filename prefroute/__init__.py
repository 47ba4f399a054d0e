"""prefroute: learn to route each prompt to the right LLM from preference data."""

from prefroute.calibrate import Calibration, Prices, calibrate_budget, calibrate_strong_rate
from prefroute.data.battles import Battles
from prefroute.router import Router, load_router, make_router
from prefroute.routers.base import WinPredictor

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


def __getattr__(name: str):
    # the clients pull in openai and httpx: import them only when asked for
    if name in ("Controller", "AsyncController"):
        from prefroute.serve import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'prefroute' has no attribute {name!r}")
