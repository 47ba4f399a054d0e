"""``auto``: choose or combine candidate routers by honest cross-validation.

Learned routers cluster at the level of a plain kNN ("the routing plateau"), and which
candidate wins depends on the data (a sharp neighbourhood for MMLU subjects, length and
numbers for GSM8K). So ``auto`` does not guess:

1. It embeds every distinct training prompt once (one ``MemoEmbedder`` shared by all
   candidates) and draws folds over near-duplicate groups (``auto_crossfit``).
2. Each candidate (sw_bt at several gamma / top-k, mf, kNN, logistic regression on
   embeddings + surface features, prompt length) is fitted on the other folds and scores the
   held-out pair battles: an out-of-fold (OOF) table.
3. It picks the candidate with the best OOF APGR, or a logistic stack of all candidates
   (itself cross-fitted on the OOF table) when that is better out of fold.
4. A cross-fitted Platt (or isotonic) map makes the output a calibrated probability.
5. The chosen members are refitted on all battles.

The checkpoint holds each member as its own checkpoint under ``members/NN/``, the stack
weights, the calibrator, and the OOF table (summary in config.json, the OOF probabilities
as tensors). ``prefroute info CHECKPOINT`` prints them.
"""

from __future__ import annotations

import copy
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.embed.base import Embedder, build_embedder
from prefroute.embed.memo import FeatureMemo, MemoEmbedder, MemoFeatureEmbedder
from prefroute.errors import (
    CheckpointError,
    ConfigError,
    PrefrouteError,
    check_choice,
    check_int,
    check_range,
)
from prefroute.prob_calibration import METHODS, ProbabilityCalibrator, brier, crossfit_calibrated
from prefroute.router import checked_object, checked_tensor, is_number
from prefroute.routers.auto_crossfit import (
    crossfit_stack,
    grouped_folds,
    routed_gain,
    stack_predict,
)
from prefroute.routers.base import WinPredictor, register_router, router_class
from prefroute.routers.pair_data import PairRows, pair_rows

_FEATURES = {"name": "features", "params": {"inner": "wordllama", "feature_weight": 0.5}}
_GOLDEN_X30 = {"golden": 30.0}

#: The default candidates: RESULTS §2a's strongest settings of each family, plus the
#: baselines. ``source_weights`` multiply battle weights by source prefix, as
#: ``--source-weight`` does (golden battles are few beside judge battles).
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"name": "sw_bt", "router": "sw_bt", "params": {}},
    {"name": "sw_bt-features-golden30-top100", "router": "sw_bt",
     "params": {"embedder": _FEATURES, "top_k": 100}, "source_weights": _GOLDEN_X30},
    {"name": "sw_bt-features-golden30-gamma100", "router": "sw_bt",
     "params": {"embedder": _FEATURES, "gamma": 100.0}, "source_weights": _GOLDEN_X30},
    {"name": "mf-features-golden30", "router": "mf",
     "params": {"embedder": _FEATURES, "epochs": 10},
     "source_weights": _GOLDEN_X30},
    {"name": "knn-50", "router": "knn", "params": {"k": 50}},
    {"name": "knn-200-features", "router": "knn", "params": {"k": 200, "embedder": _FEATURES}},
    {"name": "logistic", "router": "logistic", "params": {}},
    {"name": "length", "router": "length", "params": {}},
)
COMBINE = ("auto", "select", "stack")
_CANDIDATE_KEYS = {"name", "router", "params", "source_weights"}
MAX_MEMBERS = 32
MAX_NAME_CHARS = 200  # a candidate / member name: a plain label
MEMBERS_DIR = "members"
# golden battles of the pair needed before auto scores candidates on them alone: below this the
# out-of-fold APGR of a few hundred items is too noisy to choose by
MIN_GOLDEN_TO_SCORE = 200


