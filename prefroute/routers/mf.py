"""The matrix-factorisation win predictor: RouteLLM's best router (``mf``).

Each model m has an embedding P_m (L2-normalised at use); a prompt's frozen text embedding
e_q is projected by W; a linear head w scores the pair:

    s(m, q) = w . (normalize(P_m) * W e_q)        P(a beats b | q) = sigmoid(s(a, q) - s(b, q))

Since s(m, q) = e_q . W^T (w * normalize(P_m)), all models collapse to one matrix
V = W^T diag(w) normalize(P)^T of shape [embedding dim, n models], computed once after
training or loading. Scoring is then an embedding and a matrix product in numpy; for the
router's own pair it is one dot product with v = V[:, strong] - V[:, weak].

With ``projection_bias=True`` the projection gets a bias c (W e_q + c), which adds a
per-model constant o_m = w . (normalize(P_m) * c) to every score: one more number per model,
the same single dot product. RouteLLM has no such bias; see the parameter's note.

Training embeds each distinct prompt once (36,700 AlpacaEval battles share 644 prompts)
and indexes the embeddings per battle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import expit

from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.embed import build_embedder
from prefroute.embed.base import Embedder
from prefroute.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    check_choice,
    check_int,
    check_range,
)
from prefroute.routers.base import NotFittedError, WinPredictor, register_router, row_dot

_TIES = ("tie", "tie (bothbad)")
_TENSORS = ("P", "W", "w")


def _distinct_index(values: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct strings (first-seen order) and each row's index into them."""
    distinct = pc.unique(values)
    index = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)
    return distinct.to_pylist(), index.astype(np.int64)


