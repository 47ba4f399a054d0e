"""Win predictors: ``router_class(name)`` imports a built-in router's module on first use."""

from prefroute.routers.base import (
    BUILTIN_ROUTERS,
    ROUTERS,
    NotFittedError,
    WinPredictor,
    register_router,
    router_class,
)

__all__ = [
    "BUILTIN_ROUTERS",
    "ROUTERS",
    "NotFittedError",
    "WinPredictor",
    "register_router",
    "router_class",
]
