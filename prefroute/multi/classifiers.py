"""Classifiers on frozen prompt embeddings: one multi-label MLP (MLC) or one binary per model (SC).

MLC (Srivatsa et al.'s multi-label classifier): one network, N sigmoid outputs trained with
binary cross-entropy on the label sets; unknown labels (NaN) are masked out of the loss.
SC (their separate classifiers): an independent scikit-learn logistic regression per model.

Both score new prompts with plain numpy on the stored weights, so a reloaded checkpoint
gives bit-identical scores.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit

from prefroute._logging import logger
from prefroute._torch_util import torch_threads
from prefroute.errors import ConfigError, check_int, check_range
from prefroute.multi.base import (
    EmbeddingRouter,
    masked_mean,
    register_multi_router,
    split_validation,
)
from prefroute.router import checked_count, checked_tensor, is_number

MAX_LAYERS = 64  # hidden layers a checkpoint may hold


def masked_bce(logits: Any, labels: Any, mask: Any) -> Any:
    """Mean binary cross-entropy over the known (mask = 1) entries."""
    import torch.nn.functional as F

    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


def label_tensors(labels: np.ndarray) -> tuple[Any, Any]:
    """(labels with NaN -> 0, known mask) as float32 torch tensors."""
    import torch

    known = ~np.isnan(labels)
    return (
        torch.from_numpy(np.where(known, labels, 0.0).astype(np.float32)),
        torch.from_numpy(known.astype(np.float32)),
    )


@register_multi_router
class MLCRouter(EmbeddingRouter):
    """Multi-label classifier: an MLP on prompt embeddings with one sigmoid output per model.

    Parameters
    ----------
    embedder: the frozen prompt embedder (name, spec dict or Embedder).
    hidden: hidden layer width; 0 = a linear layer (multi-output logistic regression).
    dropout: dropout on the hidden layer while training.
    lr, weight_decay: AdamW's learning rate and decoupled weight decay.
    epochs: the most passes over the training prompts.
    batch_size: prompts per step.
    val_fraction: share of the training prompts held out for early stopping (0 = none).
    patience: stop after this many epochs without a lower validation loss; the best
        epoch's weights are kept.
    seed: seeds initialisation, split and shuffling: same seed, same weights.
    torch_threads: torch intra-op threads while training (None = leave the setting).
    progress: show a tqdm bar over epochs.
    """

    router_type = "multi-mlc"

    def __init__(
        self,
        *,
        embedder: str | dict[str, Any] | Any = "wordllama",
        hidden: int = 256,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 200,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        patience: int = 10,
        seed: int = 0,
        torch_threads: int | None = 1,
        progress: bool = False,
    ) -> None:
        super().__init__(embedder=embedder)
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.seed = seed
        self.torch_threads = torch_threads
        self.progress = progress

    def _check_params(self) -> None:
        owner = type(self).__name__
        check_int("hidden", owner, self.hidden, low=0)
        for name in ("epochs", "batch_size", "patience"):
            check_int(name, owner, getattr(self, name))
        check_range("dropout", owner, self.dropout, low=0.0, high=1.0, high_inclusive=False)
        check_range("lr", owner, self.lr, low=0.0, low_inclusive=False)
        check_range("weight_decay", owner, self.weight_decay, low=0.0)
        check_range(
            "val_fraction", owner, self.val_fraction, low=0.0, high=1.0, high_inclusive=False
        )

    def _network(self, n_in: int, n_out: int) -> Any:
        from torch import nn

        if self.hidden == 0:
            return nn.Sequential(nn.Linear(n_in, n_out))
        return nn.Sequential(
            nn.Linear(n_in, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, n_out),
        )

    def _fit(self, prompts: list[str], labels: np.ndarray) -> None:
        import torch
        from tqdm.auto import tqdm

        self._check_params()
        X = self._fit_embedder(prompts)
        n, n_models = labels.shape
        is_val = split_validation(n, self.val_fraction, self.seed)
        y, mask = label_tensors(labels)
        X_t = torch.from_numpy(X)
        train_idx = torch.from_numpy(np.flatnonzero(~is_val))
        val_idx = torch.from_numpy(np.flatnonzero(is_val))
        prior = np.clip(masked_mean(labels[~is_val]), 1e-3, 1 - 1e-3)

        with torch.random.fork_rng(devices=[]), torch_threads(self.torch_threads):
            torch.manual_seed(self.seed)
            net = self._network(X.shape[1], n_models)
            with torch.no_grad():  # start from the label prior: faster, steadier early epochs
                net[-1].bias.copy_(torch.from_numpy(logit(prior).astype(np.float32)))
            optimizer = torch.optim.AdamW(
                net.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            generator = torch.Generator().manual_seed(self.seed)
            best, best_state, stale, best_epoch = math.inf, None, 0, self.epochs
            curve: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
            bar = tqdm(
                range(1, self.epochs + 1), desc="mlc", unit="epoch", disable=not self.progress
            )
            for epoch in bar:
                net.train()
                order = train_idx[torch.randperm(len(train_idx), generator=generator)]
                total, seen = 0.0, 0.0
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    loss = masked_bce(net(X_t[rows]), y[rows], mask[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(rows)
                    seen += len(rows)
                curve["train_loss"].append(total / max(seen, 1))
                if len(val_idx) == 0:
                    best_epoch = epoch
                    continue
                net.eval()
                with torch.no_grad():
                    val_loss = float(masked_bce(net(X_t[val_idx]), y[val_idx], mask[val_idx]))
                curve["val_loss"].append(val_loss)
                bar.set_postfix(val=f"{val_loss:.4f}")
                if val_loss < best - 1e-6:
                    best, best_state, stale, best_epoch = (
                        val_loss,
                        copy.deepcopy(net.state_dict()),
                        0,
                        epoch,
                    )
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
        logger.info(
            "mlc: best epoch %d of %d (val loss %.4f)", best_epoch, len(curve["train_loss"]), best
        )
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        self.weights_ = [lin.weight.detach().numpy().copy() for lin in linear]
        self.biases_ = [lin.bias.detach().numpy().copy() for lin in linear]
        self.training_curve_ = curve
        self.best_epoch_ = best_epoch

    def _predict(self, prompts: list[str]) -> np.ndarray:
        h = self._embed(prompts).astype(np.float64)
        for i, (W, b) in enumerate(zip(self.weights_, self.biases_, strict=True)):
            h = h @ W.T.astype(np.float64) + b.astype(np.float64)
            if i < len(self.weights_) - 1:
                h = np.maximum(h, 0.0)
        return expit(h)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {}
        for i, (W, b) in enumerate(zip(self.weights_, self.biases_, strict=True)):
            tensors[f"layer{i}.weight"] = W
            tensors[f"layer{i}.bias"] = b
        return tensors, {
            **self._embedder_extra(),
            "n_layers": len(self.weights_),
            "best_epoch": self.best_epoch_,
        }

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str] | None:
        n = extra.get("n_layers", 2)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LAYERS:
            return None  # _load_state refuses it, naming the checkpoint
        return [f"layer{i}.{kind}" for i in range(n) for kind in ("weight", "bias")]

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = directory / "config.json"
        width = self._load_embedder(extra, directory)
        n = checked_count(extra.get("n_layers"), where, "state.n_layers", low=1,
                          high=MAX_LAYERS)
        self.weights_, self.biases_ = [], []
        for i in range(n):  # each layer maps the previous width; the last one to N models
            out = len(self.models_) if i == n - 1 else None
            W = checked_tensor(tensors, f"layer{i}.weight", where, (out, width))
            self.weights_.append(W)
            self.biases_.append(checked_tensor(tensors, f"layer{i}.bias", where, (W.shape[0],)))
            width = W.shape[0]
        self.best_epoch_ = self._loaded_epoch(extra, directory)


@register_multi_router
class SCRouter(EmbeddingRouter):
    """Separate classifiers: one L2-regularised logistic regression per model.

    Soft labels (0 < y < 1) are fitted exactly by duplicating each prompt as a positive
    with weight y and a negative with weight 1 - y. A model whose training labels are all
    one class gets a constant score (its smoothed training rate).

    Parameters
    ----------
    embedder: the frozen prompt embedder (name, spec dict or Embedder).
    C: inverse regularisation strength (scikit-learn's ``C``).
    class_weight: None or "balanced".
    max_iter: solver iterations.
    """

    router_type = "multi-sc"

    def __init__(
        self,
        *,
        embedder: str | dict[str, Any] | Any = "wordllama",
        C: float = 1.0,
        class_weight: str | None = None,
        max_iter: int = 1000,
    ) -> None:
        super().__init__(embedder=embedder)
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def _check_params(self) -> None:
        owner = type(self).__name__
        if not is_number(self.C):
            raise ConfigError(f"The 'C' parameter of {owner} must be a finite number. "
                              f"Got {self.C!r:.80} instead.")
        check_range("C", owner, self.C, low=0.0, low_inclusive=False)
        check_int("max_iter", owner, self.max_iter)
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(
                f"The 'class_weight' parameter of {owner} must be None or 'balanced'. "
                f"Got {self.class_weight!r} instead."
            )

    def _fit(self, prompts: list[str], labels: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self._check_params()
        X = self._fit_embedder(prompts).astype(np.float64)
        n_models = labels.shape[1]
        coef = np.zeros((n_models, X.shape[1]))
        intercept = np.zeros(n_models)
        for j in range(n_models):
            known = ~np.isnan(labels[:, j])
            y = labels[known, j]
            Xj = X[known]
            if y.min() == y.max():
                rate = (y.sum() + 0.5) / (len(y) + 1.0)
                intercept[j] = logit(rate)
                logger.info(
                    "sc: model %d has one label class in training; constant score %.3f", j, rate
                )
                continue
            hard = np.isin(y, (0.0, 1.0)).all()
            if hard:
                X_fit, y_fit, w_fit = Xj, y.astype(int), None
            else:
                X_fit = np.concatenate([Xj, Xj])
                y_fit = np.concatenate([np.ones(len(y), int), np.zeros(len(y), int)])
                w_fit = np.concatenate([y, 1.0 - y])
            clf = LogisticRegression(
                C=self.C, class_weight=self.class_weight, max_iter=self.max_iter
            )
            clf.fit(X_fit, y_fit, sample_weight=w_fit)
            coef[j] = clf.coef_[0]
            intercept[j] = clf.intercept_[0]
        self.coef_ = coef
        self.intercept_ = intercept

    def _predict(self, prompts: list[str]) -> np.ndarray:
        X = self._embed(prompts).astype(np.float64)
        return expit(X @ self.coef_.T + self.intercept_)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"coef": self.coef_, "intercept": self.intercept_}, self._embedder_extra()

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str]:
        return ["coef", "intercept"]

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = directory / "config.json"
        dim = self._load_embedder(extra, directory)
        self.coef_ = checked_tensor(tensors, "coef", where, (len(self.models_), dim))
        self.intercept_ = checked_tensor(tensors, "intercept", where, (len(self.models_),))
