"""One suite every win predictor must pass (run it from each router's tests)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.checkpoint import CONFIG_NAME
from prefroute.data.battles import Battles
from prefroute.errors import CheckpointError, PrefrouteError
from prefroute.router import Router, load_router
from prefroute.routers.base import NotFittedError, WinPredictor


def check_router(
    cls: type[WinPredictor],
    battles: Battles,
    prompts: Sequence[str],
    *,
    strong_model: str,
    weak_model: str,
    params: dict[str, Any] | None = None,
    atol: float = 0.0,
) -> WinPredictor:
    """Assert the WinPredictor contract on real data; returns the fitted predictor.

    - ``fit`` returns self; unfitted use raises NotFittedError;
    - probabilities are finite, in [0, 1], one per prompt, batch-independent;
    - save -> load gives identical probabilities (within ``atol``), through the class,
      the base class and ``load_router``; a corrupted config fails with CheckpointError;
    - the router's decisions follow the threshold.
    """
    params = dict(params or {})
    predictor = cls(strong_model=strong_model, weak_model=weak_model, **params)
    try:
        predictor.predict_proba(list(prompts[:1]))
    except NotFittedError:
        pass
    else:
        raise AssertionError("predict_proba before fit must raise NotFittedError")
    assert predictor.fit(battles) is predictor, "fit must return self"
    probs = predictor.predict_proba(list(prompts))
    assert probs.shape == (len(prompts),), (
        f"expected {len(prompts)} probabilities, got {probs.shape}"
    )
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all(), (
        "probabilities outside [0, 1]"
    )
    single = np.concatenate([predictor.predict_proba(p) for p in prompts[:5]])
    np.testing.assert_allclose(
        single,
        probs[:5],
        atol=max(atol, 1e-6),
        err_msg="one-at-a-time scoring differs from batch scoring",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        router = Router(predictor, threshold=float(np.median(probs)))
        router.save_pretrained(path)
        loaded = cls.from_pretrained(path)
        np.testing.assert_allclose(
            loaded.predict_proba(list(prompts)),
            probs,
            atol=atol,
            rtol=0,
            err_msg="save -> load changed the probabilities",
        )
        again = load_router(path)
        assert type(again.predictor) is cls
        assert again.threshold == router.threshold
        np.testing.assert_allclose(again.strong_win_prob(list(prompts)), probs, atol=atol, rtol=0)
        routed = again.route(list(prompts))
        expected = [strong_model if p >= router.threshold else weak_model for p in probs]
        if atol == 0.0:
            assert routed == expected, "route() does not follow the threshold"
        (path / CONFIG_NAME).write_text("{not json")
        try:
            load_router(path)
        except CheckpointError:
            pass
        else:
            raise AssertionError("a corrupted config.json must raise CheckpointError")
    try:
        cls(strong_model=strong_model, weak_model=strong_model, **params).fit(battles)
    except PrefrouteError:
        pass
    else:
        raise AssertionError("strong_model == weak_model must be rejected")
    return predictor
