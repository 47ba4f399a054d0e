"""``update_router``: fold new battles into a saved router, or swap in a new model, with lineage.

sw_bt appends the battles to its tables (:mod:`prefroute.loop.sw_bt_update`); mf warm-starts
with replay, or learns only a new model's vector (:mod:`prefroute.loop.mf_update`). The new
router records where it came from in ``training["lineage"]``: one entry per update, naming
the parent checkpoint by folder name and content digest and the added data by name, digest
and size. Nothing in it is ever followed: it is a record for people, not a path to load.
Likewise ``training["sources"]``: the names it records are provenance, never read again
(replayed battles come only from files or named sources the user passes).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefroute.checkpoint import CONFIG_NAME, TENSORS_NAME
from prefroute.data.battles import Battles
from prefroute.errors import CheckpointError, ConfigError
from prefroute.router import Router

UPDATABLE = ("sw_bt", "mf")


def battles_digest(battles: Battles) -> str:
    """SHA-256 of the battles' content (prompt, models, winner, soft label, weight), in order."""
    digest = hashlib.sha256()
    columns = [battles.column(c) for c in ("prompt", "model_a", "model_b", "winner")]
    soft, weight = battles.column("p_b_wins"), battles.column("weight")
    for row in zip(*columns, soft, weight, strict=True):
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def checkpoint_digest(directory: str | Path) -> str:
    """SHA-256 over a checkpoint's config.json and model.safetensors."""
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, TENSORS_NAME):
        path = Path(directory) / name
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _where(parent: str | Path | None) -> str:
    return "the router's" if parent is None else str(Path(parent) / CONFIG_NAME)


def recorded_training(router: Router, parent: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``router.training`` with the lineage fields an update extends checked:
    ``sources`` (names, never read), ``lineage`` (objects) and ``n_battles`` (a count)."""
    where = _where(parent)
    training = router.training or {}
    if not isinstance(training, dict):
        raise CheckpointError(f"{where}: router.training must be an object")
    training = dict(training)
    sources = training.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise CheckpointError(f"{where}: router.training.sources must be a list of names")
    lineage = training.get("lineage") or []
    if not isinstance(lineage, list) or not all(isinstance(e, dict) for e in lineage):
        raise CheckpointError(f"{where}: router.training.lineage must be a list of objects")
    n_battles = training.get("n_battles") or 0
    if isinstance(n_battles, bool) or not isinstance(n_battles, int) or n_battles < 0:
        raise CheckpointError(f"{where}: router.training.n_battles must be a count, "
                              f"got {n_battles!r}")
    return {**training, "sources": sources, "lineage": lineage, "n_battles": n_battles}


@dataclass
class UpdateReport:
    """What an update did: its kind, the battles used and the wall time."""

    kind: str
    router_type: str
    n_battles: int
    seconds: float
    replaced: dict[str, str] = field(default_factory=dict)
    n_replayed: int = 0

    def line(self) -> str:
        swap = "".join(f", {role}: {change}" for role, change in self.replaced.items())
        return (f"{self.kind} of {self.router_type}: {self.n_battles:,} new battles"
                f"{f', {self.n_replayed:,} replayed' if self.n_replayed else ''}{swap} "
                f"in {self.seconds:.2f} s")


def update_router(
    router: Router,
    battles: Battles,
    *,
    strong_model: str | None = None,
    weak_model: str | None = None,
    replay: Battles | None = None,
    replay_size: int | None = None,
    epochs: int = 3,
    prior_strength: float = 1.0,
    seed: int = 0,
    parent: str | Path | None = None,
    data_name: str | None = None,
    data_sources: list[str] | None = None,
) -> tuple[Router, UpdateReport]:
    """A new Router with ``battles`` folded in (and the pair changed where asked).

    Parameters
    ----------
    router: a loaded sw_bt or mf Router.
    battles: the new battles.
    strong_model, weak_model: swap that side for this model (at most one): sw_bt rates it
        from its battles alone; mf fits only its vector, with a prior from the known models.
    replay, replay_size, epochs: mf warm start: old battles to replay and how many per
        update (default: as many as the new ones), and the passes over the mix.
    prior_strength: mf swap prior weight (0: maximum likelihood).
    parent, data_name, data_sources: for the lineage: the parent checkpoint folder, a name
        for the added data, and the sources to add to ``training["sources"]``.
    """
    kind = router.router_type
    training = recorded_training(router, parent)  # checked before any work
    if kind not in UPDATABLE:
        raise ConfigError(
            f"update supports {list(UPDATABLE)} routers; a {kind!r} router must be retrained "
            "(prefroute train) on the old and new battles together"
        )
    if strong_model is not None and weak_model is not None:
        raise ConfigError("swap one side at a time: give --strong-model or --weak-model")
    role, model = (("strong", strong_model) if strong_model is not None else
                   ("weak", weak_model) if weak_model is not None else (None, None))
    started = time.perf_counter()
    predictor = router.predictor
    n_replayed = 0
    if kind == "sw_bt":
        from prefroute.loop.sw_bt_update import append_battles, swap_model

        new = (append_battles(predictor, battles) if role is None
               else swap_model(predictor, battles, role=role, model=model))
    else:
        from prefroute.loop.mf_update import learn_model_vector, warm_update

        if role is None:
            new = warm_update(predictor, battles, replay=replay, replay_size=replay_size,
                              epochs=epochs, seed=seed)
            n_replayed = new.training_info_["update"]["n_replayed"]
        else:
            other = predictor.weak_model if role == "strong" else predictor.strong_model
            if model == other:
                raise ConfigError(f"{model!r} is already the other side of this router")
            new = learn_model_vector(predictor, battles, model, prior_strength=prior_strength)
            new.strong_model, new.weak_model = ((model, other) if role == "strong"
                                                else (other, model))
            new._pairs = {}
    seconds = time.perf_counter() - started
    replaced = {} if role is None else {
        role: f"{getattr(predictor, f'{role}_model')} -> {model}"}
    report = UpdateReport(kind="swap" if role else "update", router_type=kind,
                          n_battles=len(battles), seconds=seconds, replaced=replaced,
                          n_replayed=n_replayed)
    entry: dict[str, Any] = {
        "kind": report.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parent": None if parent is None else {
            "name": Path(parent).name, "sha256": checkpoint_digest(parent)},
        "data": {"name": data_name, "n_battles": len(battles),
                 "sha256": battles_digest(battles)},
        "replaced": replaced,
        "n_replayed": n_replayed,
        "seconds": round(seconds, 4),
    }
    training["lineage"] = [*training["lineage"], entry]
    training["sources"] = [*training["sources"], *(data_sources or [])]
    training["n_battles"] = training["n_battles"] + len(battles)
    # the threshold is kept, though an update moves the probabilities: recalibrate
    calibration = dict(router.calibration or {})
    calibration["stale"] = True
    return Router(new, router.threshold, calibration, training), report
