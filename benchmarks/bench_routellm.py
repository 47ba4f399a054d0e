"""prefroute beside RouteLLM's own code: same battles, same embeddings, one evaluator.

Both routers see the 36.7k AlpacaEval judge battles (RouteLLM's 16-character minimum prompt
length applied to both) and wordllama prompt embeddings. RouteLLM's routers call OpenAI's
embedding API; here that call is replaced, in this script only, by the same wordllama
encoder prefroute uses, so any difference comes from the routers.

* SW: RouteLLM's ``SWRankingRouter`` (its __init__ downloads Arena data, so its fields are
  filled from the battles above with its own ``compute_elo_mle_with_tie`` and
  ``compute_tiers``) against prefroute ``sw_bt`` with the same settings (gamma 10, 10 tiers,
  hard labels, ties half).
* MF: prefroute ``mf`` trained on the battles, and RouteLLM's ``MFModel`` holding the same
  weights (the reverse of ``prefroute import-routellm``): quality must be identical, so this
  row checks agreement and times the two inference paths.

Quality: APGR (RouteLLM's decile rule) with a bootstrap CI from prefroute's evaluator for
every router, beside the random router, prompt length and the oracle, on MT-Bench and a
seeded GSM8K sample. Speed: prompts/s one at a time (the embedding included) and batched
(prefroute's batch path; RouteLLM has none for these routers: its Controller applies the
per-prompt function, ``parallel_apply`` for SW).

    nice -n 10 python benchmarks/bench_routellm.py [--gsm8k-sample 150] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENAI_API_KEY", "sk-unused")  # routellm builds an OpenAI client on import
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT.parent / "shared" / "data").resolve()
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"


class LocalEmbeddings:
    """Stands in for ``OpenAI().embeddings`` with a prefroute embedder (no network)."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.embeddings = self

    def create(self, input, model):  # noqa: A002 - OpenAI's argument name
        vectors = self.embedder.encode(list(input))
        return SimpleNamespace(data=[SimpleNamespace(embedding=v.tolist()) for v in vectors])


def routellm_sw(battles, embedder, prompt_vectors, prompt_index):
    """RouteLLM's SWRankingRouter over our battles and embeddings."""
    import pandas as pd
    import routellm.routers.routers as rr
    from routellm.routers.similarity_weighted.utils import compute_elo_mle_with_tie, compute_tiers

    rr.OPENAI_CLIENT = LocalEmbeddings(embedder)
    router = rr.SWRankingRouter.__new__(rr.SWRankingRouter)
    router.strong_model, router.weak_model = STRONG, WEAK
    router.embedding_model = "text-embedding-3-small"
    frame = pd.DataFrame({
        "model_a": battles.column("model_a"), "model_b": battles.column("model_b"),
        "winner": battles.column("winner"),
    })
    router.model2tier = compute_tiers(compute_elo_mle_with_tie(frame), num_tiers=10)
    frame["model_a"] = frame["model_a"].map(router.model2tier)
    frame["model_b"] = frame["model_b"].map(router.model2tier)
    router.arena_df = frame
    router.arena_conv_embedding = prompt_vectors[prompt_index]
    return router


def routellm_mf(mf_predictor, embedder):
    """RouteLLM's MFModel holding prefroute mf's weights."""
    import torch
    from routellm.routers.matrix_factorization import model as mf_module

    mf_module.OPENAI_CLIENT = LocalEmbeddings(embedder)
    P, W, w = mf_predictor.P_, mf_predictor.W_, mf_predictor.w_
    net = mf_module.MFModel(dim=P.shape[1], num_models=P.shape[0], text_dim=W.shape[1],
                            num_classes=1, use_proj=True)
    net.load_state_dict({"P.weight": torch.from_numpy(P.copy()),
                         "text_proj.0.weight": torch.from_numpy(W.copy()),
                         "classifier.0.weight": torch.from_numpy(w.reshape(1, -1).copy())})
    net.eval()
    ids = mf_predictor.model_index_
    return lambda prompt: net.pred_win_rate(ids[STRONG], ids[WEAK], prompt)


def timed_single(score_one, prompts) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    probs = np.array([float(score_one(p)) for p in prompts])
    return probs, len(prompts) / (time.perf_counter() - started)


