"""What the neural win predictors (``bert``, ``causal_llm``) share.

* ``win_targets``: battles -> prompts with a 3-way target distribution over
  (strong wins, tie, weak wins), oriented to the router's pair (see its docstring for how
  battles against other opponents are used);
* ``split_by_prompt``: a validation split by distinct prompt;
* ``NeuralWinPredictor``: the training loop (``accelerate``: multi-GPU under
  ``accelerate launch``, bf16 autocast on CUDA, gradient accumulation, warmup + linear decay,
  periodic validation keeping the best weights, tqdm), batched inference under
  ``torch.inference_mode``, LoRA through ``peft`` and the checkpoint layout.

torch, transformers, peft and accelerate are imported inside functions, so importing
``prefroute.routers`` stays cheap.

Checkpoint layout (beside prefroute's config.json and model.safetensors)::

    hf_model/   full or merged weights (config.json, model.safetensors) + tokenizer files
    adapter/    or: the LoRA adapter (adapter_config.json, adapter_model.safetensors)
                + tokenizer files; the base model comes from the ``backbone`` parameter
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prefroute._logging import logger
from prefroute._torch_util import release_freed_memory, torch_threads
from prefroute.data.battles import Battles
from prefroute.errors import CheckpointError, ConfigError, DataError, check_choice, check_range
from prefroute.routers.base import WinPredictor

LABELS = ("strong_wins", "tie", "weak_wins")
STRONG, TIE, WEAK = 0, 1, 2
_TIES = ("tie", "tie (bothbad)")
HF_MODEL_DIR = "hf_model"
ADAPTER_DIR = "adapter"
FORMATS = ("full", "merged", "adapter")
_LAYER_INDEX = re.compile(r"\.(layers?|h|blocks)\.(\d+)\.")


# labels -------------------------------------------------------------------------------
@dataclass
class WinTargets:
    """Training examples: a prompt, a distribution over LABELS and a weight per battle."""

    prompts: list[str]
    targets: np.ndarray  # [n, 3] float32 rows summing to 1: (strong wins, tie, weak wins)
    weights: np.ndarray  # [n] float32
    counts: dict[str, int] = field(default_factory=dict)
    excluded_opponents: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, rows: np.ndarray) -> WinTargets:
        return WinTargets(
            [self.prompts[i] for i in rows], self.targets[rows], self.weights[rows], self.counts,
            self.excluded_opponents,
        )


def win_targets(
    battles: Battles,
    strong_model: str,
    weak_model: str,
    *,
    use_all_opponents: bool = True,
    use_soft_labels: bool = True,
) -> WinTargets:
    """Orient battles to the pair and turn each into a target over (strong, tie, weak).

    Which battles teach "does the strong model beat the weak one on this prompt":

    * strong vs weak (either side): used as they are; ``model_b`` sides are swapped.
    * with ``use_all_opponents``, battles with exactly one of the pair against another
      model X, with X standing in for the missing side: in strong-vs-X, X plays the weak
      model; in weak-vs-X, X plays the strong model (X's win -> "strong wins"). A stand-in
      is only sound on the right side of the pair member: X stands in for the weak model
      only if the strong model beats X on average over these battles (mean score > 0.5,
      ties counting half), and for the strong model only if X beats the weak model on
      average. Other stand-ins are excluded (their battles say more about X than about the
      prompt) and counted. This is the per-battle analogue of RouteLLM's tier mapping,
      which also treats every model of a tier as the pair's strong or weak model.
    * anything else (neither pair member, zero weight) is skipped and counted.

    Targets: a tie or "tie (bothbad)" -> the tie label; otherwise, with ``use_soft_labels``
    and a judge probability ``p_b_wins``, the strong side's win probability q gives
    (q, 0, 1 - q) (no tie mass); else the hard winner. The ``weight`` column (null = 1)
    weights the loss.
    """
    a = np.asarray(battles.column("model_a"), dtype=object)
    b = np.asarray(battles.column("model_b"), dtype=object)
    winner = np.asarray(battles.column("winner"), dtype=object)
    p_b = battles.numeric("p_b_wins")
    weight = battles.numeric("weight")
    weight = np.where(np.isnan(weight), 1.0, weight)
    S, W = strong_model, weak_model

    exact = ((a == S) & (b == W)) | ((a == W) & (b == S))
    a_in, b_in = (a == S) | (a == W), (b == S) | (b == W)
    one_side = (a_in != b_in) & ~exact
    member_is_a = one_side & a_in
    member = np.where(member_is_a, a, b)
    opponent = np.where(member_is_a, b, a)
    strong_vs_other = one_side & (member == S)
    weak_vs_other = one_side & (member == W)

    # which side plays the strong model: True = model_a
    strong_is_a = np.where(exact, a == S, np.where(strong_vs_other, member_is_a, ~member_is_a))
    is_tie = np.isin(winner, _TIES)
    a_score = np.where(winner == "model_a", 1.0, np.where(winner == "model_b", 0.0, 0.5))
    if use_soft_labels:
        a_score = np.where(np.isnan(p_b) | is_tie, a_score, 1.0 - p_b)
    strong_score = np.where(strong_is_a, a_score, 1.0 - a_score)

    used = exact.copy()
    excluded: list[str] = []
    n_excluded = 0
    if use_all_opponents:
        for kind, mask in (("strong", strong_vs_other), ("weak", weak_vs_other)):
            for x in np.unique(opponent[mask]) if mask.any() else []:
                rows = mask & (opponent == x)
                w = weight[rows]
                mean = float(np.average(strong_score[rows], weights=w)) if w.sum() > 0 else 0.5
                # strong-vs-X: strong_score is the strong model's score, it must beat X;
                # weak-vs-X: strong_score is X's score, X must beat the weak model
                if mean > 0.5:
                    used |= rows
                else:
                    excluded.append(f"{x} (vs {kind}: mean score {mean:.3f})")
                    n_excluded += int(rows.sum())
    zero = used & (weight <= 0)
    used &= weight > 0

    counts = {
        "battles": len(battles),
        "used": int(used.sum()),
        "strong_vs_weak": int((exact & used).sum()),
        "strong_vs_other": int((strong_vs_other & used).sum()),
        "weak_vs_other": int((weak_vs_other & used).sum()),
        "skipped_other_opponents": 0 if use_all_opponents else int(one_side.sum()),
        "skipped_excluded_stand_ins": n_excluded,
        "skipped_without_pair": int((~exact & ~one_side).sum()),
        "skipped_zero_weight": int(zero.sum()),
        "ties": int((is_tie & used).sum()),
    }
    logger.info(
        "neural router labels for %s vs %s: %s", strong_model, weak_model,
        ", ".join(f"{k}={v}" for k, v in counts.items()),
    )
    if excluded:
        logger.info("stand-ins on the wrong side of the pair, not used: %s", "; ".join(excluded))
    if not used.any():
        raise DataError(
            f"no battle involves both {strong_model!r} and {weak_model!r}"
            + ("" if not use_all_opponents else " or one of them against a usable opponent")
            + f"; models in the data: {battles.models()[:20]}",
            field="model_a/model_b",
        )
    rows = np.flatnonzero(used)
    q = strong_score[rows]
    targets = np.zeros((len(rows), 3), dtype=np.float32)
    tie = is_tie[rows]
    targets[:, STRONG] = np.where(tie, 0.0, q)
    targets[:, WEAK] = np.where(tie, 0.0, 1.0 - q)
    targets[:, TIE] = tie
    prompts = battles.prompts
    return WinTargets(
        [prompts[i] for i in rows], targets, weight[rows].astype(np.float32), counts, excluded
    )


def split_by_prompt(
    prompts: Sequence[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation); a prompt's battles all fall on one side."""
    distinct, inverse = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    n_val = int(round(val_fraction * len(distinct)))
    if val_fraction <= 0 or n_val == 0 or n_val >= len(distinct):
        return np.arange(len(prompts)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val_prompts = np.zeros(len(distinct), dtype=bool)
    val_prompts[rng.choice(len(distinct), size=n_val, replace=False)] = True
    is_val = val_prompts[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def cut_middle(ids: list[int], budget: int) -> list[int]:
    """``ids`` if they fit ``budget``, else its first and last tokens with the middle removed.

    A long prompt usually ends with what is asked; keeping both ends keeps the task and the
    question.
    """
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


class LengthBucketedBatchSampler:
    """Batches of similar-length examples: less padding, so fewer tokens per step.

    With ``shuffle``, the examples are shuffled, cut into pools of 50 batches, each pool
    sorted by length and cut into batches, and the batches shuffled; a new order every
    epoch, reproducible from ``seed``. Without it, batches follow the length order.
    """

    POOL_BATCHES = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i : i + size].tolist() for i in range(0, n, size))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(n)
        pool = size * self.POOL_BATCHES
        batches = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + size].tolist() for i in range(0, len(chunk), size))
        for b in rng.permutation(len(batches)):
            yield batches[b]


