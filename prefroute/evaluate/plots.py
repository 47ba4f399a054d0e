"""Quality against strong-model call % for several routers on one benchmark (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefroute.errors import ConfigError
from prefroute.evaluate.benchmarks import EvalResult
from prefroute.io import atomic_write

# router lines: none of the colours kept for the references (weak blue, strong red, random
# grey, oracle black), so every line in the legend is told apart by colour
ROUTER_COLORS = (
    "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
    "gold", "navy", "lime",
)


def plot_routing_curves(results: Sequence[EvalResult], path: str | Path, *,
                        title: str | None = None, reference_apgr: dict[str, float] | None = None
                        ) -> Path:
    """Write a PNG of every router's curve, with random (diagonal), oracle and the two models.

    All ``results`` must be on the same benchmark and prompts (the random, oracle and model
    lines come from the first). Legend entries carry RouteLLM's APGR. ``reference_apgr``
    (label -> value) adds published numbers to the title block as text.
    """
    if not results:
        raise ConfigError("plot_routing_curves needs at least one EvalResult")
    first = results[0]
    for r in results[1:]:
        if (r.benchmark, r.n_prompts) != (first.benchmark, first.n_prompts):
            raise ConfigError(
                f"cannot plot {r.benchmark} ({r.n_prompts} prompts) with {first.benchmark} "
                f"({first.n_prompts} prompts) on one figure"
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, r in enumerate(results):
        pts = r.router.curve
        ax.plot([100 * p["strong_rate"] for p in pts], [p["quality"] for p in pts],
                label=f"{r.name} (APGR {r.apgr:.3f})", linewidth=1.6,
                color=ROUTER_COLORS[i % len(ROUTER_COLORS)])
    for ref, style, color in ((first.random, ":", "grey"), (first.oracle, "-.", "black")):
        pts = ref.curve
        ax.plot([100 * p["strong_rate"] for p in pts], [p["quality"] for p in pts], style,
                color=color,
                label=f"{ref.name} (APGR {ref.apgr:.3f})", linewidth=1.2)
    ax.axhline(first.weak_quality, color="tab:blue", linestyle="--", linewidth=0.9,
               label=f"weak: {first.weak_model} ({first.weak_quality:.3f})")
    ax.axhline(first.strong_quality, color="tab:red", linestyle="--", linewidth=0.9,
               label=f"strong: {first.strong_model} ({first.strong_quality:.3f})")
    ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("quality (mean score of routed answers)")
    ax.set_xlim(0, 100)
    heading = title or f"{first.benchmark}: routing quality ({first.n_prompts} prompts)"
    if reference_apgr:
        heading += "\n" + ", ".join(f"{k}: APGR {v:.3f}" for k, v in reference_apgr.items())
    ax.set_title(heading, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb", encoding=None) as handle:
        fig.savefig(handle, dpi=120, format="png")
    plt.close(fig)
    return path