def _check_candidates(candidates: Any, owner: str) -> list[dict[str, Any]]:
    if not isinstance(candidates, (list, tuple)) or not candidates:
        raise ConfigError(f"The 'candidates' parameter of {owner} must be a non-empty list of "
                          f"dicts. Got {candidates!r} instead.")
    if len(candidates) > MAX_MEMBERS:
        raise ConfigError(f"The 'candidates' parameter of {owner} takes at most {MAX_MEMBERS}.")
    names = set()
    out = []
    for i, cand in enumerate(candidates):
        if not isinstance(cand, dict) or not {"name", "router"} <= set(cand):
            raise ConfigError(f"candidate {i} of {owner} must be a dict with 'name' and 'router'"
                              f" (and optional 'params', 'source_weights'). Got {cand!r}.")
        if not is_plain_name(cand["name"]):
            raise ConfigError(f"candidate {i} of {owner}: 'name' must be a plain name (1.."
                              f"{MAX_NAME_CHARS} printable characters, no '/' or '\\'). "
                              f"Got {cand['name']!r:.{MAX_NAME_CHARS + 10}}.")
        unknown = sorted(set(cand) - _CANDIDATE_KEYS)
        if unknown:
            raise ConfigError(f"candidate {cand['name']!r} has unknown keys {unknown}; "
                              f"allowed: {sorted(_CANDIDATE_KEYS)}")
        if cand["router"] == "auto":
            raise ConfigError(f"candidate {cand['name']!r}: auto cannot contain auto")
        router_class(cand["router"])  # known router, or a ConfigError naming the known ones
        if cand["name"] in names:
            raise ConfigError(f"two candidates are called {cand['name']!r}")
        names.add(cand["name"])
        for key in ("params", "source_weights"):
            if not isinstance(cand.get(key) or {}, dict):
                raise ConfigError(f"candidate {cand['name']!r}: {key!r} must be a dict")
        out.append(cand)
    return out