# devices ------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def available_device(device: str) -> str:
    """``resolve_device(device)``, or the best available one if that is missing here.

    A checkpoint records the device it was trained on; loading it on a machine without
    that accelerator should still work.
    """
    import torch

    resolved = resolve_device(device)
    missing = (resolved.startswith("cuda") and not torch.cuda.is_available()) or (
        resolved == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        fallback = resolve_device("auto")
        logger.warning("device %r is not available here; using %r", device, fallback)
        return fallback
    return resolved


def resolve_mixed_precision(mixed_precision: str, device: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CUDA device that supports it, else ``"no"`` (fp32)."""
    if mixed_precision != "auto":
        return mixed_precision
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def autocast_context(device: str, mixed_precision: str) -> contextlib.AbstractContextManager:
    """torch autocast for bf16/fp16 on CUDA; a no-op otherwise."""
    import torch

    if device.startswith("cuda") and mixed_precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def make_accelerator(device: str, mixed_precision: str, grad_accum_steps: int) -> Any:
    """An ``accelerate.Accelerator``; under ``accelerate launch`` it follows the launcher."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":", 1)[1]))
    kwargs = {
        "cpu": device == "cpu",
        "mixed_precision": mixed_precision,
        "gradient_accumulation_steps": grad_accum_steps,
    }
    try:
        return Accelerator(**kwargs)
    except ValueError:
        # the process-wide state was set up by an earlier fit with other settings
        if AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def _linear_module_names(model: Any) -> list[str]:
    """Leaf names of the linear layers inside the transformer blocks (not the output head)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and _LAYER_INDEX.search(name + ".")
    }
    return sorted(names)


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


# the shared predictor -----------------------------------------------------------------
class NeuralWinPredictor(WinPredictor):
    """Base of the transformer win predictors; subclasses supply the model-specific hooks.

    Shared parameters (keyword-only; the subclasses document them too)
    -----------------
    backbone: the base model (see ``prefroute.routers.backbones``).
    max_length: the most tokens an input is given; a longer prompt loses its middle, so its
        beginning and its end (where the question usually is) are both kept.
    tie_credit: P(strong wins) = p(strong wins) + tie_credit * p(tie). 0.5 (default) is the
        expected score with ties counting half, as in Bradley-Terry fits; 0 counts a tie as
        a loss for the strong model (route to strong only when it is clearly better).
    use_all_opponents, use_soft_labels: which battles and targets (see ``win_targets``).
    epochs, max_steps: training length (max_steps, if set, caps the optimizer steps).
    batch_size, grad_accum_steps: examples per micro-batch, micro-batches per step.
    lr, weight_decay, warmup_ratio, max_grad_norm: AdamW, linear warmup then linear decay
        to 0, gradient clipping (0 = off).
    max_train_battles: use at most this many labelled battles (drawn with ``seed``).
    val_fraction: share of distinct prompts held out for validation (0 = none).
    eval_every: validate every this many optimizer steps (None: at the end of each epoch);
        always at the end.
    restore_best: end with the weights of the validation step with the lowest loss.
    lora_r: LoRA rank (0 = full fine-tuning); lora_alpha, lora_dropout and
        lora_target_modules (module names, or "all-linear"; None: peft's default for the
        architecture).
    train_last_layers: train only the top this-many transformer layers (None: all; "auto":
        all on a GPU, the class's ``cpu_train_last_layers`` on a CPU): LoRA
        goes into those layers only; full fine-tuning freezes the embeddings and the layers
        below (the head and final norm still train). Gradients then stop at the lowest
        trained layer, which makes a training step close to a forward pass on a CPU.
    max_memory_gb: the most memory a training step may use, in GiB (None: half of the
        machine's RAM). Each batch is cut into micro-batches that fit it, gradient
        checkpointing is switched on only when one longest sequence would not fit otherwise,
        and a budget that cannot be met fails before training (see ``memory_plan``).
    merge_adapter: with LoRA, merge the adapter into the weights after training (faster
        inference; the checkpoint holds full weights) or keep it separate (the checkpoint
        holds only the adapter and loads the base model from ``backbone``).
    device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    mixed_precision: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"no"``,
        ``"bf16"``, ``"fp16"``.
    predict_batch_size: prompts per forward pass when scoring, sorted by length (None: 64 on
        a GPU, 8 on a CPU, where bigger passes only add padding: 9.1 vs 5.3 prompts/s for
        MiniLM at 64 mixed benchmark prompts).
    torch_threads: torch intra-op threads while training and scoring (None: torch's
        default; restored afterwards). On a CPU shared with other jobs 1 can be several
        times faster than oversubscribed threads.
    seed: seeds weight initialisation, subsampling, the split and the data order.
    progress: tqdm bar over optimizer steps.
    """

    peft_task_type: ClassVar[str]
    # layers trained by default on a CPU (train_last_layers="auto"); None: all of them
    cpu_train_last_layers: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        strong_model: str,
        weak_model: str,
        backbone: str,
        max_length: int,
        tie_credit: float = 0.5,
        use_all_opponents: bool = True,
        use_soft_labels: bool = True,
        epochs: int = 1,
        max_steps: int | None = None,
        batch_size: int = 16,
        grad_accum_steps: int = 1,
        lr: float = 3e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        max_grad_norm: float = 1.0,
        max_train_battles: int | None = None,
        val_fraction: float = 0.1,
        eval_every: int | None = None,
        restore_best: bool = True,
        lora_r: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | str | None = None,
        train_last_layers: int | str | None = "auto",
        max_memory_gb: float | None = None,
        merge_adapter: bool = False,
        device: str = "auto",
        mixed_precision: str = "auto",
        predict_batch_size: int | None = None,
        torch_threads: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__(strong_model=strong_model, weak_model=weak_model)
        self.backbone = backbone
        self.max_length = max_length
        self.tie_credit = tie_credit
        self.use_all_opponents = use_all_opponents
        self.use_soft_labels = use_soft_labels
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.grad_accum_steps = grad_accum_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.max_grad_norm = max_grad_norm
        self.max_train_battles = max_train_battles
        self.val_fraction = val_fraction
        self.eval_every = eval_every
        self.restore_best = restore_best
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = (
            list(lora_target_modules) if isinstance(lora_target_modules, (list, tuple))
            else lora_target_modules
        )
        self.train_last_layers = train_last_layers
        self.max_memory_gb = max_memory_gb
        self.merge_adapter = merge_adapter
        self.device = device
        self.mixed_precision = mixed_precision
        self.predict_batch_size = predict_batch_size
        self.torch_threads = torch_threads
        self.seed = seed
        self.progress = progress

    # subclass hooks -------------------------------------------------------------------
    def _build(self, location: str) -> tuple[Any, Any]:
        """(model, tokenizer) fresh from the backbone, ready to train (fp32)."""
        raise NotImplementedError

    def _load_model(self, folder: Path) -> Any:
        """The full model saved in ``folder`` (fp32)."""
        raise NotImplementedError

    def _load_tokenizer(self, folder: Path) -> Any:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called once the tokenizer is set (after build or load): precompute what it needs."""

    def _query_ids(self, prompts: list[str]) -> list[list[int]]:
        """Each prompt's token ids, cut in the middle to the room ``max_length`` leaves."""
        raise NotImplementedError

    def _sequence_overhead(self) -> int:
        """Tokens every input adds around the prompt (instruction, special tokens)."""
        return 0

    def _collate(self, ids: list[list[int]]) -> dict[str, Any]:
        """Padded tensors for token-id lists from ``_query_ids``."""
        raise NotImplementedError

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        """Tokenised, padded tensors for a list of prompts."""
        return self._collate(self._query_ids(prompts))

    def _outputs(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(log-probabilities the loss uses [B, 3], class logits for scoring [B, 3])."""
        raise NotImplementedError

    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def _load_extra_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (before ``_prepare``)."""

    # checks ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        owner = type(self).__name__

        def positive_int(name: str, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"The '{name}' parameter of {owner} must be a positive int"
                    + (" or None" if optional else "")
                    + f". Got {value!r} instead."
                )

        for name in ("max_length", "epochs", "batch_size", "grad_accum_steps"):
            positive_int(name)
        for name in ("max_steps", "max_train_battles", "eval_every", "torch_threads",
                     "predict_batch_size"):
            positive_int(name, optional=True)
        if self.train_last_layers != "auto":
            positive_int("train_last_layers", optional=True)
        if self.max_memory_gb is not None:
            check_range("max_memory_gb", owner, self.max_memory_gb, low=0.0, low_inclusive=False)
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ConfigError(
                f"The 'lora_r' parameter of {owner} must be an int >= 0 (0 = full "
                f"fine-tuning). Got {self.lora_r!r} instead."
            )
        check_range("tie_credit", owner, self.tie_credit, low=0.0, high=1.0)
        check_range("lr", owner, self.lr, low=0.0, low_inclusive=False)
        check_range("weight_decay", owner, self.weight_decay, low=0.0)
        check_range("warmup_ratio", owner, self.warmup_ratio, low=0.0, high=1.0)
        check_range("max_grad_norm", owner, self.max_grad_norm, low=0.0)
        check_range("val_fraction", owner, self.val_fraction, low=0.0, high=1.0,
                    high_inclusive=False)
        check_range("lora_alpha", owner, self.lora_alpha, low=0.0, low_inclusive=False)
        check_range("lora_dropout", owner, self.lora_dropout, low=0.0, high=1.0,
                    high_inclusive=False)
        check_choice("mixed_precision", owner, self.mixed_precision, ("auto", "no", "bf16", "fp16"))
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            raise ConfigError(
                f"The 'device' parameter of {owner} must be 'auto', 'cpu', 'cuda', 'cuda:N' "
                f"or 'mps'. Got {self.device!r} instead."
            )

    # training -------------------------------------------------------------------------
    def _fit(self, battles: Battles) -> None:
        self._check_params()
        with torch_threads(self.torch_threads):
            self._fit_with_threads(battles)

    def _fit_with_threads(self, battles: Battles) -> None:
        from accelerate.utils import set_seed

        from prefroute.routers.backbones import backbone_location

        data = win_targets(
            battles, self.strong_model, self.weak_model,
            use_all_opponents=self.use_all_opponents, use_soft_labels=self.use_soft_labels,
        )
        counts = dict(data.counts)
        if self.max_train_battles is not None and len(data) > self.max_train_battles:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(len(data), size=self.max_train_battles, replace=False))
            logger.info("using %d of %d labelled battles (max_train_battles)", len(keep), len(data))
            data = data.take(keep)
        counts["after_subsampling"] = len(data)
        train_rows, val_rows = split_by_prompt(data.prompts, self.val_fraction, self.seed)
        train, val = data.take(train_rows), data.take(val_rows)
        counts.update(train=len(train), validation=len(val))
        logger.info("%s: %d training and %d validation battles", self.router_type, len(train),
                    len(val))

        device = resolve_device(self.device)
        accelerator = make_accelerator(
            device, resolve_mixed_precision(self.mixed_precision, device), self.grad_accum_steps
        )
        self.last_layers_ = self._resolve_last_layers(device)
        set_seed(self.seed)
        model, tokenizer = self._build(backbone_location(self.backbone, owner=type(self).__name__,
                                                         progress=self.progress))
        self.tokenizer_ = tokenizer
        self._prepare()
        if self.lora_r > 0:
            model = self._with_lora(model)
        elif self.last_layers_ is not None:
            self._freeze_lower_layers(model)
        train_ids = self._query_ids(train.prompts)
        val_ids = self._query_ids(val.prompts)
        self.memory_plan_ = self._plan_memory(model, train_ids + val_ids, device)
        counts["train_tokens"] = sum(len(q) + self._sequence_overhead() for q in train_ids)
        start = time.time()
        model, curve = self._train_loop(model, (train, train_ids), (val, val_ids), accelerator)
        curve["seconds"] = round(time.time() - start, 3)
        model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        self.format_ = "full" if self.lora_r == 0 else "adapter"
        if self.lora_r > 0 and self.merge_adapter:
            model = model.merge_and_unload()
            self.format_ = "merged"
        model.eval()
        self.model_ = model
        self.device_ = str(accelerator.device)
        self.precision_ = accelerator.mixed_precision
        self.training_ = {"counts": counts, "excluded_stand_ins": data.excluded_opponents,
                          "memory_plan": self.memory_plan_.describe(),
                          "train_last_layers": self.last_layers_, **curve}

    def _resolve_last_layers(self, device: str) -> int | None:
        if self.train_last_layers != "auto":
            return self.train_last_layers
        if device == "cpu" and self.cpu_train_last_layers is not None:
            logger.info(
                "on a CPU %s trains its top %d layers (train_last_layers='auto'); pass "
                "train_last_layers=None to train all of them", self.router_type,
                self.cpu_train_last_layers,
            )
            return self.cpu_train_last_layers
        return None

    def _plan_memory(self, model: Any, ids: list[list[int]], device: str) -> Any:
        from prefroute.routers.memory_plan import (
            CPU_MICRO_BATCH_TOKENS,
            default_memory_budget_gb,
            plan_training_memory,
        )

        budget = self.max_memory_gb or default_memory_budget_gb()
        longest = max((len(q) for q in ids), default=0) + self._sequence_overhead()
        plan = plan_training_memory(
            model, max_memory_gb=budget, longest_sequence=longest,
            trained_layers=self.last_layers_,
            # GPU activations do not count against host RAM; the budget then caps the GPU's
            resident_bytes=0 if device.startswith("cuda") else None,
            max_tokens=CPU_MICRO_BATCH_TOKENS if device == "cpu" else None,
        )
        if plan.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        logger.info("%s: %s; longest input %d tokens", self.router_type, plan.describe(), longest)
        return plan

    def _top_layers(self, model: Any) -> list[int] | None:
        """Indices of the layers ``train_last_layers`` keeps trainable (None: all)."""
        last = getattr(self, "last_layers_", self.train_last_layers)
        if last is None or last == "auto":
            return None
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if not isinstance(n_layers, int):
            raise ConfigError(
                f"train_last_layers needs a model config with num_hidden_layers; "
                f"{type(model).__name__} has none"
            )
        return list(range(max(0, n_layers - last), n_layers))

    def _freeze_lower_layers(self, model: Any) -> None:
        keep = set(self._top_layers(model) or [])
        frozen = 0
        for name, p in model.named_parameters():
            match = _LAYER_INDEX.search(name)
            if match is not None:
                p.requires_grad = int(match.group(2)) in keep
            elif "embed" in name:
                p.requires_grad = False
            frozen += 0 if p.requires_grad else p.numel()
        logger.info("training the top %d layers: %d parameters frozen", len(keep), frozen)

    def _with_lora(self, model: Any) -> Any:
        from peft import LoraConfig, get_peft_model

        layers = self._top_layers(model)
        targets = self.lora_target_modules
        if targets == "all-linear" and layers is not None:
            targets = _linear_module_names(model)  # peft takes no layer list with a string
        config = LoraConfig(
            task_type=self.peft_task_type,
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            layers_to_transform=layers,
        )
        model = get_peft_model(model, config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info("LoRA r=%d: %d of %d parameters trainable", self.lora_r, trainable, total)
        return model

    def _loader(
        self, data: WinTargets, ids: list[list[int]], *, shuffle: bool, batch_size: int
    ) -> Any:
        """Batches of ``batch_size`` examples of similar length, each cut into micro-batches.

        A batch is a list of micro-batches (dicts of tensors with ``targets`` and ``weights``)
        that together hold ``batch_size`` examples and each fit the memory plan.
        """
        import torch
        from torch.utils.data import DataLoader

        from prefroute.routers.memory_plan import micro_batches

        targets = torch.from_numpy(data.targets)
        weights = torch.from_numpy(data.weights)
        overhead = self._sequence_overhead()
        lengths = [len(q) + overhead for q in ids]
        plan = self.memory_plan_

        def collate(rows: list[int]) -> list[dict[str, Any]]:
            parts = []
            for group in micro_batches([lengths[i] for i in rows], plan):
                picked = [rows[g] for g in group]
                batch = self._collate([ids[i] for i in picked])
                batch["targets"] = targets[picked]
                batch["weights"] = weights[picked]
                parts.append(batch)
            return parts

        sampler = LengthBucketedBatchSampler(lengths, batch_size, shuffle=shuffle, seed=self.seed)
        return DataLoader(list(range(len(data))), batch_sampler=sampler, collate_fn=collate)

    def _batch_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
        """(weighted per-example losses [B], weights [B], class logits [B, 3], targets)."""
        targets = batch.pop("targets")
        weights = batch.pop("weights")
        logprobs, class_logits = self._outputs(model, batch)
        losses = -(targets * logprobs.float()).sum(-1)
        return losses * weights, weights, class_logits, targets

    def _evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict[str, float]:
        import torch

        model.eval()
        loss_sum = weight_sum = correct = n = 0.0
        with torch.inference_mode():
            for parts in loader:
                for batch in parts:
                    losses, weights, class_logits, targets = self._batch_losses(model, batch)
                    losses, weights, class_logits, targets = accelerator.gather_for_metrics(
                        (losses, weights, class_logits, targets)
                    )
                    loss_sum += float(losses.sum())
                    weight_sum += float(weights.sum())
                    correct += float((class_logits.argmax(-1) == targets.argmax(-1)).sum())
                    n += len(targets)
        model.train()
        return {"val_loss": loss_sum / max(weight_sum, 1e-12), "val_accuracy": correct / max(n, 1)}

    def _train_loop(
        self,
        model: Any,
        train_data: tuple[WinTargets, list[list[int]]],
        val_data: tuple[WinTargets, list[list[int]]],
        accelerator: Any,
    ) -> tuple[Any, dict[str, Any]]:
        import torch
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        (train, train_ids), (val, val_ids) = train_data, val_data
        train_loader = self._loader(train, train_ids, shuffle=True, batch_size=self.batch_size)
        val_loader = (self._loader(val, val_ids, shuffle=False, batch_size=self.batch_size)
                      if len(val) else None)
        steps_per_epoch = max(1, math.ceil(len(train_loader) / self.grad_accum_steps))
        total_steps = steps_per_epoch * self.epochs
        if self.max_steps is not None:
            total_steps = min(total_steps, self.max_steps)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.warmup_ratio * total_steps), total_steps
        )
        model, optimizer, train_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, scheduler
        )
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)

        curve: dict[str, Any] = {"step": [], "epoch": [], "train_loss": [], "lr": [], "evals": [],
                                 "total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
        best_loss, best_step, best_state = math.inf, None, None
        bar = tqdm(total=total_steps, desc=f"train {self.router_type}",
                   disable=not self.progress or not accelerator.is_local_main_process)

        def validate(step: int, epoch: int) -> None:
            nonlocal best_loss, best_step, best_state
            if val_loader is None:
                return
            metrics = self._evaluate(model, val_loader, accelerator)
            curve["evals"].append({"step": step, "epoch": epoch,
                                   **{k: round(v, 6) for k, v in metrics.items()}})
            bar.set_postfix(val_loss=f"{metrics['val_loss']:.4f}",
                            val_acc=f"{metrics['val_accuracy']:.3f}")
            if metrics["val_loss"] < best_loss:
                best_loss, best_step = metrics["val_loss"], step
                if self.restore_best:
                    best_state = {k: v.detach().to("cpu", copy=True)
                                  for k, v in accelerator.unwrap_model(model).named_parameters()
                                  if v.requires_grad}

        model.train()
        step, window = 0, []
        done = False
        started = time.time()
        for epoch in range(self.epochs):
            for parts in train_loader:
                with accelerator.accumulate(model):
                    # the micro-batches of one batch add up to the batch's weighted mean loss
                    total_weight = sum(p["weights"].sum() for p in parts).clamp_min(1e-12)
                    loss = 0.0
                    for batch in parts:
                        losses, _, _, _ = self._batch_losses(model, batch)
                        part_loss = losses.sum() / total_weight
                        accelerator.backward(part_loss)
                        loss = loss + part_loss.detach()
                    if accelerator.sync_gradients and self.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                window.append(loss)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if step == 1 and total_steps > 1:
                    first = time.time() - started
                    logger.warning(
                        "%s: the first of %d training steps took %.0f s; expect about %.0f "
                        "minutes in all", self.router_type, total_steps, first,
                        first * total_steps * 1.1 / 60,
                    )
                mean_loss = float(accelerator.reduce(torch.stack(window).mean(), "mean"))
                window = []
                curve["step"].append(step)
                curve["epoch"].append(epoch)
                curve["train_loss"].append(round(mean_loss, 6))
                curve["lr"].append(float(scheduler.get_last_lr()[0]))
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                if self.eval_every is not None and step % self.eval_every == 0:
                    validate(step, epoch)
                if step >= total_steps:
                    done = True
                    break
            if self.eval_every is None and not done:
                validate(step, epoch)
            if done:
                break
        if not curve["evals"] or curve["evals"][-1]["step"] != step:
            validate(step, epoch)
        bar.close()
        curve["best_step"] = best_step
        curve["best_val_loss"] = None if best_step is None else round(best_loss, 6)
        curve["restored_best"] = bool(best_state is not None and best_step != step)
        if best_state is not None and best_step != step:
            unwrapped = accelerator.unwrap_model(model)
            params = dict(unwrapped.named_parameters())
            with torch.no_grad():
                for k, v in best_state.items():
                    params[k].copy_(v.to(params[k].device))
            logger.info("restored the weights of step %d (val loss %.4f)", best_step, best_loss)
        return model, curve

    # inference ------------------------------------------------------------------------
    def to(self, device: str) -> NeuralWinPredictor:
        """Move the fitted model to ``device`` (e.g. a checkpoint trained on a GPU to a CPU)."""
        if not self.is_fitted:
            raise ConfigError(f"{type(self).__name__} is not fitted: nothing to move")
        device = resolve_device(device)
        self.model_.to(device)
        self.device_ = device
        self.precision_ = resolve_mixed_precision(self.mixed_precision, device)
        return self

    def class_probs(self, prompts: Sequence[str]) -> np.ndarray:
        """[n, 3] probabilities of (strong wins, tie, weak wins) per prompt."""
        import torch
        from tqdm.auto import tqdm

        model = self.model_
        device = next(model.parameters()).device
        precision = getattr(self, "precision_", "no")
        ids = self._query_ids(list(prompts))
        # sorted by length, a pass pads little; memory is bounded by step x max_length
        order = np.argsort([len(q) for q in ids], kind="stable")
        out = np.empty((len(ids), 3), dtype=np.float64)
        step = self.predict_batch_size or (8 if device.type == "cpu" else 64)
        bar = tqdm(total=len(ids), desc=f"score {self.router_type}", unit="prompt",
                   disable=not self.progress or len(ids) <= 4 * step)
        with (torch_threads(self.torch_threads), torch.inference_mode(),
              autocast_context(str(device), precision)):
            for n_pass, start in enumerate(range(0, len(ids), step)):
                rows = order[start : start + step]
                batch = to_device(self._collate([ids[i] for i in rows]), device)
                _, class_logits = self._outputs(model, batch)
                out[rows] = torch.softmax(class_logits.float(), dim=-1).cpu().numpy()
                bar.update(len(rows))
                if device.type == "cpu" and n_pass % 16 == 15:
                    release_freed_memory()
        bar.close()
        if device.type == "cpu":
            release_freed_memory()
        return out

    def _predict(self, prompts: list[str]) -> np.ndarray:
        probs = self.class_probs(prompts)
        return probs[:, STRONG] + self.tie_credit * probs[:, TIE]

    # checkpoints ----------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        tensors, extra = self._extra_state()
        if self.format_ == "merged" and not self.merge_adapter:
            raise ConfigError(
                "this predictor merged its LoRA adapter after training (merge_adapter=True); "
                "it can only be saved with merged weights"
            )
        # merge_adapter switched on after fitting: save merged weights, keep the adapter here
        fmt = "merged" if self.format_ == "adapter" and self.merge_adapter else self.format_
        return (
            {"class_order": np.arange(len(LABELS), dtype=np.int64), **tensors},
            {
                "labels": list(LABELS),
                "format": fmt,
                "training": getattr(self, "training_", {}),
                **extra,
            },
        )

    def _save_files(self, directory: Path) -> None:
        model = self.model_
        if self.format_ == "adapter" and not self.merge_adapter:
            folder = directory / ADAPTER_DIR
            model.save_pretrained(folder)
        else:
            if self.format_ == "adapter":  # merge a copy; the in-memory model keeps its adapter
                model = copy.deepcopy(model).merge_and_unload()
            folder = directory / HF_MODEL_DIR
            model.save_pretrained(folder)
        self.tokenizer_.save_pretrained(folder)
        if not any(folder.glob("*.safetensors")):
            raise CheckpointError(f"{folder}: the model was not written as safetensors")

    def _load_state(
        self, tensors: dict[str, np.ndarray], extra: dict[str, Any], directory: Path
    ) -> None:
        from prefroute.router import check_hf_files, check_loaded_params

        # the saved parameters and the saved tokenizers' file names, before any weights
        check_loaded_params(self, directory / "config.json")
        for sub in (HF_MODEL_DIR, ADAPTER_DIR):
            check_hf_files(directory / sub, directory / "config.json")
        fmt, labels = extra.get("format"), extra.get("labels", [])
        if fmt not in FORMATS or not isinstance(labels, list) or labels != list(LABELS):
            raise CheckpointError(
                f"{directory / 'config.json'}: state.format must be one of {list(FORMATS)} and "
                f"state.labels {list(LABELS)}; got {fmt!r} and {extra.get('labels')!r}"
            )
        if "class_order" not in tensors:
            raise CheckpointError(f"{directory}: model.safetensors has no 'class_order' tensor")
        if not isinstance(extra.get("training", {}), dict):
            raise CheckpointError(f"{directory / 'config.json'}: state.training must be an "
                                  f"object, got {type(extra['training']).__name__}")
        folder = directory / (ADAPTER_DIR if fmt == "adapter" else HF_MODEL_DIR)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is missing; the checkpoint is incomplete")
        device = available_device(self.device)
        try:
            if fmt == "adapter":
                from peft import PeftModel

                from prefroute.routers.backbones import backbone_location

                location = backbone_location(self.backbone, owner=type(self).__name__,
                                             progress=self.progress)
                base = self._load_model(Path(location) if Path(location).exists() else location)
                model = PeftModel.from_pretrained(base, str(folder))
            else:
                model = self._load_model(folder)
            tokenizer = self._load_tokenizer(folder)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the model in {folder}: {e}") from None
        self.tokenizer_ = tokenizer
        self._load_extra_state(tensors, extra)
        self._prepare()
        model.to(device)
        model.eval()
        self.model_ = model
        self.format_ = fmt
        self.device_ = device
        self.precision_ = resolve_mixed_precision(self.mixed_precision, device)
        self.training_ = extra.get("training", {})


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time notices (e.g. a fresh classification head)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)

