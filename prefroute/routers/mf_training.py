"""Training the mf router's network in torch (imported only to fit, so loading stays light).

``MFNet`` is what training optimises; ``MFRouter`` scores with the collapsed numpy matrix.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prefroute._logging import logger

if TYPE_CHECKING:
    from prefroute.routers.mf import MFRouter


class MFNet(nn.Module):
    """The RouteLLM matrix-factorisation network (what training optimises).

    ``P``: model embeddings [n_models, dim]; ``W``: text projection (embedding dim -> dim,
    no bias unless ``projection_bias``); ``w``: the linear head (dim -> 1, no bias).
    """

    def __init__(
        self, n_models: int, text_dim: int, dim: int = 128, projection_bias: bool = False
    ) -> None:
        super().__init__()
        self.P = nn.Embedding(n_models, dim)
        self.W = nn.Linear(text_dim, dim, bias=projection_bias)
        self.w = nn.Linear(dim, 1, bias=False)

    def scores(self, model_ids: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """s(m, q) for paired rows: model_ids [B], prompt_embeddings [B, text_dim] -> [B]."""
        model_vectors = F.normalize(self.P(model_ids), p=2, dim=-1)
        return self.w(model_vectors * self.W(prompt_embeddings)).squeeze(-1)

    def forward(
        self, model_a: torch.Tensor, model_b: torch.Tensor, prompt_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The logit of P(a beats b): s(a, q) - s(b, q), shape [B].

        Computed as w . ((normalize(P_a) - normalize(P_b)) * W e_q): one projection of the
        prompt instead of one per side.
        """
        models = F.normalize(self.P(torch.stack([model_a, model_b])), p=2, dim=-1)
        return self.w((models[0] - models[1]) * self.W(prompt_embeddings)).squeeze(-1)

    @torch.no_grad()
    def win_prob(self, model_a: int, model_b: int, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """P(model_a beats model_b) for each prompt embedding row [B, text_dim] -> [B]."""
        n = prompt_embeddings.shape[0]
        a = torch.full((n,), model_a, dtype=torch.long)
        b = torch.full((n,), model_b, dtype=torch.long)
        return torch.sigmoid(self(a, b, prompt_embeddings))


def train_net(
    router: MFRouter, net: MFNet, data: dict[str, Any], embeddings: torch.Tensor, is_val: np.ndarray
) -> dict[str, Any]:
    """Adam on weighted BCE with early stopping on the validation loss; returns the curve."""

    def tensors(mask: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(data["prompt_idx"][mask]),
            torch.from_numpy(data["model_a"][mask]),
            torch.from_numpy(data["model_b"][mask]),
            torch.from_numpy(data["label"][mask].astype(np.float32)),
            torch.from_numpy(data["weight"][mask].astype(np.float32)),
        )

    train = tensors(~is_val)
    val = tensors(is_val) if is_val.any() else None
    n_train = len(train[0])
    generator = torch.Generator().manual_seed(router.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=router.lr, weight_decay=router.weight_decay)

    curve: dict[str, Any] = {"train_loss": [], "val_loss": [], "best_epoch": None}
    best_loss, best_state, stale = math.inf, None, 0
    bar = tqdm(range(1, router.epochs + 1), desc="mf", unit="epoch", disable=not router.progress)
    for epoch in bar:
        net.train()
        order = torch.randperm(n_train, generator=generator)
        prompts, models_a, models_b, labels, weights = (t[order] for t in train)
        loss_sum = weight_sum = 0.0
        for start in range(0, n_train, router.batch_size):
            rows = slice(start, start + router.batch_size)
            emb = embeddings[prompts[rows]]
            if router.embedding_noise > 0:
                emb = emb + router.embedding_noise * torch.randn(emb.shape, generator=generator)
            losses = F.binary_cross_entropy_with_logits(
                net(models_a[rows], models_b[rows], emb), labels[rows], reduction="none"
            )
            batch_weight = float(weights[rows].sum())
            loss = (losses * weights[rows]).sum() / max(batch_weight, 1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * batch_weight
            weight_sum += batch_weight
        train_loss = loss_sum / max(weight_sum, 1e-12)
        curve["train_loss"].append(train_loss)
        if val is None:
            curve["best_epoch"] = epoch
            bar.set_postfix(train=f"{train_loss:.4f}")
            continue
        val_loss = weighted_bce(net, val, embeddings)
        curve["val_loss"].append(val_loss)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
            curve["best_epoch"] = epoch
        else:
            stale += 1
            if stale >= router.patience:
                logger.info(
                    "mf: early stop after epoch %d (best epoch %d)", epoch, curve["best_epoch"]
                )
                curve["early_stopped_epoch"] = epoch
                # say on the bar why it ends short of the planned epochs
                bar.set_description(
                    f"mf: early stop at epoch {epoch}/{router.epochs} (no better val loss "
                    f"in {router.patience} epochs; best epoch {curve['best_epoch']})"
                )
                bar.refresh()
                break
    bar.close()
    if best_state is not None and router.restore_best:
        net.load_state_dict(best_state)
    return curve


@torch.no_grad()
def weighted_bce(
    net: MFNet, split: tuple[torch.Tensor, ...], embeddings: torch.Tensor, chunk: int = 65536
) -> float:
    """Weighted mean BCE over a split."""
    net.eval()
    prompt, a, b, label, weight = split
    total = 0.0
    for start in range(0, len(prompt), chunk):
        s = slice(start, start + chunk)
        logits = net(a[s], b[s], embeddings[prompt[s]])
        losses = F.binary_cross_entropy_with_logits(logits, label[s], reduction="none")
        total += float((losses * weight[s]).double().sum())
    return total / max(float(weight.double().sum()), 1e-12)


def mfnet_from_weights(
    P: np.ndarray, W: np.ndarray, w: np.ndarray, W_bias: np.ndarray | None
) -> MFNet:
    """An MFNet in eval mode holding saved weights (the reference torch forward pass)."""
    net = MFNet(P.shape[0], W.shape[1], P.shape[1], W_bias is not None)
    state = {
        "P.weight": torch.from_numpy(P.copy()),
        "W.weight": torch.from_numpy(W.copy()),
        "w.weight": torch.from_numpy(w.reshape(1, -1).copy()),
    }
    if W_bias is not None:
        state["W.bias"] = torch.from_numpy(W_bias.copy())
    net.load_state_dict(state)
    return net.eval()
