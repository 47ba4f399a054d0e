"""Quality protocols: how routers are trained before they are scored on stored outcomes.

``run_golden_crossfit``
    The paper's golden-label setting (D_gold) without its MMLU validation split: for MMLU and
    GSM8K, K folds of the benchmark itself (grouped so near-duplicate prompts share a fold,
    stratified by which model won). For fold k a router trains on the golden battles of the
    other folds (strong vs weak, renamed to the router's pair names) plus the AlpacaEval
    judge battles, and scores fold k; the out-of-fold probabilities are evaluated together.
``run_transfer``
    Train once on AlpacaEval judge battles + MMLU-Pro golden battles (gpt-4o vs Mixtral),
    decontaminated against the MT-Bench, MMLU and GSM8K prompts, then evaluate on all three.

Anything that maps training battles to a probability function plugs in as a ``Scorer``:
``RouterScorer`` wraps a factory of unfitted WinPredictors; ``KnnScorer`` and
``LengthScorer`` are the reference baselines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prefroute._logging import logger
from prefroute.data.aliases import ModelAliases
from prefroute.data.battles import Battles
from prefroute.data.decontamination import decontaminate
from prefroute.data.loaders import apply_aliases, golden_battles, load_source
from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, OutcomeTable, load_outcomes
from prefroute.embed.base import Embedder, build_embedder
from prefroute.errors import ConfigError
from prefroute.evaluate.baselines import knn_probs, prompt_length_probs, strong_win_labels
from prefroute.evaluate.benchmarks import (
    EvalResult,
    EvalSet,
    evaluate_router,
    format_apgr,
    format_cpt,
    prepare_eval_set,
    results_markdown,
)
from prefroute.evaluate.metrics import router_metrics
from prefroute.routers.base import WinPredictor

PAIR_STRONG = "gpt-4-1106-preview"
PAIR_WEAK = "mixtral-8x7b-instruct-v0.1"
TRANSFER_GOLDEN_PAIR = ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1")
CROSSFIT_BENCHMARKS = ("mmlu", "gsm8k")
TRANSFER_BENCHMARKS = ("mt-bench", "mmlu", "gsm8k")
# RouteLLM paper, best router trained on Arena + golden-label data (APGR)
PAPER_GOLDEN_AUGMENTED_APGR = {"mmlu": 0.603, "gsm8k": 0.622}

ProbabilityFn = Callable[[list[str]], np.ndarray]


# scorers ------------------------------------------------------------------------------
class Scorer:
    """Learns from battles; returns a function prompts -> P(strong wins). Has a ``name``."""

    name: str

    def fit(self, train: Battles) -> ProbabilityFn:
        raise NotImplementedError


@dataclass
class RouterScorer(Scorer):
    """A router: ``factory()`` returns an unfitted WinPredictor for the pair names."""

    name: str
    factory: Callable[[], WinPredictor]
    source_weights: dict[str, float] = field(default_factory=dict)

    def fit(self, train: Battles) -> ProbabilityFn:
        if self.source_weights:
            from prefroute.training import weight_sources

            train = weight_sources(train, self.source_weights)
        predictor = self.factory()
        if not isinstance(predictor, WinPredictor):
            raise ConfigError(f"the factory of {self.name!r} returned {type(predictor).__name__}, "
                              "not a WinPredictor")
        predictor.fit(train)
        return predictor.predict_proba


@dataclass
class KnnScorer(Scorer):
    """Mean golden label (P(strong wins)) of the k nearest golden training prompts."""

    name: str = "knn-golden"
    k: int = 50
    embedder: str | dict | Embedder = "wordllama"
    strong_model: str = PAIR_STRONG
    weak_model: str = PAIR_WEAK
    source_prefix: str = "golden:"

    def fit(self, train: Battles) -> ProbabilityFn:
        golden = train.filter(np.array([str(s).startswith(self.source_prefix)
                                        for s in train.column("source")], dtype=bool))
        prompts, labels = strong_win_labels(golden, self.strong_model, self.weak_model)
        model = build_embedder(self.embedder)
        train_vectors = model.encode(prompts)
        return lambda eval_prompts: knn_probs(prompts, labels, eval_prompts, k=self.k,
                                              train_vectors=train_vectors,
                                              eval_vectors=model.encode(list(eval_prompts)))


@dataclass
class LengthScorer(Scorer):
    """Prompt length: no training."""

    name: str = "prompt-length"

    def fit(self, train: Battles) -> ProbabilityFn:
        return prompt_length_probs


# results ------------------------------------------------------------------------------
@dataclass
class ProtocolResult:
    """Per benchmark, one EvalResult per scorer; ``info`` says what the protocol did."""

    protocol: str
    results: dict[str, list[EvalResult]]
    info: dict = field(default_factory=dict)
    paper_apgr: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "info": self.info,
            "paper_apgr": self.paper_apgr,
            "results": {b: [r.to_dict() for r in rs] for b, rs in self.results.items()},
        }

    def summary_markdown(self) -> str:
        """router | APGR [95% CI] | CPT(50%) per benchmark, random and oracle included."""
        benchmarks = list(self.results)
        head = "| router | " + " | ".join(f"{b} APGR [95% CI] | {b} CPT(50%)" for b in benchmarks)
        lines = [head + " |", "|---|" + "---|---:|" * len(benchmarks)]
        names = [r.name for r in self.results[benchmarks[0]]]
        for name in names:
            row = [name]
            for b in benchmarks:
                r = next(x for x in self.results[b] if x.name == name)
                row += [format_apgr(r.router), format_cpt(r.cpt["50"])]
            lines.append("| " + " | ".join(row) + " |")
        for ref in ("random", "oracle"):
            row = [getattr(self.results[benchmarks[0]][0], ref).name]
            for b in benchmarks:
                m = getattr(self.results[b][0], ref)
                row += [format_apgr(m), format_cpt(m.cpt["50"])]
            lines.append("| " + " | ".join(row) + " |")
        if self.paper_apgr:
            row = ["paper (RouteLLM, golden-augmented best)"]
            for b in benchmarks:
                v = self.paper_apgr.get(b)
                row += [f"{v:.3f}" if v is not None else "", ""]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def detail_markdown(self) -> str:
        return results_markdown([r for rs in self.results.values() for r in rs])

    def plot(self, directory: str | Path) -> list[Path]:
        """One PNG per benchmark: ``<directory>/<protocol>_<benchmark>.png``."""
        from prefroute.evaluate.plots import plot_routing_curves

        paths = []
        for bench, rs in self.results.items():
            ref = ({"RouteLLM paper, golden-augmented best": self.paper_apgr[bench]}
                   if bench in self.paper_apgr else None)
            title = f"{bench} ({self.protocol}): {rs[0].n_prompts} prompts"
            paths.append(plot_routing_curves(rs, Path(directory) / f"{self.protocol}_{bench}.png",
                                             title=title, reference_apgr=ref))
        return paths


# data ---------------------------------------------------------------------------------
def judge_battles(data_dir: str | Path) -> Battles:
    """AlpacaEval judge battles with canonical model names (gpt-4-1106-preview, mixtral-...)."""
    return apply_aliases(load_source("alpaca_eval", data_dir), ModelAliases())


def near_duplicate_groups(prompts: Sequence[str], *, embedder: str | dict | Embedder = "wordllama",
                          threshold: float = 0.95, vectors: np.ndarray | None = None) -> np.ndarray:
    """Group id per prompt: connected components of the graph cosine >= ``threshold``.

    Identical texts always share a group; so do chains of near-copies, so no fold split by
    these groups puts a near-copy of an eval prompt into training.
    """
    import faiss
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if vectors is None:
        vectors = build_embedder(embedder).encode(list(prompts))
    n = len(prompts)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    lims, _, neighbours = index.range_search(np.ascontiguousarray(vectors, dtype=np.float32),
                                             float(threshold) - 1e-6)
    rows = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    graph = coo_matrix((np.ones(len(rows)), (rows, neighbours.astype(np.int64))), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # exact duplicates whose embedding differs (should not happen) still share a group
    by_text: dict[str, int] = {}
    for i, p in enumerate(prompts):
        labels[i] = by_text.setdefault(p, labels[i])
    return labels


def crossfit_folds(outcomes: OutcomeTable, strong_model: str, weak_model: str, *, n_folds: int = 5,
                   seed: int = 0, embedder: str | dict | Embedder = "wordllama",
                   group_threshold: float = 0.95) -> np.ndarray:
    """Fold id per row: near-duplicate groups kept together, stratified by the golden winner."""
    from sklearn.model_selection import StratifiedGroupKFold

    if n_folds < 2:
        raise ConfigError(f"The 'n_folds' parameter of crossfit_folds must be >= 2. Got {n_folds}.")
    groups = near_duplicate_groups(outcomes.prompts, embedder=embedder, threshold=group_threshold)
    gain = outcomes.column(strong_model) - outcomes.column(weak_model)
    label = np.where(np.isnan(gain), 3, np.sign(np.nan_to_num(gain)) + 1).astype(int)
    folds = np.empty(len(outcomes), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(outcomes)), label, groups)):
        folds[test] = k
    logger.info("%s: %d folds over %d near-duplicate groups (%d prompts)", outcomes.name, n_folds,
                len(np.unique(groups)), len(outcomes))
    return folds


def _fold_apgr(probs: np.ndarray, folds: np.ndarray, eval_set: EvalSet, n_folds: int
               ) -> list[float | None]:
    """APGR (RouteLLM rule) inside each fold: what pooling folds' probabilities costs or gains."""
    out: list[float | None] = []
    fold_of_kept = folds[eval_set.rows]
    for k in range(n_folds):
        mask = fold_of_kept == k
        s, w = eval_set.strong_scores[mask], eval_set.weak_scores[mask]
        if mask.sum() < 2 or s.mean() == w.mean():
            out.append(None)
            continue
        p = probs[eval_set.rows][mask]
        out.append(router_metrics(s, w, p, n_bootstrap=0, grid=2).apgr)
    return out


