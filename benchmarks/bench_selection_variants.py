"""Variants of the disagreement selector against random picks, with the two-part learner.

Same split and learner as ``bench_label_efficiency.py --learner two_part`` (fold 0 of the
grouped 5-fold split is the test set; the pool is the other folds' distinct prompts; the
first 50 labels are random, then rounds at each size). Each round draws the new picks from
the unlabelled pool by the predicted chance that the two models disagree, d:

- ``pow2``: in proportion to d**2 (what ``augment select --labelled`` does);
- ``pow4``: in proportion to d**4 (sharper);
- ``iw2``: as pow2, and the learner weights each pick by 1 / (its draw probability), the
  importance weights that undo the selection's bias;
- ``mix``: half the round at random, half in proportion to d**2;
- ``top``: the round's k highest d, no draw;
- ``strat0`` / ``strat2`` / ``strat4``: a proportional stratified draw: the pool cut into
  ``STRATA`` k-means strata (top 32 principal directions), each stratum given its share of
  the round, and picks inside it drawn in proportion to d**0 (plain stratified random), d**2
  or d**4. It keeps the pool's mix of topics while preferring likely-decisive prompts.

Two bounds, which no selector can run (they read labels of prompts not yet labelled), say
how far any selector that prefers likely-decisive prompts could go:

- ``best_d2``: draws in proportion to d**2, with d from the decisiveness model fitted on
  *every* pool label (the best d a selector could learn from this pool);
- ``label_A_B``: draws weighted by the prompt's true label: A where the weak model won,
  B where the strong model won, 1 for a tie (``label_4_4``: every decisive prompt 4 times
  a tie). No selector can know more about a prompt's outcome before labelling it.

Prints mean APGR per size and each variant at half the largest size minus random at the
largest (Welch 95% CI over seeds).

    python benchmarks/bench_selection_variants.py --benchmarks mmlu,gsm8k --seeds 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (50, 100, 200, 400, 800, 1600)
STRATA = 20
STRATUM_POWERS = {"strat0": 0.0, "strat2": 2.0, "strat4": 4.0}
NAMES = {"pow2": "drawn by d\u00b2, d learnt from the labels so far (augment select --labelled)",
         "pow4": "drawn by d\u2074", "iw2": "drawn by d\u00b2, importance-weighted learner",
         "mix": "half random, half drawn by d\u00b2", "top": "the highest d",
         "strat0": "stratified random (20 strata)", "strat2": "stratified, drawn by d\u00b2 inside",
         "strat4": "stratified, drawn by d\u2074 inside",
         "best_d2": "drawn by d\u00b2, d learnt from every pool label"}


def is_bound(kind: str) -> bool:
    """Whether a variant reads labels no selector has yet (a bound, not a selector)."""
    return kind == "best_d2" or kind.startswith("label_")


def label_weights(kind: str) -> tuple[float, float]:
    """(weight where the weak model won, where the strong model won) of ``label_A_B``."""
    _, weak_won, strong_won = kind.split("_")
    return float(weak_won), float(strong_won)


def describe(kind: str) -> str:
    """A reader's name for a variant (``label_A_B``: weights on the true outcome)."""
    if kind.startswith("label_"):
        weak_won, strong_won = label_weights(kind)
        return f"true outcome: weak won x{weak_won:g}, strong won x{strong_won:g}, tie x1"
    return NAMES.get(kind, kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="mmlu,gsm8k", help="mmlu, gsm8k or both")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--variants", default="pow2,pow4,iw2,mix,top,strat0,strat2,strat4,"
                        "best_d2,label_2_2,label_4_4,label_2_4,label_4_2,label_4_1,label_8_8")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also draw each variant's half-size gap to random as a PNG")
    args = parser.parse_args()
    gaps = {}
    for bench in args.benchmarks.split(","):
        if bench not in ("mmlu", "gsm8k"):
            raise SystemExit(f"unknown benchmark {bench!r}: mmlu or gsm8k")
        print(f"== {bench}")
        gaps[bench] = compare(bench, args.data_dir, args.seeds, args.variants.split(","))
    if args.figure is not None:
        plot_gaps(gaps, args.seeds, args.figure)


