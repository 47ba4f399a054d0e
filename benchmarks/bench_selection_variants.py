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

Prints mean APGR per size and each variant at half the largest size minus random at the
largest (Welch 95% CI over seeds).

    python benchmarks/bench_selection_variants.py --benchmarks mmlu,gsm8k --seeds 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (50, 100, 200, 400, 800, 1600)
STRATA = 20
STRATUM_POWERS = {"strat0": 0.0, "strat2": 2.0, "strat4": 4.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="mmlu,gsm8k", help="mmlu, gsm8k or both")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--variants", default="pow2,pow4,iw2,mix,top,strat0,strat2,strat4")
    args = parser.parse_args()
    for bench in args.benchmarks.split(","):
        if bench not in ("mmlu", "gsm8k"):
            raise SystemExit(f"unknown benchmark {bench!r}: mmlu or gsm8k")
        print(f"== {bench}")
        compare(bench, args.data_dir, args.seeds, args.variants.split(","))


def compare(bench: str, data_dir: Path, seeds: int, variants: list[str]) -> None:
    """Print each variant's curve and its half-size figure against random's largest."""
    from bench_label_efficiency import pool_and_test  # this folder is on sys.path

    from prefroute.evaluate.metrics import router_metrics
    from prefroute.routers.logistic import decisive_parts, fit_two_part_logistic, two_part_proba
    from prefroute.selection import disagreement_probability

    split = pool_and_test(bench, data_dir)
    pool, x_pool, x_test, labels = split.pool, split.x_pool, split.x_test, split.labels
    s_test, w_test = split.s_test, split.w_test
    disagreed, _ = decisive_parts(labels)
    sizes = [n for n in SIZES if n <= len(pool)]  # GSM8K's pool (1,055) stops at 800

    def apgr_of(idx: np.ndarray, weights: np.ndarray | None = None) -> float:
        w = np.ones(len(idx)) if weights is None else weights
        tie, direction = fit_two_part_logistic(x_pool[idx], labels[idx], w, c=1.0)
        probs = two_part_proba(x_test, tie, direction)
        return router_metrics(s_test, w_test, probs, n_bootstrap=0, grid=2).apgr

    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    strata = KMeans(STRATA, n_init=1, random_state=0).fit_predict(
        PCA(32, random_state=0).fit_transform(x_pool))

    def stratified(free: np.ndarray, d: np.ndarray, k: int, power: float,
                   rng: np.random.Generator) -> np.ndarray:
        """k picks from ``free``: each stratum its share (largest remainders drawn), and
        inside a stratum in proportion to d**power."""
        quota = np.bincount(strata[free], minlength=STRATA) / len(free) * k
        take = np.floor(quota).astype(int)
        if k > take.sum():
            rest = quota - take
            take[rng.choice(STRATA, k - take.sum(), replace=False, p=rest / rest.sum())] += 1
        picks = []
        for stratum in np.flatnonzero(take):
            members = np.flatnonzero(strata[free] == stratum)
            w = d[members] ** power
            picks.append(members[rng.choice(len(members), take[stratum], replace=False,
                                            p=w / w.sum())])
        return np.concatenate(picks)

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
            elif kind in STRATUM_POWERS:
                picks = stratified(free, d, k, STRATUM_POWERS[kind], rng)
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
    full = curves["random"][:, -1]
    for kind in variants:
        half = curves[kind][:, -2]
        diff = half.mean() - full.mean()
        se = np.sqrt(half.var(ddof=1) / len(half) + full.var(ddof=1) / len(full))
        print(f"{kind} at {sizes[-2]} minus random at {sizes[-1]}: {diff:+.3f} "
              f"[{diff - 1.96 * se:+.3f}, {diff + 1.96 * se:+.3f}]")


if __name__ == "__main__":
    main()
