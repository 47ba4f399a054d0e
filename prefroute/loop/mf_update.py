"""Update a fitted ``mf`` router: warm-started epochs with replay, or one new model's vector.

``warm_update`` continues training from the router's weights for a few epochs on the new
battles mixed with a replay sample of old ones (so the update does not forget what the old
battles taught). Models the router has not seen start at the prior below.

``learn_model_vector`` swaps in a model the router has never seen: the text projection, the
head and every other model's vector stay frozen and only the new model's vector is fitted,
by maximum a posteriori on its battles. The prior is a Gaussian over the normalised model
vectors, centred on the mean of the known models' vectors with their per-dimension spread,
so with few battles the new model looks like a typical known model and moves away from it
only as far as its battles ask.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from prefroute._logging import logger
from prefroute._torch_util import torch_threads
from prefroute.data.battles import Battles
from prefroute.errors import ConfigError, DataError, check_int, check_range
from prefroute.routers.mf import MFRouter
from prefroute.routers.mf_training import MFNet


def _normalised(P: np.ndarray) -> np.ndarray:
    return P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)


def model_prior(router: MFRouter) -> tuple[np.ndarray, float]:
    """(mean, per-dimension variance) of the known models' normalised vectors."""
    unit = _normalised(router.P_.astype(np.float64))
    mean = unit.mean(axis=0)
    variance = float(((unit - mean) ** 2).mean()) if len(unit) > 1 else 1.0 / unit.shape[1]
    return mean, max(variance, 1e-8)


def _battle_arrays(router: MFRouter, battles: Battles, models: list[str]) -> dict:
    """Labels, weights, prompt and model indices (into ``models``) of the usable battles."""
    data = router._training_arrays(battles)
    lookup = np.array([models.index(m) for m in data["models"]], dtype=np.int64)
    return {
        "prompts": data["prompts"],
        "prompt_idx": data["prompt_idx"],
        "model_a": lookup[data["model_a"]],
        "model_b": lookup[data["model_b"]],
        "label": data["label"].astype(np.float32),
        "weight": data["weight"].astype(np.float32),
    }


def _with_models(router: MFRouter, models: list[str], P: np.ndarray) -> MFRouter:
    new = copy.copy(router)
    new.models_ = list(models)
    new.model_index_ = {m: i for i, m in enumerate(models)}
    new.P_ = P.astype(np.float32)
    return new


def warm_update(
    router: MFRouter,
    battles: Battles,
    *,
    replay: Battles | None = None,
    replay_size: int | None = None,
    epochs: int = 3,
    lr: float | None = None,
    seed: int = 0,
) -> MFRouter:
    """A copy of ``router`` trained ``epochs`` more passes on ``battles`` plus replayed ones.

    ``replay``: the old battles (or any sample of them); ``replay_size`` of them (default: as
    many as there are new battles) are drawn without replacement each update. ``lr`` defaults
    to the router's.
    """
    if not router.is_fitted:
        raise ConfigError("warm_update needs a fitted MFRouter")
    check_int("epochs", "warm_update", epochs)
    if replay_size is not None:
        check_int("replay_size", "warm_update", replay_size, low=0)
    rng = np.random.default_rng(seed)
    parts = [battles]
    n_replay = 0
    if replay is not None and len(replay):
        n_replay = min(len(replay), len(battles) if replay_size is None else replay_size)
        if n_replay:
            parts.append(replay.take(np.sort(rng.choice(len(replay), n_replay, replace=False))))
    mixed = Battles.concat(parts)
    models = list(router.models_)
    added = [m for m in mixed.models() if m not in router.model_index_]
    models += added
    P = router.P_.astype(np.float64)
    if added:
        mean, _ = model_prior(router)
        scale = float(np.linalg.norm(P, axis=1).mean())
        P = np.concatenate([P, np.tile(mean * scale, (len(added), 1))])
    data = _battle_arrays(router, mixed, models)
    embeddings = torch.from_numpy(router.embedder_.encode(data["prompts"]))

    with torch.random.fork_rng(devices=[]), torch_threads(router.torch_threads):
        torch.manual_seed(seed)
        net = MFNet(len(models), router.W_.shape[1], router.P_.shape[1],
                    router.W_bias_ is not None)
        state = {
            "P.weight": torch.from_numpy(P.astype(np.float32)),
            "W.weight": torch.from_numpy(router.W_.copy()),
            "w.weight": torch.from_numpy(router.w_.reshape(1, -1).copy()),
        }
        if router.W_bias_ is not None:
            state["W.bias"] = torch.from_numpy(router.W_bias_.copy())
        net.load_state_dict(state)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr or router.lr,
                                     weight_decay=router.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        columns = [torch.from_numpy(data[k]) for k in
                   ("prompt_idx", "model_a", "model_b", "label", "weight")]
        n = len(columns[0])
        losses = []
        for _ in range(epochs):
            net.train()
            order = torch.randperm(n, generator=generator)
            prompt, a, b, label, weight = (c[order] for c in columns)
            total = 0.0
            for start in range(0, n, router.batch_size):
                s = slice(start, start + router.batch_size)
                logits = net(a[s], b[s], embeddings[prompt[s]])
                loss = (F.binary_cross_entropy_with_logits(logits, label[s], reduction="none")
                        * weight[s]).sum() / weight[s].sum().clamp_min(1e-12)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(label[s])
            losses.append(total / max(n, 1))
    new = _with_models(router, models, net.P.weight.detach().numpy().copy())
    new.W_ = net.W.weight.detach().numpy().copy()
    new.w_ = net.w.weight.detach().numpy().reshape(-1).copy()
    if router.W_bias_ is not None:
        new.W_bias_ = net.W.bias.detach().numpy().copy()
    new.training_info_ = {**router.training_info_, "update": {
        "n_new_battles": len(battles), "n_replayed": n_replay, "epochs": epochs,
        "new_models": added, "train_loss": losses}}
    new._prepare_inference()
    logger.info("mf update: %d new + %d replayed battles, %d epochs, %d new models",
                len(battles), n_replay, epochs, len(added))
    return new


