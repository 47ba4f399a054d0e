"""How much a neural router's training step may hold in memory, decided before training.

A transformer's training step keeps activations for the backward pass: memory grows with the
number of tokens in a micro-batch, with the number of layers that train (layers below the
lowest trained one run without a graph), and, for attention computed without a fused kernel,
with the sequence length. ``plan_training_memory`` turns a budget (``max_memory_gb``) into the
most tokens one micro-batch may hold and decides whether gradient checkpointing is needed, so
that a batch is split into micro-batches instead of exhausting the machine. A budget that cannot
hold even one longest sequence fails before any training.

The per-token constants were measured on this project's CPU machine (peak RSS of one LoRA
training step of SmolLM2-135M at 128 and 2,048 tokens, RESULTS "Neural routers within a
laptop's memory"): about 3.1 MB per token with all 30 layers trained and 1.2 MB with gradient
checkpointing. They are expressed per layer and per hidden unit so other backbones scale, and
carry a safety margin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prefroute.errors import ConfigError

GIB = 2**30
# bytes kept per token, per trained layer, per (hidden + intermediate) unit: measured 12.2
# without checkpointing, 4.8 with it on SmolLM2-135M (fp32, LoRA on every linear layer)
ACTIVATION_FACTOR = 14.0
CHECKPOINTED_FACTOR = 6.0
# the runtime around the model: allocator slack, tokenizer, Python, torch kernels
FIXED_OVERHEAD_BYTES = int(0.75 * GIB)
# AdamW keeps the gradient and two moments per trainable parameter (fp32)
OPTIMIZER_BYTES_PER_PARAM = 12
# on a CPU, throughput per token stops growing long before this many tokens per pass, so a
# larger micro-batch only costs memory (bert on 600 MMLU-Pro battles peaked at 6.6 GiB without)
CPU_MICRO_BATCH_TOKENS = 4096


def total_memory_bytes() -> int:
    """The machine's RAM (or the cgroup limit when it is lower)."""
    import psutil

    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_memory_budget_gb() -> float:
    """Half of the machine's memory, in GiB: the default ``max_memory_gb``."""
    return round(total_memory_bytes() / 2 / GIB, 1)


@dataclass(frozen=True)
class MemoryPlan:
    """What one training step may hold: the budget and how a batch is cut to fit it."""

    budget_bytes: int
    fixed_bytes: int
    gradient_checkpointing: bool
    trained_layers: int
    layer_units: int
    num_heads: int
    max_tokens: int | None = None  # padded tokens per micro-batch at most (None: no cap)

    def bytes_for(self, n_sequences: int, seq_len: int) -> int:
        """Estimated peak bytes of a micro-batch of ``n_sequences`` padded to ``seq_len``."""
        factor = CHECKPOINTED_FACTOR if self.gradient_checkpointing else ACTIVATION_FACTOR
        per_token = factor * self.layer_units * 4 * self.trained_layers
        # attention without a fused kernel keeps heads x seq_len scores per token and layer
        attention_layers = 1 if self.gradient_checkpointing else self.trained_layers
        per_token += 8 * self.num_heads * seq_len * attention_layers
        return int(self.fixed_bytes + n_sequences * seq_len * per_token)

    def max_sequences(self, seq_len: int) -> int:
        """How many ``seq_len``-token sequences one micro-batch may hold (0: not even one)."""
        one = self.bytes_for(1, seq_len) - self.fixed_bytes
        fit = max(0, (self.budget_bytes - self.fixed_bytes) // max(one, 1))
        if self.max_tokens is not None and fit >= 1:
            fit = max(1, min(fit, self.max_tokens // max(seq_len, 1)))
        return fit

    def describe(self) -> str:
        return (
            f"memory budget {self.budget_bytes / GIB:.1f} GiB (model, optimizer and runtime "
            f"{self.fixed_bytes / GIB:.1f} GiB), {self.trained_layers} trained layers, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
        )


def _model_shape(model: Any) -> tuple[int, int, int, int]:
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(hidden, int):
        raise ConfigError(
            f"cannot plan training memory for {type(model).__name__}: its config has no "
            "num_hidden_layers / hidden_size"
        )
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", None) or 1
    return layers, hidden, int(intermediate), int(heads)


def plan_training_memory(
    model: Any,
    *,
    max_memory_gb: float,
    longest_sequence: int,
    trained_layers: int | None,
    resident_bytes: int | None = None,
    max_tokens: int | None = None,
) -> MemoryPlan:
    """A plan that fits one ``longest_sequence``-token sequence in ``max_memory_gb``.

    Gradient checkpointing is switched on only when a single longest sequence does not fit
    without it (it costs about a third more compute). ``resident_bytes`` is what the process
    holds before training (default: its current RSS, which includes the loaded weights);
    ``max_tokens`` caps the padded tokens of a micro-batch whatever the budget allows.
    """
    if not isinstance(max_memory_gb, (int, float)) or isinstance(max_memory_gb, bool) or not (
        max_memory_gb > 0
    ):
        raise ConfigError(
            f"--max-memory-gb must be a positive number of GiB, got {max_memory_gb!r}"
        )
    layers, hidden, intermediate, heads = _model_shape(model)
    trained = layers if trained_layers is None else min(trained_layers, layers)
    if resident_bytes is None:
        import psutil

        resident_bytes = psutil.Process(os.getpid()).memory_info().rss
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = resident_bytes + FIXED_OVERHEAD_BYTES + OPTIMIZER_BYTES_PER_PARAM * trainable
    budget = int(max_memory_gb * GIB)
    for checkpointing in (False, True):
        plan = MemoryPlan(budget, fixed, checkpointing, trained, hidden + intermediate, heads,
                          max_tokens)
        if plan.max_sequences(longest_sequence) >= 1:
            return plan
    need = plan.bytes_for(1, longest_sequence)
    raise ConfigError(
        f"--max-memory-gb {max_memory_gb:g} cannot hold one training step: the model, optimizer "
        f"and runtime take {fixed / GIB:.1f} GiB and one {longest_sequence}-token sequence needs "
        f"about {need / GIB:.1f} GiB in all even with gradient checkpointing. Raise "
        "--max-memory-gb, lower max_length, or train fewer layers (train_last_layers)"
    )


def micro_batches(lengths: list[int], plan: MemoryPlan) -> list[list[int]]:
    """Cut one batch (token lengths, any order) into micro-batches that fit ``plan``.

    Rows are sorted by length so each micro-batch pads little; returned as positions into
    ``lengths``. Every row appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        candidate = current + [i]
        longest = lengths[i]  # sorted: the newest row is the longest
        if current and len(candidate) > plan.max_sequences(longest):
            groups.append(current)
            candidate = [i]
        current = candidate
    if current:
        groups.append(current)
    return groups