def model_score_matrix(
    P: np.ndarray, W: np.ndarray, w: np.ndarray, W_bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(V, o) in float64 with s(m, q) = e_q . V[:, m] + o[m].

    V = W^T diag(w) normalize(P)^T is [text_dim, n_models]; o = normalize(P) diag(w) c is
    [n_models] (zeros without a projection bias c).
    """
    P64 = P.astype(np.float64)
    P64 /= np.maximum(np.linalg.norm(P64, axis=1, keepdims=True), 1e-12)  # as F.normalize
    weighted = P64 * w.astype(np.float64).reshape(1, -1)  # [n_models, dim]
    offsets = np.zeros(len(P)) if W_bias is None else weighted @ W_bias.astype(np.float64)
    return W.astype(np.float64).T @ weighted.T, offsets


@register_router
class MFRouter(WinPredictor):
    """Matrix factorisation over model embeddings and projected prompt embeddings.

    Parameters
    ----------
    strong_model, weak_model: the pair ``predict_proba`` scores (any models seen in training).
    embedder: the frozen prompt embedder: a name (``"wordllama"``), a spec dict, or an
        Embedder (recorded by its spec).
    dim: size of the model embeddings and the projected prompt.
    lr, weight_decay: Adam's learning rate and L2 penalty.
    epochs: the most passes over the training battles.
    batch_size: battles per Adam step.
    val_fraction: share of DISTINCT prompts held out for early stopping (0 = none: train
        all epochs). Splitting by prompt keeps a prompt's battles on one side.
    patience: stop after this many epochs without a lower validation loss.
    restore_best: end with the weights of the epoch with the lowest validation loss (else
        those of the last epoch).
    ties: ``"drop"`` tied battles or count them as ``"half"`` a win each.
    use_soft_labels: train on ``1 - p_b_wins`` where the battle has one (an LLM judge's
        probability), else on the hard winner.
    projection_bias: give the text projection a bias, i.e. a learned per-model constant in
        the score. RouteLLM has none (False). Its scores then need a shared direction in
        the prompt embeddings to express "model X is stronger overall"; wordllama
        embeddings have little of one (mean cosine between AlpacaEval prompts 0.04), and
        with True the validation loss on AlpacaEval falls from about 0.36 to 0.28.
    embedding_noise: std of Gaussian noise added to prompt embeddings during training
        (RouteLLM's ``alpha``; a regulariser, 0 = off).
    seed: seeds initialisation, the split, shuffling and noise; same seed, same weights.
    torch_threads: torch intra-op threads while training (restored afterwards).
    progress: show a tqdm bar over epochs.
    """

    concurrent_predict = True

    router_type = "mf"

    def __init__(
        self,
        *,
        strong_model: str,
        weak_model: str,
        embedder: str | dict[str, Any] | Embedder = "wordllama",
        dim: int = 128,
        lr: float = 3e-3,
        weight_decay: float = 1e-5,
        epochs: int = 30,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        patience: int = 3,
        restore_best: bool = True,
        ties: str = "drop",
        use_soft_labels: bool = True,
        projection_bias: bool = False,
        embedding_noise: float = 0.0,
        seed: int = 0,
        torch_threads: int | None = 1,
        progress: bool = True,
    ) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.embedder = embedder
        self.dim = dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.restore_best = restore_best
        self.ties = ties
        self.use_soft_labels = use_soft_labels
        self.projection_bias = projection_bias
        self.embedding_noise = embedding_noise
        self.seed = seed
        self.torch_threads = torch_threads
        self.progress = progress

    # checks ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        owner = type(self).__name__
        for name in ("dim", "epochs", "batch_size", "patience"):
            check_int(name, owner, getattr(self, name))
        for name in ("lr", "weight_decay", "val_fraction", "embedding_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"The '{name}' parameter of {owner} must be a number. "
                                  f"Got {value!r} instead.")
        check_range("lr", owner, self.lr, low=0.0, low_inclusive=False)
        check_range("weight_decay", owner, self.weight_decay, low=0.0)
        check_range("val_fraction", owner, self.val_fraction, low=0.0, high=1.0,
                    high_inclusive=False)
        check_range("embedding_noise", owner, self.embedding_noise, low=0.0)
        check_choice("ties", owner, self.ties, ("drop", "half"))
        check_choice("use_soft_labels", owner, self.use_soft_labels, (True, False))
        check_choice("restore_best", owner, self.restore_best, (True, False))
        check_choice("projection_bias", owner, self.projection_bias, (True, False))
        check_int("torch_threads", owner, self.torch_threads, optional=True)

    def _model_index(self, model: str) -> int:
        try:
            return self.model_index_[model]
        except KeyError:
            raise ConfigError(
                f"model {model!r} was not seen in the training battles of this "
                f"{type(self).__name__}; known models: {self.models_}"
            ) from None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit or from_pretrained"
            )

    def _checked_prompts(self, prompts: Sequence[str] | str) -> list[str]:
        self._check_fitted()
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ConfigError(f"prompt {i} is {type(p).__name__}, not a string")
        return prompts

    # training data --------------------------------------------------------------------
    def _training_arrays(self, battles: Battles) -> dict[str, Any]:
        """Per-battle labels, weights, model and distinct-prompt indices (ties handled)."""
        table = battles.table
        winner = table["winner"]
        is_tie = pc.is_in(winner, value_set=pa.array(_TIES)).to_numpy(zero_copy_only=False)
        a_wins = pc.equal(winner, "model_a").to_numpy(zero_copy_only=False)
        label = np.where(a_wins, 1.0, np.where(is_tie, 0.5, 0.0))
        n_soft = 0
        if self.use_soft_labels:
            p_b = battles.numeric("p_b_wins")
            soft = ~np.isnan(p_b)
            n_soft = int(soft.sum())
            label = np.where(soft, 1.0 - np.nan_to_num(p_b), label)
        weight = battles.numeric("weight")
        weight = np.where(np.isnan(weight), 1.0, weight)
        n_ties = int(is_tie.sum())
        keep = np.ones(len(battles), dtype=bool)
        if self.ties == "drop":
            keep &= ~is_tie
        if not keep.any():
            raise DataError("every training battle is a tie and ties='drop': nothing to learn from")
        zero = keep & (weight == 0)
        if zero.any():
            logger.info("mf: %d battles have weight 0 and do not affect training", int(zero.sum()))
        logger.info(
            "mf: %d battles, %d ties (%s), %d soft labels (%s)",
            len(battles), n_ties, "dropped" if self.ties == "drop" else "counted as half a win",
            n_soft, "used" if self.use_soft_labels else "ignored",
        )
        kept = table.filter(pa.array(keep))
        prompts, prompt_idx = _distinct_index(kept["prompt"])
        both = pa.chunked_array(kept["model_a"].chunks + kept["model_b"].chunks)
        models = sorted(pc.unique(both).to_pylist())
        value_set = pa.array(models, type=pa.string())
        a_idx = pc.index_in(kept["model_a"], value_set=value_set).to_numpy(zero_copy_only=False)
        b_idx = pc.index_in(kept["model_b"], value_set=value_set).to_numpy(zero_copy_only=False)
        return {
            "prompts": prompts,
            "prompt_idx": prompt_idx,
            "model_a": a_idx.astype(np.int64),
            "model_b": b_idx.astype(np.int64),
            "label": label[keep],
            "weight": weight[keep],
            "models": models,
            "n_battles": len(battles),
            "n_ties": n_ties,
            "n_soft": n_soft,
        }

    def _split_prompts(self, n_prompts: int) -> np.ndarray:
        """Boolean mask over distinct prompts: True = validation."""
        is_val = np.zeros(n_prompts, dtype=bool)
        if self.val_fraction == 0:
            return is_val
        n_val = int(round(self.val_fraction * n_prompts))
        n_val = min(max(n_val, 1), n_prompts - 1)
        if n_val < 1:
            raise DataError(
                f"val_fraction={self.val_fraction} needs at least 2 distinct prompts; the "
                f"battles have {n_prompts}. Pass val_fraction=0 to train without validation."
            )
        rng = np.random.default_rng(self.seed)
        is_val[rng.permutation(n_prompts)[:n_val]] = True
        return is_val

    # fit ------------------------------------------------------------------------------
    def _fit(self, battles: Battles) -> None:
        self._check_params()
        data = self._training_arrays(battles)
        models = data["models"]
        for role in ("strong_model", "weak_model"):
            name = getattr(self, role)
            if name not in models:
                raise ConfigError(
                    f"{role} {name!r} does not appear in the training battles; "
                    f"known models: {models}"
                )
        embedder = build_embedder(self.embedder)
        prompts = data["prompts"]
        started = time.perf_counter()
        if embedder.needs_fit:
            embedder.fit(prompts)
        prompt_embeddings = embedder.encode(prompts)
        embedded = time.perf_counter()

        is_val_prompt = self._split_prompts(len(prompts))
        is_val = is_val_prompt[data["prompt_idx"]]
        logger.info(
            "mf: training on %d battles over %d distinct prompts; validating on %d battles "
            "over %d distinct prompts", int((~is_val).sum()), int((~is_val_prompt).sum()),
            int(is_val.sum()), int(is_val_prompt.sum()),
        )

        import torch

        from prefroute._torch_util import torch_threads
        from prefroute.routers.mf_training import MFNet

        with torch.random.fork_rng(devices=[]), torch_threads(self.torch_threads):
            torch.manual_seed(self.seed)
            net = MFNet(len(models), embedder.dim, self.dim, self.projection_bias)
            curve = self._train(net, data, torch.from_numpy(prompt_embeddings), is_val)
        # wall times of this fit (not saved: they describe the machine, not the model)
        self.fit_seconds_ = {"embed": embedded - started, "train": time.perf_counter() - embedded}

        self.embedder_ = embedder
        self.models_ = list(models)
        self.model_index_ = {m: i for i, m in enumerate(models)}
        self.P_ = net.P.weight.detach().numpy().copy()
        self.W_ = net.W.weight.detach().numpy().copy()
        self.w_ = net.w.weight.detach().numpy().reshape(-1).copy()
        bias = net.W.bias
        self.W_bias_ = None if bias is None else bias.detach().numpy().copy()
        self.training_curve_ = curve
        self.best_epoch_ = curve["best_epoch"]
        self.training_info_ = {
            "n_battles": data["n_battles"],
            "n_ties": data["n_ties"],
            "n_soft_labels": data["n_soft"],
            "n_train_battles": int((~is_val).sum()),
            "n_val_battles": int(is_val.sum()),
            "n_train_prompts": int((~is_val_prompt).sum()),
            "n_val_prompts": int(is_val_prompt.sum()),
        }
        self._prepare_inference()

    def _train(
        self, net: Any, data: dict[str, Any], embeddings: Any, is_val: np.ndarray
    ) -> dict[str, Any]:
        from prefroute.routers.mf_training import train_net

        return train_net(self, net, data, embeddings, is_val)

    # inference ------------------------------------------------------------------------
    def _prepare_inference(self) -> None:
        self.model_vectors_, self.model_offsets_ = model_score_matrix(
            self.P_, self.W_, self.w_, self.W_bias_
        )
        self._pairs: dict[tuple[str, str], tuple[np.ndarray, float]] = {}

    def pair_vector(self, model_a: str, model_b: str) -> tuple[np.ndarray, float]:
        """(v, o): P(a beats b | q) = sigmoid(e_q . v + o); v float64 [embedding dim] (cached)."""
        key = (model_a, model_b)
        pair = self._pairs.get(key)
        if pair is None:
            i, j = self._model_index(model_a), self._model_index(model_b)
            vector = np.ascontiguousarray(self.model_vectors_[:, i] - self.model_vectors_[:, j])
            pair = vector, float(self.model_offsets_[i] - self.model_offsets_[j])
            self._pairs[key] = pair
        return pair

    def embed(self, prompts: Sequence[str] | str) -> np.ndarray:
        """The frozen prompt embeddings the predictor uses, float32 [n, embedding dim]."""
        return self.embedder_.encode(self._checked_prompts(prompts))

    def _predict(self, prompts: list[str]) -> np.ndarray:
        vector, offset = self.pair_vector(self.strong_model, self.weak_model)
        return expit(row_dot(self.embedder_.encode(prompts).astype(np.float64), vector) + offset)

    def pair_proba(
        self, prompts: Sequence[str] | str, model_a: str, model_b: str, *, batch_size: int = 1024
    ) -> np.ndarray:
        """P(model_a beats model_b) per prompt, for any two models seen in training."""
        prompts = self._checked_prompts(prompts)
        vector, offset = self.pair_vector(model_a, model_b)
        out = np.empty(len(prompts))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            out[start : start + len(chunk)] = expit(
                row_dot(self.embedder_.encode(chunk).astype(np.float64), vector) + offset
            )
        return out

    def model_scores(self, prompts: Sequence[str] | str, *, batch_size: int = 1024) -> np.ndarray:
        """s(m, q) for every prompt and model, float64 [n prompts, n models] (order: ``models_``).

        Only differences matter: P(a beats b | q) = sigmoid(s[q, a] - s[q, b]).
        """
        prompts = self._checked_prompts(prompts)
        out = np.empty((len(prompts), len(self.models_)))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            out[start : start + len(chunk)] = (
                self.embedder_.encode(chunk).astype(np.float64) @ self.model_vectors_
                + self.model_offsets_
            )
        return out

    def to_torch(self) -> Any:
        """The learned weights as an MFNet (for the reference torch forward pass)."""
        from prefroute.routers.mf_training import mfnet_from_weights

        self._check_fitted()
        return mfnet_from_weights(self.P_, self.W_, self.w_, self.W_bias_)

    # checkpoints ----------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"P": self.P_, "W": self.W_, "w": self.w_}
        if self.W_bias_ is not None:
            tensors["W_bias"] = self.W_bias_
        extra = {
            "models": self.models_,
            "embedder": self.embedder_.spec(),
            "training_curve": self.training_curve_,
            "training_info": self.training_info_,
        }
        return tensors, extra

    def _save_files(self, directory: Path) -> None:
        if self.embedder_.needs_fit:
            self.embedder_.save_state(directory)

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        return list(_TENSORS) + (["W_bias"] if self.projection_bias else [])

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = Path(directory) / "config.json"
        for key in ("models", "embedder"):
            if key not in extra:
                raise CheckpointError(f"{where}: state lacks {key!r}")
        self._check_loaded_params(where)
        models = _checked_models(extra["models"], where)
        _checked_embedder(self.embedder, where, "params.embedder")
        embedder = _checked_embedder(extra["embedder"], where, "state.embedder")
        if embedder.needs_fit:
            embedder.load_state(Path(directory))
        embedder_dim = _embedder_dim(embedder, where)
        P, W, w = tensors["P"], tensors["W"], tensors["w"]
        W_bias = tensors.get("W_bias")
        shapes_ok = (
            P.ndim == 2 and P.shape == (len(models), self.dim) and W.ndim == 2
            and W.shape == (P.shape[1], embedder_dim) and w.shape == (P.shape[1],)
            and (W_bias is None or W_bias.shape == (P.shape[1],))
        )
        if not shapes_ok:
            raise CheckpointError(
                f"{Path(directory)}: tensor shapes P {P.shape}, W {W.shape}, w {w.shape} do not "
                f"match {len(models)} models, dim {self.dim} and a {embedder_dim}-d embedder"
            )
        self.embedder_ = embedder
        self.models_ = models
        self.model_index_ = {m: i for i, m in enumerate(models)}
        self.P_, self.W_, self.w_, self.W_bias_ = P, W, w, W_bias
        self.training_curve_ = _checked_curve(extra.get("training_curve", {}), where)
        self.best_epoch_ = self.training_curve_.get("best_epoch")
        self.training_info_ = _checked_object(extra.get("training_info", {}), where,
                                              "state.training_info")
        for role in ("strong_model", "weak_model"):
            if getattr(self, role) not in self.model_index_:
                raise CheckpointError(
                    f"{where}: {role} {getattr(self, role)!r} is not among the saved "
                    f"models {models}"
                )
        self._prepare_inference()

    def _check_loaded_params(self, where: Path) -> None:
        """The params a checkpoint sets pass the training checks and stay below sizes that
        would exhaust a machine; a tampered config.json gets a CheckpointError."""
        owner = type(self).__name__  # the training checks ran in from_pretrained
        try:
            for name, (low, high) in _LOAD_LIMITS.items():
                value = getattr(self, name)
                if value is not None:
                    check_range(name, owner, value, low=low, high=high)
            check_int("seed", owner, self.seed, low=0)
            check_choice("progress", owner, self.progress, (True, False))
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{where}: params: {e}") from None


# checkpoint validation: far above any real router, far below what exhausts a machine
_LOAD_LIMITS: dict[str, tuple[float, float]] = {
    "dim": (1, 1 << 16),
    "epochs": (1, 1_000_000),
    "batch_size": (1, 1 << 24),
    "patience": (1, 1_000_000),
    "torch_threads": (1, 1024),
    "lr": (0.0, 1e3),
    "weight_decay": (0.0, 1e3),
    "embedding_noise": (0.0, 1e3),
}


def _checked_embedder(spec: Any, where: Path, field: str) -> Embedder:
    """The embedder a checkpoint's ``spec`` builds, nested specs included; any bad value is
    a CheckpointError naming config.json and ``field``."""
    if isinstance(spec, str):
        spec = {"name": spec, "params": {}}
    if not isinstance(spec, dict) or not isinstance(spec.get("params", {}), dict):
        raise CheckpointError(
            f"{where}: {field} must be an embedder name or {{'name': ..., 'params': {{...}}}}, "
            f"got {type(spec).__name__}"
        )
    for key, value in spec.get("params", {}).items():
        if isinstance(value, dict) and "name" in value:  # e.g. the features embedder's inner
            _checked_embedder(value, where, f"{field}.params.{key}")
    try:
        return build_embedder(spec)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: {field}: {e}") from None


def _embedder_dim(embedder: Embedder, where: Path) -> int:
    try:
        return int(embedder.dim)
    except ConfigError as e:
        raise CheckpointError(f"{where}: state.embedder: {e}") from None


def _checked_models(models: Any, where: Path) -> list[str]:
    """state.models: a list of distinct, non-empty model names."""
    if (
        not isinstance(models, list)
        or not all(isinstance(m, str) and m for m in models)
        or len(set(models)) != len(models)
    ):
        raise CheckpointError(f"{where}: state.models must be a list of distinct model names")
    return list(models)


def _checked_object(value: Any, where: Path, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {field} must be an object, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_curve(curve: Any, where: Path) -> dict[str, Any]:
    """state.training_curve: per-epoch losses (lists of numbers) and epoch numbers."""
    _checked_object(curve, where, "state.training_curve")
    for key in ("train_loss", "val_loss"):
        losses = curve.get(key, [])
        if not isinstance(losses, list) or not all(_is_number(v) for v in losses):
            raise CheckpointError(
                f"{where}: state.training_curve.{key} must be a list of numbers"
            )
    for key in ("best_epoch", "early_stopped_epoch"):
        epoch = curve.get(key)
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                                  or epoch < 0):
            raise CheckpointError(
                f"{where}: state.training_curve.{key} must be an epoch number or null, "
                f"got {epoch!r}"
            )
    return curve


def plot_training_curve(
    curve: MFRouter | dict[str, Any], path: str | Path, *, title: str = "mf training"
) -> Path:
    """Plot per-epoch train/validation loss (best epoch marked) to a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(curve, MFRouter):
        curve = curve.training_curve_
    train, val = curve.get("train_loss", []), curve.get("val_loss", [])
    if not train:
        raise ConfigError("the training curve is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(train) + 1), train, label="train")
    if val:
        ax.plot(range(1, len(val) + 1), val, label="validation")
    best = curve.get("best_epoch")
    if best is not None:
        ax.axvline(best, color="grey", linestyle="--", label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted BCE")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
