"""Matrix factorisation for N models: RouteLLM's MF core with a per-model objective.

Each model m has a vector P_m (L2-normalised at use), a prompt's frozen embedding e_q is
projected by W, and a head w scores the pair (plus an optional per-model bias b_m):

    s(m, q) = w . (normalize(P_m) * W e_q) + b_m

All N scores of a prompt are one product: s(., q) = e_q V + b with
V = W^T diag(w) normalize(P)^T [embedding dim, N], computed once after training or loading.

Objectives
----------
``"pointwise"``: sigmoid(s(m, q)) ~ P(model m solves q); masked BCE on the labels. The
scores are calibrated confidences.
``"pairwise"``: for every pair (a, b) with label(a) > label(b) on a prompt, BCE on
sigmoid(s(a, q) - s(b, q)) = 1 (Bradley-Terry, as the pairwise MF router learns from
battles). s is then only a ranking; ``predict_scores`` reports each model's expected win
probability against a uniformly drawn other model, mean_{j != m} sigmoid(s(m, q) - s(j, q)).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from prefroute._logging import logger
from prefroute._torch_util import torch_threads
from prefroute.errors import check_choice, check_int, check_range
from prefroute.multi.base import (
    EmbeddingRouter,
    register_multi_router,
    split_validation,
)
from prefroute.multi.classifiers import label_tensors, masked_bce
from prefroute.router import checked_tensor


def _mf_net(n_models: int, text_dim: int, dim: int, model_bias: bool) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MultiMFNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.P = nn.Embedding(n_models, dim)
            self.W = nn.Linear(text_dim, dim, bias=False)
            self.w = nn.Linear(dim, 1, bias=False)
            self.b = nn.Parameter(torch.zeros(n_models), requires_grad=model_bias)

        def forward(self, prompt_embeddings: Any) -> Any:
            """s(m, q) for every model: [B, text_dim] -> [B, N]."""
            model_vectors = F.normalize(self.P.weight, p=2, dim=-1) * self.w.weight  # [N, dim]
            return self.W(prompt_embeddings) @ model_vectors.T + self.b

    return MultiMFNet()


def pairwise_loss(scores: Any, labels: Any, mask: Any) -> Any:
    """Mean BCE of sigmoid(s_a - s_b) = 1 over pairs with label_a > label_b, weighted by the gap."""
    import torch.nn.functional as F

    diff = scores[:, :, None] - scores[:, None, :]  # [B, N, N]: s_a - s_b
    gap = (labels[:, :, None] - labels[:, None, :]).clamp_min(0.0)
    gap = gap * mask[:, :, None] * mask[:, None, :]
    return (F.softplus(-diff) * gap).sum() / gap.sum().clamp_min(1e-12)


def model_score_matrix(P: np.ndarray, W: np.ndarray, w: np.ndarray) -> np.ndarray:
    """V = W^T diag(w) normalize(P)^T in float64 [text_dim, N]: s(m, q) = e_q . V[:, m] + b_m."""
    P64 = P.astype(np.float64)
    P64 /= np.maximum(np.linalg.norm(P64, axis=1, keepdims=True), 1e-12)
    return W.astype(np.float64).T @ (P64 * w.astype(np.float64).reshape(1, -1)).T


@register_multi_router
class MultiMFRouter(EmbeddingRouter):
    """Matrix factorisation over N model vectors and projected prompt embeddings.

    Parameters
    ----------
    embedder: the frozen prompt embedder (name, spec dict or Embedder).
    dim: size of the model vectors and the projected prompt.
    objective: ``"pointwise"`` (per-model correctness) or ``"pairwise"`` (see module doc).
    model_bias: learn a per-model bias b_m (a model's overall strength).
    lr, weight_decay: Adam's learning rate and L2 penalty.
    epochs, batch_size, val_fraction, patience: as for ``MLCRouter``.
    seed: seeds initialisation, split and shuffling.
    torch_threads: torch intra-op threads while training.
    progress: show a tqdm bar over epochs.
    """

    router_type = "multi-mf"

    def __init__(
        self,
        *,
        embedder: str | dict[str, Any] | Any = "wordllama",
        dim: int = 128,
        objective: str = "pointwise",
        model_bias: bool = True,
        lr: float = 3e-3,
        weight_decay: float = 1e-5,
        epochs: int = 100,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        patience: int = 5,
        seed: int = 0,
        torch_threads: int | None = 1,
        progress: bool = False,
    ) -> None:
        super().__init__(embedder=embedder)
        self.dim = dim
        self.objective = objective
        self.model_bias = model_bias
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
        for name in ("dim", "epochs", "batch_size", "patience"):
            check_int(name, owner, getattr(self, name))
        check_choice("objective", owner, self.objective, ("pointwise", "pairwise"))
        check_choice("model_bias", owner, self.model_bias, (True, False))
        check_range("lr", owner, self.lr, low=0.0, low_inclusive=False)
        check_range("weight_decay", owner, self.weight_decay, low=0.0)
        check_range(
            "val_fraction", owner, self.val_fraction, low=0.0, high=1.0, high_inclusive=False
        )

    def _loss(self, scores: Any, labels: Any, mask: Any) -> Any:
        if self.objective == "pointwise":
            return masked_bce(scores, labels, mask)
        return pairwise_loss(scores, labels, mask)

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

        with torch.random.fork_rng(devices=[]), torch_threads(self.torch_threads):
            torch.manual_seed(self.seed)
            net = _mf_net(n_models, X.shape[1], self.dim, self.model_bias)
            params = [p for p in net.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            generator = torch.Generator().manual_seed(self.seed)
            best, best_state, stale, best_epoch = math.inf, None, 0, self.epochs
            bar = tqdm(
                range(1, self.epochs + 1),
                desc=f"mf-{self.objective}",
                unit="epoch",
                disable=not self.progress,
            )
            for epoch in bar:
                net.train()
                order = train_idx[torch.randperm(len(train_idx), generator=generator)]
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    loss = self._loss(net(X_t[rows]), y[rows], mask[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if len(val_idx) == 0:
                    best_epoch = epoch
                    continue
                net.eval()
                with torch.no_grad():
                    val_loss = float(self._loss(net(X_t[val_idx]), y[val_idx], mask[val_idx]))
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
        logger.info("mf-multi: best epoch %d (val loss %.4f)", best_epoch, best)
        self.P_ = net.P.weight.detach().numpy().copy()
        self.W_ = net.W.weight.detach().numpy().copy()
        self.w_ = net.w.weight.detach().numpy().reshape(-1).copy()
        self.b_ = net.b.detach().numpy().copy()
        self.best_epoch_ = best_epoch
        self._prepare_inference()

    def _prepare_inference(self) -> None:
        self.V_ = model_score_matrix(self.P_, self.W_, self.w_)

    def raw_scores(self, prompts: list[str]) -> np.ndarray:
        """s(m, q) for every prompt and model, float64 [n, N]."""
        self._check_fitted()
        return self._embed(prompts).astype(np.float64) @ self.V_ + self.b_.astype(np.float64)

    def _predict(self, prompts: list[str]) -> np.ndarray:
        s = self._embed(prompts).astype(np.float64) @ self.V_ + self.b_.astype(np.float64)
        if self.objective == "pointwise":
            return expit(s)
        n_models = s.shape[1]
        wins = expit(s[:, :, None] - s[:, None, :]).sum(axis=2) - 0.5  # drop sigmoid(0) of m vs m
        return wins / (n_models - 1)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors = {"P": self.P_, "W": self.W_, "w": self.w_, "b": self.b_}
        return tensors, {**self._embedder_extra(), "best_epoch": self.best_epoch_}

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str]:
        return ["P", "W", "w", "b"]

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        where = directory / "config.json"
        dim = self._load_embedder(extra, directory)
        self.P_ = checked_tensor(tensors, "P", where, (len(self.models_), None))
        d = self.P_.shape[1]
        self.W_ = checked_tensor(tensors, "W", where, (d, dim))
        self.w_ = checked_tensor(tensors, "w", where, (d,))
        self.b_ = checked_tensor(tensors, "b", where, (len(self.models_),))
        self.best_epoch_ = self._loaded_epoch(extra, directory)
        self._prepare_inference()