def timed_batch(score_many, prompts, repeats: int = 3) -> tuple[np.ndarray, float]:
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        probs = np.asarray(score_many(prompts), dtype=np.float64)
        best = min(best, time.perf_counter() - started)
    return probs, len(prompts) / best


def main() -> None:
    from scipy.stats import spearmanr
    from tqdm import tqdm

    from prefroute.data import ModelAliases, apply_aliases, load_source
    from prefroute.data.cleaning import drop_short_prompts
    from prefroute.embed import build_embedder
    from prefroute.evaluate.baselines import prompt_length_probs
    from prefroute.evaluate.benchmarks import prepare_eval_set
    from prefroute.evaluate.metrics import oracle_metrics, random_metrics, router_metrics
    from prefroute.router import make_router

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--gsm8k-sample", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()

    battles = apply_aliases(load_source("alpaca_eval", args.data_dir), ModelAliases())
    battles = drop_short_prompts(battles, 16)  # RouteLLM's MIN_LEN
    embedder = build_embedder("wordllama")
    distinct = sorted(set(battles.prompts))
    position = {p: i for i, p in enumerate(distinct)}
    prompt_vectors = embedder.encode(distinct).astype(np.float64)
    prompt_index = np.array([position[p] for p in battles.prompts])

    sw = make_router("sw_bt", strong_model=STRONG, weak_model=WEAK, embedder=embedder,
                     gamma=10.0, num_tiers=10, use_soft_labels=False, ties="half").fit(battles)
    mf = make_router("mf", strong_model=STRONG, weak_model=WEAK, embedder=embedder,
                     progress=False).fit(battles)
    rl_sw = routellm_sw(battles, embedder, prompt_vectors, prompt_index)
    rl_mf = routellm_mf(mf, embedder)

    eval_sets = {"mt_bench": prepare_eval_set("mt_bench", args.data_dir, train_prompts=distinct)}
    gsm8k = prepare_eval_set("gsm8k", args.data_dir, train_prompts=distinct)
    keep = np.sort(np.random.default_rng(0).choice(len(gsm8k.prompts), args.gsm8k_sample,
                                                   replace=False))
    gsm8k.prompts = [gsm8k.prompts[i] for i in keep]
    gsm8k.strong_scores, gsm8k.weak_scores = gsm8k.strong_scores[keep], gsm8k.weak_scores[keep]
    eval_sets[f"gsm8k (sample of {args.gsm8k_sample})"] = gsm8k

    results: dict = {"benchmarks": {}, "speed": {}}
    speed: dict[str, dict[str, list[float]]] = {}
    for bench, es in eval_sets.items():
        prompts = es.prompts
        probs: dict[str, np.ndarray] = {}
        rates: dict[str, tuple[float, float]] = {}
        probs["prefroute sw_bt"], one = timed_single(lambda p: sw.predict_proba([p])[0], prompts)
        _, many = timed_batch(sw.predict_proba, prompts)
        rates["prefroute sw_bt"] = (one, many)
        scored = tqdm(prompts, desc=f"RouteLLM SW on {bench}", unit="prompt")
        probs["RouteLLM SW"], one = timed_single(rl_sw.calculate_strong_win_rate, scored)
        rates["RouteLLM SW"] = (one, one)
        probs["prefroute mf"], one = timed_single(lambda p: mf.predict_proba([p])[0], prompts)
        _, many = timed_batch(mf.predict_proba, prompts)
        rates["prefroute mf"] = (one, many)
        probs["RouteLLM MF (same weights)"], one = timed_single(rl_mf, prompts)
        rates["RouteLLM MF (same weights)"] = (one, one)
        probs["prompt length"] = prompt_length_probs(prompts)

        rows, curves = {}, {}
        for name, p in probs.items():
            m = router_metrics(es.strong_scores, es.weak_scores, p, name=name)
            rows[name] = {"apgr": m.apgr, "apgr_ci": list(m.apgr_ci), "cpt50_all": m.cpt["50"],
                          "cpt50_decile": m.cpt_routellm["50"]}
            curves[name] = m.curve
        rnd = random_metrics(es.strong_scores, es.weak_scores)
        orc = oracle_metrics(es.strong_scores, es.weak_scores)
        rows["random (10 seeds)"] = {"apgr": rnd.apgr, "apgr_std": rnd.apgr_std}
        rows["oracle"] = {"apgr": orc.apgr}
        curves["random (expected)"], curves["oracle"] = rnd.curve, orc.curve
        agreement = {
            "sw_spearman": float(spearmanr(probs["prefroute sw_bt"], probs["RouteLLM SW"])[0]),
            "sw_max_abs_diff": float(np.abs(probs["prefroute sw_bt"]
                                            - probs["RouteLLM SW"]).max()),
            "mf_max_abs_diff": float(np.abs(probs["prefroute mf"]
                                            - probs["RouteLLM MF (same weights)"]).max()),
        }
        results["benchmarks"][bench] = {
            "n": len(prompts), "routers": rows, "agreement": agreement, "curves": curves,
            "probs": {k: v.tolist() for k, v in probs.items()},
        }
        for name, (one, many) in rates.items():
            speed.setdefault(name, {"one": [], "batched": []})
            speed[name]["one"].append(one)
            speed[name]["batched"].append(many)
    for name, s in speed.items():  # over both benchmarks' prompts
        results["speed"][name] = {k: float(np.mean(v)) for k, v in s.items()}
    results["load"] = os.getloadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routellm.json").write_text(json.dumps(results, indent=2))
    figure = plot_side_by_side(results, ROOT / "benchmarks" / "figures" / "routellm_vs.png")
    for bench, r in results["benchmarks"].items():
        print(f"\n{bench} (n={r['n']}): agreement {r['agreement']}")
        print("| router | APGR [95% CI] | CPT(50%) all-rates / decile |")
        print("|---|---|---|")
        for name, m in r["routers"].items():
            ci = f" [{m['apgr_ci'][0]:.3f}, {m['apgr_ci'][1]:.3f}]" if "apgr_ci" in m else ""
            cpt = (f"{m['cpt50_all']:.1f}% / {m['cpt50_decile']:.1f}%" if "cpt50_all" in m
                   else "")
            print(f"| {name} | {m['apgr']:.3f}{ci} | {cpt} |")
    print("\n| router | prompts/s one at a time | prompts/s batched |")
    print("|---|---:|---:|")
    for name, s in results["speed"].items():
        print(f"| {name} | {s['one']:,.1f} | {s['batched']:,.1f} |")
    print(f"\nload average {results['load']}; figure {figure}")


