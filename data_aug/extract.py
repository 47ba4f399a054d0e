"""Final-answer extraction from free-text model answers, and grading against gold answers.

Two kinds of answers: a multiple-choice letter (MMLU, MMLU-Pro: A-J) and a final number
(GSM8K). Extraction goes from the most explicit signal to the weakest one and returns
``None`` when nothing usable is found (a grader then counts the answer as wrong).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from prefroute.errors import ConfigError, check_choice

KINDS = ("choice", "number")
DEFAULT_LETTERS = "ABCDEFGHIJ"

# --- multiple choice --------------------------------------------------------------------

_ANSWER_WORDS = (r"(?:final\s+answer|correct\s+answer|best\s+answer|answer|correct\s+option|"
                 r"correct\s+choice|best\s+option|right\s+option)")


def _choice_patterns(letters: str) -> list[re.Pattern]:
    cls = f"[{letters}]"
    # a letter standing alone: not glued to other letters or digits
    alone = rf"(?<![A-Za-z0-9])\(?\**({cls})\**\)?(?![A-Za-z0-9])"
    return [
        # "the answer is (B)", "Answer: **D**", "final answer: C", "correct option is E."
        re.compile(rf"{_ANSWER_WORDS}\s*(?:is|would\s+be|will\s+be|:|=|-)?\s*(?:option\s+|choice\s+)?"
                   rf"[:\s]*{alone}", re.IGNORECASE),
        # "\boxed{G}", "\boxed{\text{G}}"
        re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*\(?({cls})\)?\s*\}}?\s*\}}"),
        # "**C**", "**(C)**", "**C.**", "**C) text**" (bold letter)
        re.compile(rf"\*\*\s*\(?({cls})[).:]?(?:\*\*|\s)"),
        # "I'd go with F", "I choose (H)", "I pick J", "select D"
        re.compile(rf"(?:go\s+with|choose|pick|select|opt\s+for)\s+(?:option\s+|choice\s+)?{alone}",
                   re.IGNORECASE),
        # an answer that starts with its letter: "E. Plan C", "(B) 42", "C) the third"
        re.compile(rf"\A\s*\(?({cls})(?:[).:]|\s*$)"),
        # a bare "option H" / "choice H" (weaker: option texts mention options too)
        re.compile(rf"(?:option|choice)\s+{alone}", re.IGNORECASE),
    ]


def _last_standalone_letter(text: str, letters: str) -> str | None:
    cls = f"[{letters}]"
    found = None
    for m in re.finditer(rf"(?<![A-Za-z0-9'’])\(?({cls})\)?(?![A-Za-z0-9'’])", text):
        letter = m.group(1)
        after = text[m.end(): m.end() + 3]
        if letter in "AI" and not m.group(0).startswith("(") and re.match(r"\s+[a-z]", after):
            # "A good choice", "I think": the article / pronoun, not an option letter
            continue
        found = letter
    return found


def extract_choice(text: str | None, letters: str = DEFAULT_LETTERS) -> str | None:
    """The option letter a free-text answer settles on, or ``None``.

    Looks, in order, for "the answer is (B)" / "Answer: D"-style statements, ``\\boxed{C}``,
    a bold letter ``**C**``, "I'd go with F", and finally the last standalone letter
    (skipping the article "A" and the pronoun "I"). Within a rule the last match wins,
    since models tend to reason first and conclude last.

    Examples
    --------
    >>> extract_choice("Option A is tempting, but the answer is (B).")
    'B'
    >>> extract_choice("**C**")
    'C'
    """
    if not text:
        return None
    letters = letters.upper()
    for pattern in _choice_patterns(letters):
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return _last_standalone_letter(text, letters)


# --- numbers ----------------------------------------------------------------------------

# a number with optional sign, currency, thousands separators and decimals, or a fraction
_NUMBER = r"-?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?![\d])")


def normalize_number(text: str | None) -> str | None:
    """A canonical string for a number: no currency, no commas, no trailing zeros.

    ``"$1,234.50"`` -> ``"1234.5"``, ``"42.0"`` -> ``"42"``, ``"3/4"`` -> ``"0.75"``;
    ``None`` when the text is not a number.

    Examples
    --------
    >>> normalize_number("$1,234.50")
    '1234.5'
    """
    if text is None:
        return None
    s = text.strip().rstrip(".").replace(",", "").replace(" ", "")
    s = re.sub(r"[$€£%]", "", s)
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = Decimal(num) / Decimal(den)
        else:
            value = Decimal(s)
    except (InvalidOperation, ZeroDivisionError, ValueError):
        return None
    if not value.is_finite():
        return None
    value = value.quantize(Decimal("1.000000")) if value != value.to_integral_value() else value
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "") else out


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER_RE.finditer(text)]


def extract_number(text: str | None) -> str | None:
    """The final numeric answer of a worked solution, normalised, or ``None``.

    Looks, in order, for GSM8K's ``#### 42`` marker, ``\\boxed{42}``, "the answer is 42" /
    "Answer: $42", a number in bold, then the last number of the text. Calculator
    annotations like ``<<9*2=18>>`` are ignored.

    Examples
    --------
    >>> extract_number("9 * $2 = $18.\\n#### 18")
    '18'
    >>> extract_number("So she pays $1,234.50 in total.")
    '1234.5'
    """
    if not text:
        return None
    text = re.sub(r"<<[^<>]*>>", "", text)
    rules = [
        r"####\s*(.+)",
        r"\\boxed\{([^{}]*)\}",
        r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)?\s*:?\s*(?:\*\*)?([^\n]*)",
        r"\*\*([^*\n]+)\*\*",
    ]
    for rule in rules:
        for chunk in reversed(re.findall(rule, text, flags=re.IGNORECASE)):
            numbers = _numbers(chunk)
            if numbers:
                # after "####" or "answer is", the first number is the answer ("42 apples,
                # 3 left over" rarely happens there; "is 42 dollars" often does)
                value = normalize_number(numbers[0])
                if value is not None:
                    return value
    # no explicit marker: the last number states the result (checked on RouteLLM's GSM8K
    # answers of gpt-4-1106-preview, which end in a sentence instead of "####")
    for candidate in reversed(_numbers(text)):
        value = normalize_number(candidate)
        if value is not None:
            return value
    return None


def numbers_equal(a: str | None, b: str | None, *, tolerance: float = 1e-6) -> bool:
    """Whether two numbers (any surface form) are equal up to ``tolerance``."""
    x, y = normalize_number(a), normalize_number(b)
    if x is None or y is None:
        return False
    return abs(Decimal(x) - Decimal(y)) <= Decimal(str(tolerance))


# --- grading ----------------------------------------------------------------------------

def extract_answer(text: str | None, kind: str, *, letters: str = DEFAULT_LETTERS) -> str | None:
    """Dispatch on ``kind``: ``"choice"`` -> a letter, ``"number"`` -> a normalised number."""
    check_choice("kind", "extract_answer", kind, KINDS)
    return extract_choice(text, letters) if kind == "choice" else extract_number(text)


def is_correct(extracted: str | None, gold: str, kind: str) -> bool:
    """Grade one extracted answer (``None`` = nothing extracted = wrong)."""
    check_choice("kind", "is_correct", kind, KINDS)
    if extracted is None:
        return False
    if kind == "choice":
        return extracted.strip().upper() == str(gold).strip().upper()
    return numbers_equal(extracted, str(gold))


def grade(texts: Sequence[str | None], gold: Sequence[str], kind: str, *,
          letters: str = DEFAULT_LETTERS) -> tuple[list[str | None], list[bool]]:
    """Extract and grade each answer; returns (extracted answers, correct flags)."""
    if len(texts) != len(gold):
        raise ConfigError(f"grade got {len(texts)} answers for {len(gold)} gold answers")
    extracted = [extract_answer(t, kind, letters=letters) for t in texts]
    return extracted, [is_correct(e, g, kind) for e, g in zip(extracted, gold, strict=True)]
