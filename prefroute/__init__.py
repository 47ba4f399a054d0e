"""prefroute: learn to route each prompt to the right LLM from preference data."""

from prefroute._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (import stays cheap)
_EXPORTS = {
    "Calibration": "prefroute.calibrate",
    "Prices": "prefroute.calibrate",
    "calibrate_budget": "prefroute.calibrate",
    "calibrate_strong_rate": "prefroute.calibrate",
    "Battles": "prefroute.data.battles",
    "Router": "prefroute.router",
    "load_router": "prefroute.router",
    "make_router": "prefroute.router",
    "WinPredictor": "prefroute.routers.base",
    "Controller": "prefroute.serve.controller",
    "AsyncController": "prefroute.serve.controller",
}
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