def _full_array(eval_set: EvalSet, probs: np.ndarray) -> np.ndarray:
    full = np.full(eval_set.n_total, np.nan)
    full[eval_set.rows] = probs
    return full


# protocols ----------------------------------------------------------------------------
def run_golden_crossfit(
    scorers: Sequence[Scorer],
    data_dir: str | Path,
    *,
    benchmarks: Sequence[str] = CROSSFIT_BENCHMARKS,
    n_folds: int = 5,
    seed: int = 0,
    embedder: str | dict | Embedder = "wordllama",
    n_bootstrap: int = 1000,
    include_judge_battles: bool = True,
    progress: bool = True,
) -> ProtocolResult:
    """Golden-label cross-fitting on MMLU / GSM8K (see the module docstring).

    Eval prompts within 0.95 cosine of an AlpacaEval prompt, and RouteLLM's listed
    contaminated prompts, are left out of the scores; near-copies across folds cannot occur
    (folds follow ``near_duplicate_groups``).
    """
    judge = judge_battles(data_dir) if include_judge_battles else None
    results: dict[str, list[EvalResult]] = {}
    info: dict = {"n_folds": n_folds, "seed": seed, "pair": [PAIR_STRONG, PAIR_WEAK],
                  "judge_battles": 0 if judge is None else len(judge), "benchmarks": {}}
    for bench in benchmarks:
        outcomes = load_outcomes(bench, data_dir)
        folds = crossfit_folds(outcomes, ROUTELLM_STRONG, ROUTELLM_WEAK, n_folds=n_folds, seed=seed,
                               embedder=embedder)
        eval_set = prepare_eval_set(outcomes, data_dir, train_prompts=None if judge is None else
                                    judge.prompts, embedder=embedder)
        golden_per_fold = []
        for k in range(n_folds):
            train_rows = np.flatnonzero(folds != k)
            gold = golden_battles(outcomes.subset(train_rows), ROUTELLM_STRONG, ROUTELLM_WEAK,
                                  strong_name=PAIR_STRONG, weak_name=PAIR_WEAK)
            golden_per_fold.append(gold if judge is None else Battles.concat([gold, judge]))
        info["benchmarks"][bench] = {
            "fold_sizes": np.bincount(folds, minlength=n_folds).tolist(),
            "train_battles_per_fold": [len(b) for b in golden_per_fold],
            "dropped": eval_set.dropped,
        }
        results[bench] = []
        for scorer in scorers:
            oof = np.full(len(outcomes), np.nan)
            steps = tqdm(range(n_folds), desc=f"crossfit {bench} {scorer.name}",
                         disable=not progress)
            for k in steps:
                test_rows = np.flatnonzero(folds == k)
                predict = scorer.fit(golden_per_fold[k])
                oof[test_rows] = predict([outcomes.prompts[i] for i in test_rows])
            result = evaluate_router(oof, outcomes, eval_set=eval_set, name=scorer.name,
                                     n_bootstrap=n_bootstrap, seed=seed)
            result.info["fold_apgr"] = _fold_apgr(oof, folds, eval_set, n_folds)
            results[bench].append(result)
    paper = {b: v for b, v in PAPER_GOLDEN_AUGMENTED_APGR.items() if b in benchmarks}
    return ProtocolResult("golden_crossfit", results, info, paper)