def compare(bench: str, data_dir: Path, seeds: int,
            variants: list[str]) -> dict[str, tuple[float, float, float]]:
    """Print each variant's curve and its half-size figure against random's largest; return
    those figures as {variant: (difference, low, high)}."""
    from bench_label_efficiency import pool_and_test  # this folder is on sys.path
    from scipy.special import expit

    from prefroute.evaluate.metrics import router_metrics
    from prefroute.routers.logistic import (
        decisive_parts,
        fit_decisive_logistic,
        fit_two_part_logistic,
        two_part_proba,
    )
    from prefroute.selection import disagreement_probability, stratified_draw

    split = pool_and_test(bench, data_dir)
    pool, x_pool, x_test, labels = split.pool, split.x_pool, split.x_test, split.labels
    s_test, w_test = split.s_test, split.w_test
    disagreed, _ = decisive_parts(labels)
    sizes = [n for n in SIZES if n <= len(pool)]  # GSM8K's pool (1,055) stops at 800
    coef, intercept = fit_decisive_logistic(x_pool, disagreed, np.ones(len(pool)))
    best_d = expit(x_pool @ coef + intercept)  # for the best_d2 bound only

    def apgr_of(idx: np.ndarray, weights: np.ndarray | None = None) -> float:
        w = np.ones(len(idx)) if weights is None else weights
        tie, direction = fit_two_part_logistic(x_pool[idx], labels[idx], w, c=1.0)
        probs = two_part_proba(x_test, tie, direction)
        return router_metrics(s_test, w_test, probs, n_bootstrap=0, grid=2).apgr

    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    strata = KMeans(STRATA, n_init=1, random_state=0).fit_predict(
        PCA(32, random_state=0).fit_transform(x_pool))

    def rounds(seed: int, kind: str) -> tuple[list[float], float]:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(pool), sizes[0], replace=False)
        weights = np.ones(len(chosen))
        curve = [apgr_of(chosen)]
        for n in sizes[1:]:
            free = np.setdiff1d(np.arange(len(pool)), chosen)
            k = n - len(chosen)
            d = disagreement_probability(x_pool[free], x_pool[chosen], disagreed[chosen])
            new_weights = np.ones(k)
            if kind in ("pow2", "pow4", "iw2"):
                p = d ** (4.0 if kind == "pow4" else 2.0)
                p /= p.sum()
                picks = rng.choice(len(free), k, replace=False, p=p)
                if kind == "iw2":
                    new_weights = 1.0 / (p[picks] * len(free))
                    new_weights /= new_weights.mean()
            elif kind == "mix":
                at_random = rng.choice(len(free), k // 2, replace=False)
                rest = np.setdiff1d(np.arange(len(free)), at_random)
                p = d[rest] ** 2 / (d[rest] ** 2).sum()
                picks = np.concatenate(
                    [at_random, rest[rng.choice(len(rest), k - k // 2, replace=False, p=p)]])
            elif is_bound(kind):
                p = best_d[free] ** 2 if kind == "best_d2" else _by_label(labels[free], kind)
                picks = rng.choice(len(free), k, replace=False, p=p / p.sum())
            elif kind in STRATUM_POWERS:
                picks = stratified_draw(strata[free], d ** STRATUM_POWERS[kind], k, rng)
            elif kind == "top":
                picks = np.argsort(-d)[:k]
            else:
                raise SystemExit(f"unknown variant {kind}")
            chosen = np.concatenate([chosen, free[picks]])
            weights = np.concatenate([weights, new_weights])
            curve.append(apgr_of(chosen, weights if kind == "iw2" else None))
        return curve, float(disagreed[chosen].mean())

    curves: dict[str, np.ndarray] = {}
    for kind in ["random", *variants]:
        runs, shares = [], []
        for seed in range(seeds):
            if kind == "random":
                rng = np.random.default_rng(seed)
                runs.append([apgr_of(rng.choice(len(pool), n, replace=False)) for n in sizes])
            else:
                curve, share = rounds(seed, kind)
                runs.append(curve)
                shares.append(share)
        curves[kind] = np.array(runs)
        share_text = f"; decisive share of the labels {np.mean(shares):.3f}" if shares else ""
        print(f"{kind}: mean APGR at {sizes}: {np.round(curves[kind].mean(0), 3).tolist()}"
              f"{share_text}")
    gaps = {}
    for kind in variants:
        at_half = curves[kind][:, -2]
        gaps[kind] = _welch(at_half, curves["random"][:, -1])
        print(f"{kind} at {sizes[-2]} minus random at {sizes[-1]}: {_text(gaps[kind])}; "
              f"minus random at {sizes[-2]}: {_text(_welch(at_half, curves['random'][:, -2]))}")
    return gaps


def _by_label(labels: np.ndarray, kind: str) -> np.ndarray:
    """Draw weights of the ``label_A_B`` bound: A where the weak model won, B where the strong
    model won, 1 for a tie."""
    weak_won, strong_won = label_weights(kind)
    return np.where(labels < 0.5, weak_won, np.where(labels > 0.5, strong_won, 1.0))


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of means with its Welch 95% interval (independent draws per seed)."""
    diff = float(a.mean() - b.mean())
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    return diff, diff - 1.96 * se, diff + 1.96 * se


def _text(gap: tuple[float, float, float]) -> str:
    return f"{gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]"


def plot_gaps(gaps: dict[str, dict[str, tuple[float, float, float]]], seeds: int,
              path: Path) -> Path:
    """One panel per benchmark: each variant's APGR at half the labels minus random picks'
    at all of them, with its 95% interval; bounds (which read true labels) in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gaps), figsize=(5 * len(gaps) + 4, 5.5), squeeze=False,
                             sharey=True)
    for ax, (bench, by_kind) in zip(axes[0], gaps.items(), strict=True):
        kinds = list(by_kind)
        for row, kind in enumerate(kinds):
            diff, low, high = by_kind[kind]
            bound = is_bound(kind)
            ax.errorbar(diff, row, xerr=[[diff - low], [high - diff]], fmt="o", capsize=3,
                        color="tab:grey" if bound else "tab:red",
                        label="bound: reads labels no selector has yet" if bound
                        else "selector a user can run")
        ax.axvline(0.0, color="black", linewidth=1,
                   label="goal: level with random picks at twice the labels")
        ax.set_yticks(range(len(kinds)), [describe(k) for k in kinds], fontsize=8)
        half = "800 vs 1,600" if bench == "mmlu" else "400 vs 800"
        ax.set_xlabel(f"APGR gap, labels {half} (mean of {seeds} seeds, 95% CI)")
        ax.set_title(f"{bench}: half the labels minus random picks at all of them")
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

if __name__ == "__main__":
    main()