@register_router
class AutoRouter(WinPredictor):
    """Cross-fitted selection or stacking of candidate routers, with calibrated output.

    Parameters
    ----------
    strong_model, weak_model: the pair; held-out items are the battles between them.
    embedder: the topical embedder the candidates share (embedded once per prompt).
    candidates: list of ``{"name", "router", "params", "source_weights"}``; None: the
        defaults (``DEFAULT_CANDIDATES``).
    n_folds, seed: cross-fitting folds over near-duplicate groups.
    group_threshold: cosine at which prompts count as near-duplicates (kept in one fold).
    combine: ``"stack"`` (default: the cross-fitted logistic stack of every candidate that
        fits), ``"auto"`` (the stack only when its OOF APGR beats the best single candidate)
        or ``"select"`` (the best single candidate). Choosing one of several near-tied
        candidates by OOF APGR is noisy: on RouteLLM's MMLU it picked kNN in 4 of 5 folds
        and landed 0.008 under the best candidate, where the stack was 0.002 above it
        (benchmarks/RESULTS.md, issue 15). A stack scores every member per prompt.
    stack_c: inverse L2 strength of the logistic combiner.
    calibration: ``"platt"`` (keeps the routing order), ``"isotonic"`` or ``"none"``.
    keep_candidates: also refit every candidate on all battles and keep them in memory as
        ``candidate_models_`` (for comparisons; never saved).
    share_embeddings: embed each distinct prompt (and its surface features) once for all
        candidates and folds; False lets every fit embed on its own (the slow, plain way).
    score_sources: which pair battles define the out-of-fold score. ``"auto"`` (default):
        the golden ones (labels from the models' graded correctness, what APGR measures) when
        there are at least ``MIN_GOLDEN_TO_SCORE``, else every pair battle. ``"all"``: every
        pair battle. A list of source prefixes (e.g. ``["golden"]``, ``["judge"]``): those.
        All battles still train every candidate.
    progress: show a tqdm bar.

    Attributes
    ----------
    members_: fitted member WinPredictors; member_names_; mode_ ("select" or "stack");
    stack_weights_, stack_intercept_; calibrator_; oof_table_ (one dict per candidate plus
    the stack); oof_probs_ [n_items, n_ok] (columns: candidate_names_, the candidates that
    did not fail), oof_labels_, oof_folds_.
    """

    router_type = "auto"

    def __init__(self, *, strong_model: str, weak_model: str,
                 embedder: str | dict[str, Any] | Embedder = "wordllama",
                 candidates: list[dict[str, Any]] | None = None, n_folds: int = 5, seed: int = 0,
                 group_threshold: float = 0.95, combine: str = "stack", stack_c: float = 1.0,
                 calibration: str = "platt", keep_candidates: bool = False,
                 share_embeddings: bool = True, score_sources: str | list[str] = "auto",
                 progress: bool = True) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.candidates = candidates
        self.n_folds = n_folds
        self.seed = seed
        self.group_threshold = group_threshold
        self.combine = combine
        self.stack_c = stack_c
        self.calibration = calibration
        self.keep_candidates = keep_candidates
        self.share_embeddings = share_embeddings
        self.score_sources = score_sources
        self.progress = progress

    # parameters ---------------------------------------------------------------------
    def _check_params(self) -> list[dict[str, Any]]:
        owner = type(self).__name__
        check_int("n_folds", owner, self.n_folds, low=2)
        check_int("seed", owner, self.seed, low=0)
        check_range("group_threshold", owner, self.group_threshold, low=0.0, high=1.0,
                    low_inclusive=False)
        check_choice("combine", owner, self.combine, COMBINE)
        check_range("stack_c", owner, self.stack_c, low=0.0, low_inclusive=False)
        check_choice("calibration", owner, self.calibration, METHODS)
        check_choice("progress", owner, self.progress, (True, False))
        check_choice("keep_candidates", owner, self.keep_candidates, (True, False))
        check_choice("share_embeddings", owner, self.share_embeddings, (True, False))
        if self.score_sources not in ("auto", "all") and (
                not isinstance(self.score_sources, (list, tuple)) or not self.score_sources
                or not all(isinstance(x, str) and x for x in self.score_sources)):
            raise ConfigError(f"The 'score_sources' parameter of {owner} must be 'auto', 'all' "
                              f"or a non-empty list of source prefixes. Got "
                              f"{self.score_sources!r}.")
        candidates = list(DEFAULT_CANDIDATES) if self.candidates is None else self.candidates
        return _check_candidates(candidates, owner)

    def _build_candidate(self, cand: dict[str, Any], memo: MemoEmbedder) -> WinPredictor:
        """An unfitted candidate whose embedder reuses the shared memo where it can."""
        cls = router_class(cand["router"])
        params = copy.deepcopy(cand.get("params") or {})
        accepted = cls._param_names()
        if "embedder" in accepted and self.share_embeddings:
            default = inspect.signature(cls.__init__).parameters["embedder"].default
            params["embedder"] = _share_embedder(params.get("embedder", default), memo,
                                                 self._feature_memo)
        if "progress" in accepted:
            params.setdefault("progress", False)
        try:
            return cls(strong_model=self.strong_model, weak_model=self.weak_model, **params)
        except TypeError as e:
            raise ConfigError(f"candidate {cand['name']!r}: bad parameters ({e})") from None

    def _candidate_battles(self, battles: Battles, cand: dict[str, Any]) -> Battles:
        weights = cand.get("source_weights") or {}
        if not weights:
            return battles
        from prefroute.training import weight_sources

        return weight_sources(battles, weights)

    # fit ----------------------------------------------------------------------------
    def _fit(self, battles: Battles) -> None:
        from prefroute.evaluate.protocols import near_duplicate_groups

        candidates = self._check_params()
        memo = MemoEmbedder(self.embedder)
        self._feature_memo = FeatureMemo()
        pairs = pair_rows(battles, self.strong_model, self.weak_model)
        pairs, self.scored_on_ = _scoring_battles(pairs, battles, self.score_sources)
        distinct, code = np.unique(np.array(battles.prompts, dtype=object), return_inverse=True)
        distinct = [str(p) for p in distinct]
        vectors = memo.encode(distinct)  # every prompt embedded once, for all candidates
        groups = near_duplicate_groups(distinct, vectors=vectors,
                                       threshold=float(self.group_threshold))
        n_groups = int(groups.max()) + 1
        pair_counts = np.bincount(groups[code[pairs.rows]], minlength=n_groups)
        fold_of_group = grouped_folds(groups, pair_counts, int(self.n_folds), int(self.seed))
        battle_fold = fold_of_group[groups[code]]
        item_fold = battle_fold[pairs.rows]
        labels = pairs.labels
        n_cand = len(candidates)
        oof = np.full((len(pairs), n_cand), np.nan)
        status = ["ok"] * n_cand
        seconds = np.zeros(n_cand)
        total = int(self.n_folds) * n_cand + n_cand
        bar = tqdm(total=total, desc="auto", unit="fit", disable=not self.progress)
        for k in range(int(self.n_folds)):
            train = battles.filter(battle_fold != k)
            test_items = np.flatnonzero(item_fold == k)
            test_prompts = [pairs.prompts[i] for i in test_items]
            for j, cand in enumerate(candidates):
                bar.set_postfix_str(f"fold {k + 1}/{self.n_folds} {cand['name']}")
                if status[j] == "ok":
                    try:
                        started = time.perf_counter()
                        model = self._build_candidate(cand, memo)
                        model.fit(self._candidate_battles(train, cand))
                        oof[test_items, j] = model.predict_proba(test_prompts)
                        seconds[j] += time.perf_counter() - started
                    except PrefrouteError as e:
                        status[j] = f"failed in fold {k}: {e}"
                        logger.warning("auto: candidate %s left out: %s", cand["name"], e)
                bar.update(1)
        ok = [j for j in range(n_cand) if status[j] == "ok"]
        if not ok:
            bar.close()
            raise ConfigError("auto: every candidate failed; see the warnings above")

        table = []
        for j, cand in enumerate(candidates):
            row = {"name": cand["name"], "router": cand["router"],
                   "params": cand.get("params") or {},
                   "source_weights": cand.get("source_weights") or {}, "status": status[j],
                   "crossfit_seconds": round(float(seconds[j]), 2)}
            if status[j] == "ok":
                row.update(self._oof_scores(oof[:, j], labels, item_fold))
            table.append(row)
        best = max(ok, key=lambda j: table[j]["oof_area"])
        stacked = crossfit_stack(oof[:, ok], labels, item_fold, c=float(self.stack_c))
        stack_row = {"name": "stack", "router": "stack", "params": {"c": self.stack_c},
                     "source_weights": {}, "status": "ok",
                     **self._oof_scores(stacked, labels, item_fold)}
        use_stack = self.combine == "stack" or (
            self.combine == "auto" and len(ok) > 1
            and stack_row["oof_area"] > table[best]["oof_area"])
        mode = "stack" if use_stack else "select"
        chosen_oof = stacked if use_stack else oof[:, best]
        for row in table:
            row["chosen"] = False
        stack_row["chosen"] = use_stack
        if not use_stack:
            table[best]["chosen"] = True
        table.append(stack_row)

        calibrator = ProbabilityCalibrator(self.calibration).fit(chosen_oof, labels)
        if self.calibration == "platt" and calibrator.a_ <= 0:
            logger.warning("auto: the Platt slope is %.3g <= 0 (the chosen scores do not rank "
                           "the held-out battles); calibration is left out", calibrator.a_)
            calibrator = ProbabilityCalibrator("none")
        member_idx = ok if use_stack else [best]
        if use_stack:
            from prefroute.routers.auto_crossfit import clipped_logit
            from prefroute.routers.logistic import fit_soft_logistic

            weights, intercept = fit_soft_logistic(clipped_logit(oof[:, ok]), labels,
                                                   np.ones(len(labels)), c=float(self.stack_c))
        else:
            weights, intercept = np.ones(1), 0.0
        refit = {}
        for j in (ok if self.keep_candidates else member_idx):
            bar.set_postfix_str(f"refit {candidates[j]['name']}")
            model = self._build_candidate(candidates[j], memo)
            refit[j] = model.fit(self._candidate_battles(battles, candidates[j]))
            bar.update(1)
        members = [refit[j] for j in member_idx]
        self.candidate_models_ = {candidates[j]["name"]: m for j, m in refit.items()}
        bar.update(total - bar.n)
        bar.close()
        memo.frozen = self._feature_memo.frozen = True  # serving must not grow the memos
        logger.info("auto: %s (%s), OOF APGR %.3f", mode,
                    ", ".join(candidates[j]["name"] for j in member_idx),
                    stack_row["oof_apgr"] if use_stack else table[best]["oof_apgr"])
        self.members_ = members
        self.member_names_ = [candidates[j]["name"] for j in member_idx]
        self.mode_ = mode
        self.stack_weights_ = np.asarray(weights, dtype=np.float64)
        self.stack_intercept_ = float(intercept)
        self.calibrator_ = calibrator
        self.oof_table_ = table
        # failed candidates have no OOF column: the stored table stays finite
        self.oof_probs_ = oof[:, ok]
        self.oof_labels_ = labels
        self.oof_folds_ = item_fold
        self.candidate_names_ = [candidates[j]["name"] for j in ok]

    def _oof_scores(self, probs: np.ndarray, labels: np.ndarray, folds: np.ndarray
                    ) -> dict[str, float]:
        area, apgr = routed_gain(probs, labels)
        calibrated = crossfit_calibrated(probs, labels, folds, method=(
            self.calibration if self.calibration != "none" else "platt"))
        return {"oof_area": area, "oof_apgr": apgr, "oof_brier": brier(probs, labels),
                "oof_brier_calibrated": brier(calibrated, labels)}

    # predict ------------------------------------------------------------------------
    def uncalibrated_proba(self, prompts: list[str]) -> np.ndarray:
        """The chosen member's (or the stack's) P before the calibration map."""
        member_probs = np.column_stack([m.predict_proba(prompts) for m in self.members_])
        if self.mode_ == "select":
            return member_probs[:, 0]
        return stack_predict(member_probs, self.stack_weights_, self.stack_intercept_)

    def member_proba(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """Each member's own P(strong wins) (for disagreement-based selection)."""
        return {n: m.predict_proba(prompts) for n, m in zip(self.member_names_, self.members_,
                                                             strict=True)}

    def _predict(self, prompts: list[str]) -> np.ndarray:
        return self.calibrator_.transform(self.uncalibrated_proba(prompts))

    # checkpoint ---------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        cal_tensors, cal_state = self.calibrator_.to_state()
        tensors = {"stack_weights": self.stack_weights_,
                   "stack_intercept": np.array([self.stack_intercept_]),
                   "oof_probs": self.oof_probs_, "oof_labels": self.oof_labels_,
                   "oof_folds": self.oof_folds_.astype(np.int64), **cal_tensors}
        extra = {"mode": self.mode_,
                 "members": [{"name": n, "router": m.router_type}
                             for n, m in zip(self.member_names_, self.members_, strict=True)],
                 "candidates": self.candidate_names_, "calibration": cal_state,
                 "stack_weights": self.stack_weights_.tolist(),
                 "stack_intercept": self.stack_intercept_,
                 "oof_table": self.oof_table_, "scored_on": self.scored_on_}
        return tensors, extra

    def _save_files(self, directory: Path) -> None:
        for i, member in enumerate(self.members_):
            member.save_pretrained(Path(directory) / MEMBERS_DIR / f"{i:02d}")

    def _load_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any],
                    directory: Path) -> None:
        directory = Path(directory)
        where = str(directory / "config.json")
        state = checked_auto_state(extra, where)
        members_info = state["members"]
        n = len(members_info)
        weights = checked_tensor(tensors, "stack_weights", where, (n,))
        intercept = checked_tensor(tensors, "stack_intercept", where, (1,))
        self.members_ = [self._load_member(directory, i, info)
                         for i, info in enumerate(members_info)]
        self.calibrator_ = ProbabilityCalibrator.from_state(tensors, state["calibration"], where)
        self.member_names_ = [m["name"] for m in members_info]
        self.mode_ = state["mode"]
        self.stack_weights_ = weights
        self.stack_intercept_ = float(intercept[0])
        self.oof_table_ = state["oof_table"]
        self.scored_on_ = state["scored_on"]
        self.candidate_names_ = state["candidates"]
        self._load_oof(tensors, where)

    def _load_member(self, directory: Path, i: int, info: dict[str, str]) -> WinPredictor:
        """Member ``i``, from ``members/NN`` (a folder named by its position, never by the
        checkpoint), of the router type and pair the auto config records."""
        sub = directory / MEMBERS_DIR / f"{i:02d}"
        member = WinPredictor.from_pretrained(sub)
        if member.router_type != info["router"]:
            raise CheckpointError(f"{sub}: holds a {member.router_type!r} router, "
                                  f"config.json says {info['router']!r}")
        if (member.strong_model, member.weak_model) != (self.strong_model, self.weak_model):
            raise CheckpointError(f"{sub}: member pair ({member.strong_model}, "
                                  f"{member.weak_model}) differs from the auto router's")
        return member

    def _load_oof(self, tensors: dict[str, np.ndarray], where: str) -> None:
        """The out-of-fold tensors: [n_items, n_candidates] probabilities in [0, 1], one
        label in [0, 1] and one fold number per item (all absent in old checkpoints)."""
        if "oof_probs" not in tensors:
            self.oof_probs_ = self.oof_labels_ = self.oof_folds_ = None
            return
        probs = checked_tensor(tensors, "oof_probs", where, (None, len(self.candidate_names_)))
        n_items = probs.shape[0]
        labels = checked_tensor(tensors, "oof_labels", where, (n_items,))
        folds = checked_tensor(tensors, "oof_folds", where, (n_items,))
        if (((probs < 0) | (probs > 1)).any() or ((labels < 0) | (labels > 1)).any()
                or (folds < 0).any() or (folds != np.round(folds)).any()):
            raise CheckpointError(f"{where}: oof_probs and oof_labels must lie in [0, 1] and "
                                  "oof_folds be fold numbers")
        self.oof_probs_, self.oof_labels_, self.oof_folds_ = probs, labels, folds.astype(np.int64)