def transfer_training_battles(data_dir: str | Path, eval_prompts: Sequence[str], *,
                              embedder: str | dict | Embedder = "wordllama",
                              threshold: float = 0.95) -> tuple[Battles, dict]:
    """AlpacaEval judge battles + MMLU-Pro golden battles, minus near-copies of eval prompts."""
    judge = judge_battles(data_dir)
    pro = load_outcomes("mmlu_pro", data_dir)
    strong, weak = TRANSFER_GOLDEN_PAIR
    known = ~(np.isnan(pro.column(strong)) | np.isnan(pro.column(weak)))
    gold = golden_battles(pro, strong, weak, strong_name=PAIR_STRONG, weak_name=PAIR_WEAK)
    src = [pro.meta["src"][i] for i in np.flatnonzero(known)]
    train = Battles.concat([judge, gold])
    kept, report = decontaminate(train, eval_prompts, embedder=embedder, threshold=threshold)
    removed = np.zeros(len(train), dtype=bool)
    removed[report.train_rows] = True
    removed_gold = removed[len(judge):]
    judge_prompts = judge.prompts
    removed_judge = np.flatnonzero(removed[: len(judge)])
    is_mmlu = np.array([str(s).startswith("ori_mmlu") for s in src], dtype=bool)
    info = {
        "threshold": threshold,
        "judge_battles": len(judge),
        "mmlu_pro_golden_battles": len(gold),
        "mmlu_pro_from_mmlu": int(is_mmlu.sum()),
        "removed_judge_battles": len(removed_judge),
        "removed_judge_prompts": len({judge_prompts[i] for i in removed_judge}),
        "removed_mmlu_pro_battles": int(removed_gold.sum()),
        "removed_mmlu_pro_from_mmlu": int((removed_gold & is_mmlu).sum()),
        "kept_battles": len(kept),
    }
    logger.info("transfer training data: %s", info)
    return kept, info


