"""The cost-quality plane: each router's lambda sweep and hull, single models, oracle, random."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefroute.errors import ConfigError
from prefroute.io import atomic_write
from prefroute.multi.metrics import nondecreasing_convex_hull

POLICY_MARKERS = {
    "argmax": "o",
    "random": "v",
    "prediction": "^",
    "prediction-rf": "s",
    "sorted": "D",
    "cost": "P",
}


def plot_cost_quality(
    path: str | Path,
    baselines: dict[str, Any],
    evaluations: Sequence[Any],
    *,
    title: str = "Cost-quality of N-way routing",
    log_cost: bool = True,
    cost_scale: float = 1000.0,
    cost_label: str = "mean cost ($ per 1k prompts)",
    zoom: bool = True,
) -> Path:
    """Write a PNG of the cost-quality plane.

    Left: every router's lambda sweep (thin line: measured points; dashed: its
    non-decreasing convex hull, with AIQ in the legend), its policy points (one marker per
    policy), each single model (labelled), the oracle and random routing. Right (``zoom``):
    the same around the best single model, where the routers compete with it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    singles = baselines["singles"]
    if not all(math.isfinite(r.cost) for r in singles):
        raise ConfigError(
            "the cost-quality plot needs costs: use a table with costs or pass a price profile"
        )
    if zoom:
        fig, (ax, ax_zoom) = plt.subplots(
            1, 2, figsize=(17, 6.8), gridspec_kw={"width_ratios": [1.35, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(10, 6.5))
    _draw(ax, baselines, evaluations, cost_scale, legend=True)
    if log_cost:
        ax.set_xscale("log")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if zoom:
        best = baselines["best_single"]
        _draw(ax_zoom, baselines, evaluations, cost_scale, legend=False)
        costs = [r.cost for r in singles]
        costs += [p.cost for ev in evaluations for p in ev.results if math.isfinite(p.cost)]
        ax_zoom.set_xlim(best.cost * cost_scale * 0.6, max(costs) * cost_scale * 1.03)
        ax_zoom.set_ylim(best.accuracy * 100 - 4.0, best.accuracy * 100 + 1.5)
        ax_zoom.set_xlabel(cost_label)
        ax_zoom.set_title(f"around the best single model ({best.name.split('/')[-1]})")
        handles = [
            Line2D([], [], color="black", marker=m, linestyle="none", markersize=6, label=name)
            for name, m in POLICY_MARKERS.items()
        ]
        ax_zoom.legend(handles=handles, title="policy", fontsize=7.5, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb", encoding=None) as handle:
        fig.savefig(handle, dpi=120, format="png")
    plt.close(fig)
    return path


def _draw(
    ax: Any, baselines: dict[str, Any], evaluations: Sequence[Any], scale: float, *, legend: bool
) -> None:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ev in enumerate(evaluations):
        color = colors[i % len(colors)]
        if ev.curve is not None:
            c = ev.curve
            ax.plot(c.costs * scale, c.qualities * 100, "-", color=color, lw=0.8, alpha=0.6)
            hc, hq = _dense_hull(*nondecreasing_convex_hull(c.costs, c.qualities))
            label = ev.router + ("" if ev.aiq is None else f" (AIQ {ev.aiq * 100:.1f})")
            ax.plot(hc * scale, hq * 100, "--", color=color, lw=1.6, label=label)
        for r in ev.results:
            if math.isfinite(r.cost):
                marker = POLICY_MARKERS.get(r.name, "o")
                ax.scatter(
                    r.cost * scale,
                    r.accuracy * 100,
                    color=color,
                    marker=marker,
                    s=22,
                    zorder=3,
                    alpha=0.85,
                )
    singles = baselines["singles"]
    sc = np.array([r.cost for r in singles]) * scale
    sq = np.array([r.accuracy for r in singles]) * 100
    ax.scatter(sc, sq, color="black", marker="s", s=28, zorder=4, label="single models")
    # the costlier half of the models are labelled to the left of their point, so the
    # right-most name (e.g. gpt-4-1106-preview) is not cut off at the plot's edge
    cost_rank = np.argsort(np.argsort(sc))
    for r, x, y, rank in zip(singles, sc, sq, cost_rank, strict=True):
        left = rank >= len(singles) / 2
        ax.annotate(
            r.name.split("/")[-1],
            (x, y),
            fontsize=6.5,
            xytext=(-4, 3) if left else (4, 3),
            textcoords="offset points",
            ha="right" if left else "left",
            clip_on=True,
        )
    o = baselines["oracle"]
    ax.scatter(
        o.cost * scale,
        o.accuracy * 100,
        color="gold",
        edgecolor="black",
        marker="*",
        s=220,
        zorder=5,
        label=f"oracle ({o.accuracy * 100:.1f}%)",
    )
    rnd = baselines["random"]
    ax.scatter(
        rnd.cost * scale,
        rnd.accuracy * 100,
        color="grey",
        marker="x",
        s=60,
        zorder=4,
        label="random (expected)",
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.margins(x=0.06, y=0.06)
    if legend:
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        if any(ev.curve is not None for ev in evaluations):  # the thin lines have no label
            handles.append(
                Line2D([], [], color="grey", lw=0.8, alpha=0.6,
                       label="thin line: every cost weight of that router")
            )  # fmt: skip
        ax.legend(handles=handles, fontsize=7.5, loc="best")


def _dense_hull(
    hc: np.ndarray, hq: np.ndarray, per_segment: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Hull vertices plus points along each segment (straight in linear cost, curved on log)."""
    if len(hc) < 2:
        return hc, hq
    xs = np.concatenate(
        [np.linspace(hc[i], hc[i + 1], per_segment, endpoint=False) for i in range(len(hc) - 1)]
        + [hc[-1:]]
    )
    return xs, np.interp(xs, hc, hq)


def plot_accuracy_bars(
    path: str | Path,
    baselines: dict[str, Any],
    evaluations: Sequence[Any],
    *,
    title: str = "N-way routing accuracy",
) -> Path:
    """A bar chart for tables without costs: oracle, best single models, each router x policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["Oracle"]
    values = [baselines["oracle"].accuracy]
    kinds = ["oracle"]
    for r in sorted(baselines["singles"], key=lambda r: -r.accuracy)[:3]:
        names.append(r.name)
        values.append(r.accuracy)
        kinds.append("single")
    for ev in evaluations:
        best = max(ev.results, key=lambda r: r.accuracy)
        names.append(f"{ev.router} ({best.name})")
        values.append(best.accuracy)
        kinds.append("router")
        names.append(f"{ev.router} upper bound")
        values.append(ev.upper_bound.accuracy)
        kinds.append("bound")
    palette = {
        "oracle": "gold",
        "baseline": "grey",
        "single": "black",
        "router": "tab:blue",
        "bound": "lightsteelblue",
    }
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.5))
    y = np.arange(len(names))[::-1]
    ax.barh(y, np.array(values) * 100, color=[palette[k] for k in kinds])
    ax.set_yticks(y, names, fontsize=7)
    for yi, v in zip(y, values, strict=True):
        ax.text(v * 100 + 0.3, yi, f"{v * 100:.1f}", va="center", fontsize=6.5)
    # the routers differ from the best single model by tenths of a point: start the axis near them
    ax.set_xlim(max(0.0, min(values) * 100 - 3.0), 100.0)
    best = max(baselines["singles"], key=lambda r: r.accuracy)
    ax.axvline(best.accuracy * 100, color="black", lw=0.8, ls=":")
    ax.set_xlabel(
        "accuracy (%); dotted: best single model; random routing "
        f"{baselines['random'].accuracy * 100:.1f}%"
    )
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb", encoding=None) as handle:
        fig.savefig(handle, dpi=130, format="png")
    plt.close(fig)
    return path