# checkpoint state ------------------------------------------------------------------------
_OOF_NUMBERS = ("oof_area", "oof_apgr", "oof_brier", "oof_brier_calibrated",
                "crossfit_seconds")


def is_plain_name(name: Any) -> bool:
    """1..MAX_NAME_CHARS printable characters, no path separator, not '.' or '..'."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
            and "/" not in name and "\\" not in name and name not in (".", ".."))


def checked_member_name(name: Any, where: str, field: str) -> str:
    """A member or candidate name: a plain label, never a path or a control character."""
    if not is_plain_name(name):
        raise CheckpointError(
            f"{where}: {field} must be a plain name (1..{MAX_NAME_CHARS} printable characters, "
            f"no '/' or '\\'), got {name!r:.{MAX_NAME_CHARS + 10}}")
    return name


def _checked_members(members: Any, where: str) -> list[dict[str, str]]:
    """state.members: 1..MAX_MEMBERS {name, router} objects, distinct plain names, known
    router types other than auto."""
    if (not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS
            or not all(isinstance(m, dict) for m in members)):
        raise CheckpointError(f"{where}: state.members must list 1..{MAX_MEMBERS} "
                              "{name, router} objects")
    out = []
    for i, member in enumerate(members):
        name = checked_member_name(member.get("name"), where, f"state.members[{i}].name")
        router = member.get("router")
        try:
            if router == "auto":
                raise ConfigError("auto cannot contain auto")
            router_class(router if isinstance(router, str) else repr(router))
        except ConfigError as e:
            raise CheckpointError(f"{where}: state.members[{i}].router: {e}") from None
        out.append({"name": name, "router": router})
    if len({m["name"] for m in out}) != len(out):
        raise CheckpointError(f"{where}: state.members names must be distinct")
    return out


def _checked_numbers(values: Any, where: str, field: str, length: int) -> list[float]:
    if not isinstance(values, list) or len(values) != length or not all(
            is_number(v) for v in values):
        raise CheckpointError(f"{where}: {field} must be {length} finite numbers (one per "
                              "member)")
    return [float(v) for v in values]


def _checked_oof_row(row: Any, where: str, field: str) -> dict[str, Any]:
    row = checked_object(row, where, field)
    for key in ("name", "router", "status"):
        if not isinstance(row.get(key, ""), str):
            raise CheckpointError(f"{where}: {field}.{key} must be a string")
    for key in _OOF_NUMBERS:
        if row.get(key) is not None and not is_number(row[key]):
            raise CheckpointError(f"{where}: {field}.{key} must be a finite number")
    if not isinstance(row.get("chosen", False), bool):
        raise CheckpointError(f"{where}: {field}.chosen must be true or false")
    for key in ("params", "source_weights"):
        checked_object(row.get(key) or {}, where, f"{field}.{key}")
    return row


def _checked_calibration_state(calibration: Any, where: str) -> dict[str, Any]:
    calibration = checked_object(calibration, where, "state.calibration")
    for key in ("a", "b"):
        if not is_number(calibration.get(key)):
            raise CheckpointError(f"{where}: state.calibration.{key} must be a finite number")
    return calibration


def checked_auto_state(extra: Any, where: str) -> dict[str, Any]:
    """An auto checkpoint's state, every value the loader and ``describe_auto`` read
    type-checked; a CheckpointError naming ``where`` and the key otherwise."""
    extra = checked_object(extra, where, "state")
    members = _checked_members(extra.get("members"), where)
    mode = extra.get("mode")
    if mode not in ("select", "stack") or (mode == "select" and len(members) != 1):
        raise CheckpointError(f"{where}: state.mode must be 'select' (one member) or 'stack'")
    candidates = extra.get("candidates") or []
    if not isinstance(candidates, list) or len(candidates) > MAX_MEMBERS:
        raise CheckpointError(f"{where}: state.candidates must list at most {MAX_MEMBERS} names")
    candidates = [checked_member_name(c, where, f"state.candidates[{i}]")
                  for i, c in enumerate(candidates)]
    weights = extra.get("stack_weights")
    if weights is not None:
        _checked_numbers(weights, where, "state.stack_weights", len(members))
    intercept = extra.get("stack_intercept", 0.0)
    if not is_number(intercept):
        raise CheckpointError(f"{where}: state.stack_intercept must be a finite number")
    table = extra.get("oof_table") or []
    if not isinstance(table, list) or len(table) > MAX_MEMBERS + 1:
        raise CheckpointError(f"{where}: state.oof_table must list at most {MAX_MEMBERS + 1} "
                              "rows")
    table = [_checked_oof_row(row, where, f"state.oof_table[{i}]")
             for i, row in enumerate(table)]
    scored_on = extra.get("scored_on") or ""
    if not isinstance(scored_on, str):
        raise CheckpointError(f"{where}: state.scored_on must be a string")
    return {"members": members, "mode": mode, "candidates": candidates, "oof_table": table,
            "scored_on": scored_on,
            "calibration": _checked_calibration_state(extra.get("calibration"), where)}


def _scoring_battles(pairs: PairRows, battles: Battles, score_sources: str | list[str]
                     ) -> tuple[PairRows, str]:
    """The pair battles that define the out-of-fold score, and a line saying which."""
    if score_sources == "all":
        return pairs, f"every pair battle ({len(pairs)})"
    if score_sources != "auto":
        keep = _source_mask(pairs, battles, list(score_sources))
        if not keep.any():
            raise ConfigError(f"score_sources={score_sources}: no battle between the pair has "
                              "such a source")
        return _take(pairs, keep), f"{int(keep.sum())} pair battles from " \
                                   f"{', '.join(score_sources)}"
    golden = _source_mask(pairs, battles, ["golden"])
    n_golden = int(golden.sum())
    if n_golden >= MIN_GOLDEN_TO_SCORE:
        logger.info("auto: scoring candidates on the %d golden pair battles (of %d)",
                    n_golden, len(pairs))
        return _take(pairs, golden), f"{n_golden} golden pair battles (of {len(pairs)})"
    return pairs, f"every pair battle ({len(pairs)}; {n_golden} golden, fewer than " \
                  f"{MIN_GOLDEN_TO_SCORE})"


def _source_mask(pairs: PairRows, battles: Battles, prefixes: list[str]) -> np.ndarray:
    """Which pair battles have a source starting with one of ``prefixes`` (a mask)."""
    sources = battles.column("source")
    return np.array([str(sources[r] or "").startswith(tuple(prefixes)) for r in pairs.rows],
                    dtype=bool)


def _take(pairs: PairRows, keep: np.ndarray) -> PairRows:
    return PairRows(rows=pairs.rows[keep], prompts=[p for p, k in zip(pairs.prompts, keep,
                                                                      strict=True) if k],
                    labels=pairs.labels[keep], weights=pairs.weights[keep])


def _share_embedder(spec: Any, memo: MemoEmbedder, features: FeatureMemo) -> Any:
    """``spec`` with the shared memo in place of an embedder equal to its inner one."""
    if isinstance(spec, Embedder):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec, "params": {}}
    if not isinstance(spec, dict):
        return spec
    if spec.get("name") == "features":
        params = dict(spec.get("params") or {})
        inner = build_embedder(params.pop("inner", "wordllama"))
        if inner.spec() == memo.spec():
            return MemoFeatureEmbedder(inner=memo, memo=features, **params)
        return spec
    if spec.get("name") not in ("tfidf",) and build_embedder(spec).spec() == memo.spec():
        return memo
    return spec


def describe_auto(config: dict[str, Any], where: str = "config.json") -> str:
    """The members, weights and OOF table of an auto checkpoint's config, as text (every
    string from the checkpoint escaped); a malformed state is a CheckpointError."""
    from prefroute.model_card import printable

    raw = config.get("state")
    state = checked_auto_state(raw, where)
    members = state["members"]
    lines = [f"mode: {state['mode']}"]
    lines.append("members: " + ", ".join(f"{printable(m['name'])} ({m['router']})"
                                         for m in members))
    if state["mode"] == "stack" and raw.get("stack_weights") is not None:
        weights = ", ".join(f"{printable(m['name'])} {w:+.3f}"
                            for m, w in zip(members, raw["stack_weights"], strict=True))
        lines.append(f"stack weights (on logit P): {weights}; "
                     f"intercept {raw.get('stack_intercept', 0.0):+.3f}")
    lines.append(f"calibration: {printable(state['calibration'].get('method'))}")
    if state["scored_on"]:
        lines.append(f"out-of-fold scores over: {printable(state['scored_on'])}")
    lines.append("")
    lines.append("| candidate | router | OOF APGR | Brier raw | Brier calibrated | chosen "
                 "| status |")
    lines.append("|---|---|---:|---:|---:|---|---|")
    for row in state["oof_table"]:
        def fmt(key: str, row: dict = row) -> str:
            v = row.get(key)
            return f"{v:.4f}" if is_number(v) else "-"
        lines.append(f"| {printable(row.get('name'))} | {printable(row.get('router'))} | "
                     f"{fmt('oof_apgr')} | {fmt('oof_brier')} | {fmt('oof_brier_calibrated')} "
                     f"| {'yes' if row.get('chosen') else ''} | {printable(row.get('status'))} |")
    return "\n".join(lines)
