"""Routing quality (RouteLLM's APGR / CPT) under the two protocols of prefroute.evaluate.

Routers: the random router, the two reference baselines (prompt length; kNN over golden
labels) and the learned ``sw_bt`` and ``mf`` routers. Protocols:

* golden cross-fitting on MMLU and GSM8K (5 folds; train = other folds' golden battles +
  AlpacaEval judge battles), compared with the paper's golden-augmented best APGR;
* transfer: train once on AlpacaEval + MMLU-Pro golden battles (decontaminated), evaluate
  on MT-Bench, MMLU and GSM8K.

Prints markdown tables, writes ``benchmarks/out/quality.json`` and one PNG per benchmark and
protocol under ``benchmarks/figures/``.

    nice -n 10 python benchmarks/bench_quality.py [--routers random,length,knn,sw_bt,mf]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
ROUTER_MODULE = {"sw_bt": "sw_bt", "sw_bt_models": "sw_bt", "mf": "mf"}


def wait_for_routers(names: list[str], poll_s: int = 120, max_wait_s: int = 3 * 3600) -> list[str]:
    """Wait until the learned routers' modules exist and import; return those that do."""
    pending = sorted({ROUTER_MODULE[n] for n in names if n in ROUTER_MODULE})
    start = time.time()
    while pending:
        for name in list(pending):
            path = ROOT / "prefroute" / "routers" / f"{name}.py"
            if not path.exists():
                continue
            try:
                importlib.import_module(f"prefroute.routers.{name}")
                pending.remove(name)
            except Exception as e:  # a router being written can fail to import for a while
                print(f"[wait] prefroute.routers.{name} does not import yet: {e!r}")
        if pending and time.time() - start > max_wait_s:
            print(f"[wait] giving up on {pending}")
            return [n for n in names if ROUTER_MODULE.get(n) not in pending]
        if pending:
            print(f"[wait] waiting {poll_s}s for {pending}")
            time.sleep(poll_s)
    return names


def make_scorers(names: list[str], embedder, *, knn_k: int, mf_epochs: int | None):
    from prefroute.evaluate.protocols import (
        PAIR_STRONG,
        PAIR_WEAK,
        KnnScorer,
        LengthScorer,
        RouterScorer,
    )
    from prefroute.router import make_router

    def factory(router: str, **params):
        return lambda: make_router(router, strong_model=PAIR_STRONG, weak_model=PAIR_WEAK,
                                   **params)

    scorers = []
    for name in names:
        if name == "random":
            scorers.append(RouterScorer("random", factory("random", seed=0)))
        elif name == "length":
            scorers.append(LengthScorer())
        elif name == "knn":
            scorers.append(KnnScorer(name=f"knn-golden (k={knn_k})", k=knn_k, embedder=embedder))
        elif name == "sw_bt":
            scorers.append(RouterScorer("sw_bt (10 tiers)",
                                        factory("sw_bt", embedder=embedder, num_tiers=10)))
        elif name == "sw_bt_models":
            # one BT strength per model: golden battles (mostly ties) pull the pair's global
            # ratings together, and 10 tiers can then put strong and weak in one tier
            scorers.append(RouterScorer("sw_bt (per model)",
                                        factory("sw_bt", embedder=embedder, num_tiers=0)))
        elif name == "mf":
            params = {"embedder": embedder, "progress": False}
            if mf_epochs is not None:
                params["epochs"] = mf_epochs
            scorers.append(RouterScorer("mf", factory("mf", **params)))
        elif name in ("sw_bt_tuned", "mf_tuned"):
            # topic + surface features, in-distribution golden battles weighted x30 against
            # the judge battles; sw_bt also looks only at the 100 nearest training prompts
            features = {"name": "features", "params": {"inner": embedder, "feature_weight": 1.0}}
            params = {"embedder": features}
            if name == "sw_bt_tuned":
                params["top_k"] = 100
            else:
                params["progress"] = False
            label = "sw_bt + features, golden x30, top-100" if name == "sw_bt_tuned" else \
                "mf + features, golden x30"
            scorers.append(RouterScorer(label, factory(name.split("_tuned")[0], **params),
                                        source_weights={"golden": 30.0}))
        else:
            raise SystemExit(f"unknown router {name!r}")
    return scorers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--routers",
                        default="random,length,knn,sw_bt,sw_bt_models,mf,sw_bt_tuned,mf_tuned")
    parser.add_argument("--protocols", default="crossfit,transfer")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--knn-k", type=int, default=50)
    parser.add_argument("--mf-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "quality.json"))
    parser.add_argument("--figures", default=str(ROOT / "benchmarks" / "figures"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    names = wait_for_routers([n.strip() for n in args.routers.split(",") if n.strip()])

    from prefroute.embed import CachedEmbedder, build_embedder
    from prefroute.evaluate.protocols import run_golden_crossfit, run_transfer

    cache_dir = ROOT / "benchmarks" / "out" / "embed_cache"
    embedder = CachedEmbedder(build_embedder("wordllama"), cache_dir)
    scorers = make_scorers(names, embedder, knn_k=args.knn_k, mf_epochs=args.mf_epochs)
    out: dict = {"routers": names, "seed": args.seed, "n_bootstrap": args.n_bootstrap,
                 "protocols": {}}
    figures: list[str] = []
    for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        t0 = time.time()
        if protocol == "crossfit":
            result = run_golden_crossfit(scorers, args.data_dir, n_folds=args.folds, seed=args.seed,
                                         embedder=embedder, n_bootstrap=args.n_bootstrap)
        elif protocol == "transfer":
            result = run_transfer(scorers, args.data_dir, seed=args.seed, embedder=embedder,
                                  n_bootstrap=args.n_bootstrap)
        else:
            raise SystemExit(f"unknown protocol {protocol!r}")
        elapsed = time.time() - t0
        print(f"\n## {result.protocol} ({elapsed:.0f} s)\n")
        print(result.summary_markdown())
        print("\nAll metrics (CPT on the all-rates curve; APGR [CI] by RouteLLM's decile rule):\n")
        print(result.detail_markdown())
        print("\nprotocol info:", json.dumps({k: v for k, v in result.info.items()
                                              if k != "benchmarks"}, default=str))
        for bench, info in result.info.get("benchmarks", {}).items():
            print(f"  {bench}: {json.dumps(info, default=str)}")
        for bench, rs in result.results.items():
            for r in rs:
                if "fold_apgr" in r.info:
                    folds = ", ".join("-" if v is None else f"{v:.3f}" for v in r.info["fold_apgr"])
                    print(f"  {bench} {r.name}: APGR within each fold [{folds}]; "
                          f"pooled {r.apgr:.3f}")
        paths = result.plot(args.figures)
        figures += [str(p) for p in paths]
        out["protocols"][result.protocol] = {**result.to_dict(), "seconds": elapsed}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    out["figures"] = figures
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    print("\nfigures:", *figures, sep="\n  ")
    print("results:", args.out)


if __name__ == "__main__":
    main()