def learn_model_vector(
    router: MFRouter,
    battles: Battles,
    model: str,
    *,
    prior_strength: float = 1.0,
    max_iter: int = 100,
) -> MFRouter:
    """A copy of ``router`` with ``model``'s vector fitted on its battles, everything else frozen.

    Only battles between ``model`` and models the router knows are used (the others cannot
    inform the vector with the rest frozen). ``prior_strength`` scales the Gaussian prior's
    log-density against the battles' log-likelihood (1: plain MAP; 0: maximum likelihood).
    """
    if not router.is_fitted:
        raise ConfigError("learn_model_vector needs a fitted MFRouter")
    check_range("prior_strength", "learn_model_vector", prior_strength, low=0.0)
    check_int("max_iter", "learn_model_vector", max_iter)
    table = battles.table
    is_a = pc.equal(table["model_a"], model).to_numpy(zero_copy_only=False)
    is_b = pc.equal(table["model_b"], model).to_numpy(zero_copy_only=False)
    opponent = np.where(is_a, np.array(battles.column("model_b"), dtype=object),
                        np.array(battles.column("model_a"), dtype=object))
    known = np.array([o in router.model_index_ and o != model for o in opponent], dtype=bool)
    usable = (is_a | is_b) & known
    if not usable.any():
        raise DataError(
            f"none of the {len(battles)} battles puts {model!r} against a model the router "
            f"knows ({router.models_[:8]}{'...' if len(router.models_) > 8 else ''})"
        )
    n_other = int((~usable).sum())
    if n_other:
        logger.info("mf swap: %d of %d battles do not pit %r against a known model; unused",
                    n_other, len(battles), model)
    sub = Battles(table.filter(pa.array(usable)))
    data = router._training_arrays(sub)
    names = data["models"]
    a_is_new = np.array([names[i] == model for i in data["model_a"]])
    opp = np.where(a_is_new, data["model_b"], data["model_a"])
    opp_idx = np.array([router.model_index_[names[i]] for i in opp], dtype=np.int64)
    # P(new model wins): label of side a if the new model is a, else 1 - label
    target = np.where(a_is_new, data["label"], 1.0 - data["label"])

    prompts, prompt_idx = data["prompts"], data["prompt_idx"]
    embeddings = router.embedder_.encode(prompts).astype(np.float64)
    projected = embeddings @ router.W_.astype(np.float64).T
    if router.W_bias_ is not None:
        projected += router.W_bias_.astype(np.float64)
    head = router.w_.astype(np.float64)
    unit = _normalised(router.P_.astype(np.float64))
    mean, variance = model_prior(router)
    start = router.P_[router.model_index_[model]] if model in router.model_index_ else mean

    features = torch.from_numpy(projected[prompt_idx] * head)  # [n, dim]: w * (W e + c)
    opponent_score = (features * torch.from_numpy(unit[opp_idx])).sum(dim=1)
    y = torch.from_numpy(target.astype(np.float64))
    weight = torch.from_numpy(data["weight"].astype(np.float64))
    prior_mean = torch.from_numpy(mean)
    vector = torch.nn.Parameter(torch.from_numpy(np.asarray(start, dtype=np.float64).copy()))
    optimizer = torch.optim.LBFGS([vector], max_iter=max_iter, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        direction = vector / vector.norm().clamp_min(1e-12)
        logits = features @ direction - opponent_score
        nll = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()
        prior = prior_strength * ((direction - prior_mean) ** 2).sum() / (2.0 * variance)
        loss = nll + prior
        loss.backward()
        return loss

    started = time.perf_counter()
    with torch_threads(router.torch_threads):
        optimizer.step(objective)
    learned = vector.detach().numpy().astype(np.float32)
    models = list(router.models_)
    P = router.P_.copy()
    if model in router.model_index_:
        P[router.model_index_[model]] = learned
    else:
        models.append(model)
        P = np.concatenate([P, learned[None, :]])
    new = _with_models(router, models, P)
    new.training_info_ = {**router.training_info_, "swap": {
        "model": model, "n_battles": int(len(target)), "prior_strength": prior_strength,
        "seconds": time.perf_counter() - started}}
    new._prepare_inference()
    return new