def plot_side_by_side(results: dict, path: Path) -> Path:
    """Routing curves per benchmark, and RouteLLM SW against prefroute sw_bt per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "prefroute sw_bt": ("tab:blue", "-"), "RouteLLM SW": ("tab:orange", "--"),
        "prefroute mf": ("tab:green", "-"), "RouteLLM MF (same weights)": ("tab:red", ":"),
        "prompt length": ("tab:purple", "-"), "random (expected)": ("grey", ":"),
        "oracle": ("black", "-."),
    }
    benches = list(results["benchmarks"])
    fig, axes = plt.subplots(1, len(benches) + 1, figsize=(6 * (len(benches) + 1), 6.5))
    for ax, bench in zip(axes, benches):
        r = results["benchmarks"][bench]
        for name, (color, line) in styles.items():
            pts = r["curves"][name]
            apgr = r["routers"].get(name, r["routers"].get("random (10 seeds)"))["apgr"]
            ax.plot([100 * p["strong_rate"] for p in pts], [p["quality"] for p in pts],
                    color=color, linestyle=line, linewidth=1.6, label=f"{name} (APGR {apgr:.3f})")
        ax.set_xlabel("calls to the strong model (%)")
        ax.set_ylabel("quality (mean score)")
        ax.set_title(f"{bench}, n={r['n']}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax = axes[-1]
    for bench, color in zip(benches, ("tab:blue", "tab:orange")):
        probs = results["benchmarks"][bench]["probs"]
        ax.scatter(probs["RouteLLM SW"], probs["prefroute sw_bt"], s=12, color=color,
                   alpha=0.7, label=bench)
    lims = ax.get_xlim()
    ax.plot(lims, lims, color="grey", linestyle=":", label="equal")
    ax.set_xlabel("RouteLLM SW: P(strong wins)")
    ax.set_ylabel("prefroute sw_bt: P(strong wins)")
    ax.set_title("same prompt, both implementations")
    ax.legend(fontsize=8)
    fig.suptitle("prefroute and RouteLLM on the same AlpacaEval battles and wordllama embeddings")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