def run_transfer(
    scorers: Sequence[Scorer],
    data_dir: str | Path,
    *,
    benchmarks: Sequence[str] = TRANSFER_BENCHMARKS,
    seed: int = 0,
    embedder: str | dict | Embedder = "wordllama",
    n_bootstrap: int = 1000,
    threshold: float = 0.95,
    progress: bool = True,
) -> ProtocolResult:
    """Train once on judge + MMLU-Pro golden battles; evaluate on MT-Bench, MMLU, GSM8K."""
    tables = {b: load_outcomes(b, data_dir) for b in benchmarks}
    eval_prompts: list[str] = []
    for table in tables.values():
        eval_prompts += table.prompts
        for turns in table.meta.get("turns") or []:
            eval_prompts += [t for t in turns[1:] if isinstance(t, str)]
    train, info = transfer_training_battles(data_dir, sorted(set(eval_prompts)), embedder=embedder,
                                            threshold=threshold)
    train_prompts = sorted(set(train.prompts))
    eval_sets = {b: prepare_eval_set(t, data_dir, train_prompts=train_prompts, embedder=embedder,
                                     contamination_threshold=threshold)
                 for b, t in tables.items()}
    info["benchmarks"] = {b: {"dropped": s.dropped, "n_prompts": len(s.prompts)}
                          for b, s in eval_sets.items()}
    info["train_sources"] = dict(Counter(str(s).split(":")[0] for s in train.column("source")))
    results: dict[str, list[EvalResult]] = {b: [] for b in benchmarks}
    for scorer in tqdm(scorers, desc="transfer", disable=not progress):
        predict = scorer.fit(train)
        for bench, eval_set in eval_sets.items():
            probs = _full_array(eval_set, predict(eval_set.prompts))
            results[bench].append(evaluate_router(probs, tables[bench], eval_set=eval_set,
                                                  name=scorer.name, n_bootstrap=n_bootstrap,
                                                  seed=seed))
    return ProtocolResult("transfer", results, info)
