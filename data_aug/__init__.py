"""Training-data augmentation for prefroute: golden labels and LLM-judge labels.

- :mod:`data_aug.extract`: final-answer extraction (choice letter, GSM8K number) and grading.
- :mod:`data_aug.golden`: golden-label battles from correctness tables or raw answers.
- :mod:`data_aug.judge`: judge-labelled battles through any OpenAI-compatible endpoint, both
  answer orders, resumable through a journal (:mod:`data_aug.journal`), with retries
  (:mod:`data_aug.endpoints`) and cost control (:mod:`data_aug.costs`).

The command line is ``prefroute augment golden|judge`` (``prefroute.cli.augment``).
"""

from data_aug.costs import CostMeter, ModelPrice, PriceTable, Usage, estimate_tokens
from data_aug.endpoints import EndpointConfig, EndpointError, RetryPolicy
from data_aug.extract import (
    extract_answer,
    extract_choice,
    extract_number,
    grade,
    is_correct,
    normalize_number,
    numbers_equal,
)
from data_aug.golden import (
    golden_from_answers,
    golden_from_table,
    outcomes_from_answers,
    read_answers,
    select_rows,
)
from data_aug.items import PromptItem, make_items, read_outputs, read_prompts
from data_aug.journal import Journal, read_journal
from data_aug.judge import (
    JudgeReport,
    JudgeRunConfig,
    Side,
    battles_from_journal,
    estimate_run,
    judge_messages,
    parse_verdict,
    run_judge,
    run_judge_async,
    soft_label,
)

__all__ = [
    "CostMeter",
    "EndpointConfig",
    "EndpointError",
    "Journal",
    "JudgeReport",
    "JudgeRunConfig",
    "ModelPrice",
    "PriceTable",
    "PromptItem",
    "RetryPolicy",
    "Side",
    "Usage",
    "battles_from_journal",
    "estimate_run",
    "estimate_tokens",
    "extract_answer",
    "extract_choice",
    "extract_number",
    "golden_from_answers",
    "golden_from_table",
    "grade",
    "is_correct",
    "judge_messages",
    "make_items",
    "normalize_number",
    "numbers_equal",
    "outcomes_from_answers",
    "parse_verdict",
    "read_answers",
    "read_journal",
    "read_outputs",
    "read_prompts",
    "run_judge",
    "run_judge_async",
    "select_rows",
    "soft_label",
]
