"""data_aug: answer extraction, golden battles, and judge labelling against real HTTP servers.

The judge tests run real OpenAI-compatible servers on 127.0.0.1 (tests/openai_stub_server.py)
for two answering models and a judge; the ``openai`` client is not mocked. The servers
inject 429s, 500s, answers slower than the client timeout and malformed verdicts; one run is
cancelled (and one CLI process killed) mid-way and resumed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from openai_stub_server import Fault, Gate, Request, StubOpenAIServer
from typer.testing import CliRunner

from data_aug.costs import CostMeter, PriceTable, Usage, estimate_tokens
from data_aug.endpoints import EndpointConfig, EndpointError, RetryPolicy
from data_aug.extract import (
    extract_choice,
    extract_number,
    grade,
    normalize_number,
    numbers_equal,
)
from data_aug.golden import golden_from_answers, golden_from_table, outcomes_from_answers
from data_aug.items import PromptItem, read_outputs, read_prompts
from data_aug.journal import Journal, read_journal
from data_aug.judge import (
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
from prefroute.cli.augment import app
from prefroute.data.battles import Battles
from prefroute.data.loaders import golden_battles
from prefroute.data.outcomes import load_outcomes
from prefroute.errors import ConfigError, DataError, PrefrouteError

LETTERS = "ABCDEFGHIJ"


# --- extraction ---------------------------------------------------------------------------

def _mmlu_pro_questions(data_dir: Path, n: int) -> list[dict]:
    rows = []
    with open(data_dir / "mmlu_pro" / "questions.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def _styled_answer(style: str, q: dict, letter: str, rng: random.Random) -> str:
    """A free-text answer settling on ``letter``, in one of several styles models use."""
    options = q["options"]
    text = options[LETTERS.index(letter)]
    other = rng.choice([x for x in LETTERS[: len(options)] if x != letter])
    return {
        "answer_is_paren": f"Let's think step by step. Option {other} ignores the premise. "
                           f"The answer is ({letter}).",
        "bold": f"Looking at each option, {other} is wrong.\n\n**{letter}**",
        "answer_colon": f"Reasoning: option ({other}) contradicts the question.\nAnswer: {letter}",
        "bold_answer": f"**Answer: {letter}. {text}**",
        "final_answer": f"I think {other} could work, but after checking, the final answer is "
                        f"{letter}) {text}",
        "go_with": f"Between {other} and {letter}, I'd go with {letter}.",
        "boxed": f"Computing the result gives \\boxed{{{letter}}}",
        "letter_then_text": f"{letter}. {text}",
        "last_letter": f"{text}\n\n{letter}",
        "correct_option": f"The correct option is {letter}: {text}.",
    }[style]


STYLES = ("answer_is_paren", "bold", "answer_colon", "bold_answer", "final_answer", "go_with",
          "boxed", "letter_then_text", "last_letter", "correct_option")


def test_extract_choice_from_styled_answers_to_mmlu_pro_questions(data_dir):
    questions = _mmlu_pro_questions(data_dir, 600)
    rng = random.Random(0)
    accuracy = {}
    for style in STYLES:
        hits = 0
        for q in questions:
            letters = LETTERS[: len(q["options"])]
            answer = _styled_answer(style, q, q["answer"], rng)
            hits += extract_choice(answer, letters) == q["answer"]
        accuracy[style] = hits / len(questions)
    print("choice extraction accuracy by style:", accuracy)
    # "last_letter" appends the letter after the option text, which can itself start with
    # "(A)": the only style allowed a few misses.
    assert all(acc == 1.0 for s, acc in accuracy.items() if s != "last_letter"), accuracy
    assert accuracy["last_letter"] >= 0.99


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is (B).", "B"),
    ("**C**", "C"),
    ("Answer: D", "D"),
    ("I think the answer is E because A and B are wrong.", "E"),
    ("A good choice here would be option G.", "G"),
    ("I believe it is\n\nH", "H"),
    ("answer: (j)", "J"),
    ("Final answer: \\boxed{\\text{F}}", "F"),
    ("I cannot tell from the information given.", None),
    ("", None),
])
def test_extract_choice_examples(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("She sells 9 eggs at $2 each: $<<9*2=18>>18.\n#### 18", "18"),
    ("The answer is $1,234.50", "1234.5"),
    ("So the total is 42.0 apples.", "42"),
    ("First 3 + 4 = 7, then 7 * 6 = 42", "42"),
    ("Final answer: **-3**", "-3"),
    ("The answer is 3/4 of the cake.", "0.75"),
    ("\\boxed{1,000}", "1000"),
    ("no numbers here", None),
])
def test_extract_number_examples(text, expected):
    assert extract_number(text) == expected


def test_normalize_number_forms():
    assert normalize_number("$1,234.50") == "1234.5"
    assert normalize_number("42.000") == "42"
    assert normalize_number("-0.0") == "0"
    assert normalize_number("abc") is None
    assert numbers_equal("18", "$18.00") and not numbers_equal("18", "81")


def _gsm8k_rows(data_dir: Path) -> list[dict]:
    with open(data_dir / "routellm_evals" / "gsm8k" / "gsm8k_responses.csv", encoding="utf-8",
              newline="") as f:
        return list(csv.DictReader(f))


def test_gsm8k_grading_agrees_with_stored_correctness(data_dir):
    """The CSV has no gold answers, so we measure agreement where one can be derived.

    Where the stored label says Mixtral is right, its ``#### N`` line is the gold number.
    Grading gpt-4-1106-preview's free-text answers (which end in a sentence, not "####")
    against it must agree with the stored correctness label of gpt-4; and where both are
    stored correct, both extractions must give the same number.
    """
    weak, strong = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
    rows = [r for r in _gsm8k_rows(data_dir) if r[weak] == "True"]
    gold = [extract_number(r[f"{weak}_response"]) for r in rows]
    assert all(g is not None for g in gold)
    _, ours = grade([r[f"{strong}_response"] for r in rows], gold, "number")
    stored = [r[strong] == "True" for r in rows]
    agree = np.mean(np.array(ours) == np.array(stored))
    both = [i for i, s in enumerate(stored) if s]
    same = np.mean([ours[i] for i in both])
    confusion = Counter(zip(stored, ours, strict=True))
    print(f"gsm8k: {len(rows)} rows with a derivable gold; grading agreement {agree:.4f}; "
          f"both-correct extraction agreement {same:.4f} on {len(both)}; "
          f"(stored, ours) counts {dict(confusion)}")
    assert agree >= 0.95
    assert same >= 0.99


# --- golden battles ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mmlu_pro(data_dir):
    return load_outcomes("mmlu_pro", data_dir)


def test_golden_from_table_mmlu_pro_matches_loader_and_restricts_rows(mmlu_pro):
    table = mmlu_pro
    strong, weak = "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"
    ref = golden_battles(table, strong, weak, ties="drop", strong_name="gpt-4-1106-preview",
                         weak_name="mixtral-8x7b-instruct-v0.1")
    ours = golden_from_table(table, strong, weak, ties="drop", strong_name="gpt-4-1106-preview",
                             weak_name="mixtral-8x7b-instruct-v0.1")
    assert ours.to_records() == ref.to_records()
    assert ours.models() == ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    s, w = table.column(strong), table.column(weak)
    known = ~(np.isnan(s) | np.isnan(w))
    assert len(ours) == int((known & (s != w)).sum())
    assert set(ours.column("winner")) == {"model_a", "model_b"}

    math = golden_from_table(table, strong, weak, meta={"category": ["math"]})
    n_math = int(sum(1 for c, k in zip(table.meta["category"], known, strict=True)
                     if c == "math" and k))
    assert len(math) == n_math and 0 < n_math < len(table)
    first = golden_from_table(table, strong, weak, rows=np.arange(100))
    assert len(first) == int(known[:100].sum())
    with pytest.raises(DataError, match="not in the table"):
        golden_from_table(table, "no-such-model", weak)
    with pytest.raises(DataError, match="ids not in table"):
        golden_from_table(table, strong, weak, ids=["definitely-not-an-id"])


def test_golden_from_raw_answers_extracts_grades_and_pairs(data_dir, tmp_path):
    questions = _mmlu_pro_questions(data_dir, 300)
    rng = random.Random(1)
    rows, truth = [], {}
    for q in questions:
        letters = LETTERS[: len(q["options"])]
        right = {}
        for model, p_right in (("big", 0.8), ("small", 0.5)):
            ok = rng.random() < p_right
            letter = q["answer"] if ok else rng.choice([x for x in letters if x != q["answer"]])
            style = rng.choice([s for s in STYLES if s != "last_letter"])
            rows.append({"prompt_id": str(q["question_id"]), "prompt": q["question"],
                         "model": model, "output": _styled_answer(style, q, letter, rng),
                         "answer": q["answer"]})
            right[model] = ok
        truth[q["question"]] = right
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    battles = golden_from_answers(path, "big", "small", "choice")
    assert len(battles) == len(questions)
    for prompt, winner in zip(battles.prompts, battles.column("winner"), strict=True):
        big, small = truth[prompt]["big"], truth[prompt]["small"]
        assert winner == ("tie" if big == small else "model_a" if big else "model_b")
    assert set(battles.column("source")) == {"golden:answers"}

    table = outcomes_from_answers("t", ["q1", "q2"], {"m": ["#### 5", None]}, ["5", "7"], "number")
    assert table.scores[0, 0] == 1.0 and np.isnan(table.scores[1, 0])
    assert table.meta["extracted:m"] == ["5", None]


def test_cli_golden_writes_renamed_battles(data_dir, mmlu_pro, tmp_path):
    out = tmp_path / "golden.parquet"
    result = CliRunner().invoke(app, [
        "golden", "--table", "mmlu_pro", "--strong", "gpt-4o-2024-05-13",
        "--weak", "Mixtral-8x7B-Instruct-v0.1", "--data-dir", str(data_dir), "--out", str(out),
        "--ties", "drop", "--rename-strong", "gpt-4-1106-preview",
        "--rename-weak", "mixtral-8x7b-instruct-v0.1", "--where", "category=math"])
    assert result.exit_code == 0, result.output
    battles = Battles.read(out)
    expected = golden_from_table(mmlu_pro, "gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1",
                                 ties="drop", strong_name="gpt-4-1106-preview",
                                 weak_name="mixtral-8x7b-instruct-v0.1",
                                 meta={"category": ["math"]})
    assert battles.to_records() == expected.to_records()
    assert f"wrote {len(expected):,} golden battles" in result.output

    bad = CliRunner().invoke(app, ["golden", "--table", "mmlu_pro", "--strong", "x", "--weak", "y",
                                   "--data-dir", str(data_dir), "--out", str(out)])
    assert isinstance(bad.exception, PrefrouteError)


# --- judge: unit pieces ----------------------------------------------------------------------

def test_parse_verdict_and_soft_label():
    assert parse_verdict("Both fine, but B is more precise.\n\n[[B]]") == "B"
    assert parse_verdict("[[ a ]]") == "A"
    assert parse_verdict("Verdict: [[Tie]]") == "C"
    assert parse_verdict("[[**C**]]") == "C"
    assert parse_verdict("[[A]] ... to repeat: [[A]]") == "A"
    assert parse_verdict("Either [[A]] or [[B]]. Final verdict: [[B]]") == "B"
    assert parse_verdict("Either [[A]] or [[B]].") is None
    assert parse_verdict("A is better.") is None
    assert parse_verdict("[[D]]") is None
    # strong shown first as A; then weak shown first as A
    assert soft_label("A", "B") == 0.0  # consistent: strong better
    assert soft_label("B", "A") == 1.0  # consistent: weak better
    assert soft_label("A", "A") == 0.5  # position bias: inconsistent -> tie
    assert soft_label("C", "C") == 0.5
    assert soft_label("A", "C") == 0.25 and soft_label("C", "A") == 0.75


def test_cost_meter_and_prices():
    prices = PriceTable.parse(["m=2:8"])
    assert prices.cost("m", 1_000_000, 500_000) == pytest.approx(6.0)
    assert prices.cost("other", 1, 1) is None
    usage = Usage()
    usage.add("m", 10, 20)
    usage.add("other", 1, 1)
    assert usage.cost(prices) is None
    meter = CostMeter(1.0)
    assert meter.try_reserve("a", 0.6)
    assert not meter.try_reserve("b", 0.5)  # 0.6 in flight + 0.5 > 1.0
    meter.charge("a", 0.2)
    assert meter.in_flight == pytest.approx(0.4) and meter.spent == pytest.approx(0.2)
    meter.release("a")
    assert meter.try_reserve("b", 0.5)
    for bad in ("m=1", "m:1:2", "=1:2", "m=x:1"):
        with pytest.raises(ConfigError):
            PriceTable.parse([bad])


def test_journal_torn_tail_header_check_and_lock(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, {"a": 1}) as journal:
        journal.append({"type": "battle", "item_id": "x", "battle": {}})
        with pytest.raises(ConfigError, match="in use"):
            Journal(path, {"a": 1}).open()
    with open(path, "ab") as f:
        f.write(b'{"type": "call", "item_id": "y", "pro')  # killed mid-write
    state = read_journal(path)
    assert state.torn_bytes > 0 and list(state.finished) == ["x"]
    with Journal(path, {"a": 1}) as journal:
        journal.append({"type": "failure", "item_id": "y", "reason": "r"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["header", "battle", "failure"]
    with pytest.raises(ConfigError, match="other settings"):
        Journal(path, {"a": 2}).open()
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(DataError, match="row 2"):
        read_journal(path)


# --- judge against real local servers ----------------------------------------------------------

def _answerer(prefix: str):
    def handle(request: Request) -> str:
        words = request.user.split()[:8]
        return f"{prefix} answer about {' '.join(words)} in a few words ."
    return handle


def _judge_question(request: Request | str) -> tuple[str, str, str]:
    text = request if isinstance(request, str) else request.user
    question = text.split("[User Question]\n", 1)[1].split("\n\n[The Start of Answer A]", 1)[0]
    a = text.split("[The Start of Answer A]\n", 1)[1].split("\n[The End of Answer A]", 1)[0]
    b = text.split("[The Start of Answer B]\n", 1)[1].split("\n[The End of Answer B]", 1)[0]
    return question, a, b


class Scenario:
    """Faults and judge preferences keyed by prompt position (deterministic)."""

    def __init__(self, prompts: list[str], strong_prefix: str = "Strong") -> None:
        self.index = {p: i for i, p in enumerate(prompts)}
        self.strong_prefix = strong_prefix
        self.slow_next_judge = False  # armed by a test: the next verdict comes too late

    def strong(self, request: Request) -> str | Fault:
        i = self.index[request.user]
        if i == 0 and request.attempt <= 2:
            return Fault(status=429, retry_after=0)
        if i == 5:
            return Fault(status=500)  # always: the item fails after its attempts
        return _answerer("Strong")(request)

    def weak(self, request: Request) -> str | Fault:
        i = self.index[request.user]
        if i == 1 and request.attempt == 1:
            return Fault(status=500)
        return _answerer("Weak")(request)

    def judge(self, request: Request) -> str | Fault:
        question, a, _ = _judge_question(request)
        i = self.index[question]
        if self.slow_next_judge:
            self.slow_next_judge = False
            return Fault(slow_s=2.0)
        if i == 3 and request.attempt == 1:
            return "Both answers have merit and I cannot decide between them."
        if i == 4:
            return "Answer A is [[better]] than answer B, maybe."  # never a valid verdict
        if i == 6:
            return "The first answer is more complete. [[A]]"  # position-biased judge
        if i == 7:
            return "They are equally good. [[C]]"
        strong_shown_first = a.startswith(self.strong_prefix)
        prefer_strong = i % 2 == 0
        verdict = "A" if strong_shown_first == prefer_strong else "B"
        return f"Comparing both answers carefully. [[{verdict}]]"

    def expected_p_b_wins(self, i: int) -> float | None:
        if i in (4, 5):
            return None
        if i in (6, 7):
            return 0.5
        return 0.0 if i % 2 == 0 else 1.0


def _alpaca_items(data_dir: Path, n: int) -> tuple[list[PromptItem], dict]:
    items, outputs = read_outputs(data_dir / "alpaca_eval" / "outputs.jsonl")
    return items[:n], outputs


PRICES = {"strong-m": (3.0, 15.0), "weak-m": (0.5, 1.5), "judge-m": (2.5, 10.0)}


def _prices() -> PriceTable:
    return PriceTable.parse([f"{m}={i}:{o}" for m, (i, o) in PRICES.items()])


def _expected_cost(servers: list[StubOpenAIServer]) -> tuple[dict[str, list[int]], float]:
    tokens: dict[str, list[int]] = {}
    for server in servers:
        for s in server.delivered():
            t = tokens.setdefault(s.model, [0, 0])
            t[0] += s.prompt_tokens
            t[1] += s.completion_tokens
    cost = sum((p * PRICES[m][0] + c * PRICES[m][1]) / 1e6 for m, (p, c) in tokens.items())
    return tokens, cost


def _journal_tokens(path: Path) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    for call in read_journal(path).all_calls():
        t = tokens.setdefault(call["model"], [0, 0])
        t[0] += call["prompt_tokens"]
        t[1] += call["completion_tokens"]
    return tokens


def _terminal_counts(path: Path) -> Counter:
    counts: Counter = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["type"] in ("battle", "failure"):
            counts[record["item_id"]] += 1
    return counts


def _wait_quiet(servers: list[StubOpenAIServer], journal: Path, gate: StubOpenAIServer,
                timeout: float = 15.0) -> None:
    """Until the gate holds a request and every answer the servers sent is journaled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gate.held >= 1 and all(s.quiet() for s in servers) and journal.exists():
            delivered = sum(s.delivered_count() for s in servers)
            if len(read_journal(journal).all_calls()) == delivered:
                return
        time.sleep(0.05)
    raise AssertionError("the run never reached a quiet point")


def test_judge_run_with_faults_cancelled_and_resumed(data_dir, tmp_path):
    items, _ = _alpaca_items(data_dir, 16)
    scenario = Scenario([i.prompt for i in items])
    journal = tmp_path / "run.journal.jsonl"
    gate = Gate()  # shared: when the judge stops answering, every server does
    with StubOpenAIServer(scenario.strong, gate=gate) as strong, \
            StubOpenAIServer(scenario.weak, gate=gate) as weak, \
            StubOpenAIServer(scenario.judge, gate=gate) as judge:
        servers = [strong, weak, judge]

        def config(timeout: float) -> JudgeRunConfig:
            return JudgeRunConfig(
                judge=EndpointConfig("judge-m", judge.base_url, max_tokens=64, timeout_s=timeout),
                strong=Side("strong-m", endpoint=EndpointConfig("strong-m", strong.base_url,
                                                                max_tokens=64, timeout_s=timeout)),
                weak=Side("weak-m", endpoint=EndpointConfig("weak-m", weak.base_url, max_tokens=64,
                                                            timeout_s=timeout)),
                journal_path=journal, prices=_prices(), concurrency=4,
                retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05),
                max_verdict_attempts=2, progress=False)

        # run 1: the judge stops answering after 10 verdicts; cancel once all is journaled
        # (a long timeout: held requests must not time out before the cancel)
        judge.hold_after(10)

        async def first_run() -> None:
            task = asyncio.ensure_future(run_judge_async(items, config(30.0)))
            while True:
                await asyncio.sleep(0.05)
                if task.done():
                    raise AssertionError("run 1 finished although the judge was held")
                try:
                    await asyncio.to_thread(_wait_quiet, servers, journal, judge, 0.2)
                    break
                except AssertionError:
                    continue
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(asyncio.wait_for(first_run(), 15))
        judge.release()
        finished_run1 = set(read_journal(journal).finished)
        assert 0 < len(finished_run1) < len(items)
        log_sizes = [len(s.log) for s in servers]
        with open(journal, "ab") as f:  # as if killed in the middle of a write
            f.write(b'{"type":"call","item_id":"abc","role":"answer:str')

        # run 2: resume; its first verdict arrives after the client's 1 s timeout
        scenario.slow_next_judge = True
        report = run_judge(items, config(1.0))

        # every prompt ends with exactly one battle or one failure, never two
        counts = _terminal_counts(journal)
        assert set(counts) == {i.item_id for i in items}
        assert set(counts.values()) == {1}
        # finished items were not paid for again
        run2_prompts = {s.user for s in strong.log[log_sizes[0]:] + weak.log[log_sizes[1]:]}
        run2_prompts |= {_judge_question(s.user)[0] for s in judge.log[log_sizes[2]:]
                         if s.outcome != "dropped"}
        done_prompts = {i.prompt for i in items if i.item_id in finished_run1}
        assert not run2_prompts & done_prompts
        # each answer was bought at most once per item and side, across both runs
        for server in (strong, weak):
            bought = Counter(s.user for s in server.delivered())
            assert max(bought.values()) == 1
        assert len(weak.delivered()) == len(items)
        assert len(strong.delivered()) == len(items) - 1  # prompt 5: always 500

        # labels
        assert report.battles is not None and len(report.battles) == len(items) - 2
        by_prompt = dict(zip(report.battles.prompts, report.battles.numeric("p_b_wins"),
                             strict=True))
        for i, item in enumerate(items):
            expected = scenario.expected_p_b_wins(i)
            if expected is None:
                assert item.prompt not in by_prompt
            else:
                assert by_prompt[item.prompt] == expected, i
        assert set(report.battles.column("source")) == {"judge:judge-m"}
        assert set(report.battles.column("model_a")) == {"strong-m"}
        reasons = {f["prompt"]: f["reason"] for f in report.failures}
        assert "malformed 2 times" in reasons[items[4].prompt]
        assert "gave up after 3 attempts (500, 500, 500)" in reasons[items[5].prompt]

        # every failed attempt the servers caused is journaled once: 429s, 500s, timeouts
        served = strong.outcomes() + weak.outcomes() + judge.outcomes()
        expected_errors = Counter({"429": served["429"], "500": served["500"],
                                   "timeout": served["slow"]})
        # prompt 0: two 429s; prompt 1: one 500; prompt 5: 500 on each of its 3 attempts
        assert expected_errors["429"] == 2 and expected_errors["500"] >= 4
        assert expected_errors["timeout"] == 1
        assert Counter(e["error"] for e in read_journal(journal).errors) == expected_errors
        assert report.errors_total == expected_errors

        # token and cost totals are exact: what the servers delivered, no more, no less
        tokens, cost = _expected_cost(servers)
        assert _journal_tokens(journal) == tokens
        assert report.usage_total.tokens == tokens
        assert report.cost_total == pytest.approx(cost, rel=1e-12)
        assert read_journal(journal).torn_bytes == 0


def test_max_cost_stops_launching_and_a_second_run_finishes(data_dir, tmp_path):
    items, outputs = _alpaca_items(data_dir, 12)

    def judge_handler(request: Request) -> str:
        return "The first answer is clearer. [[A]]"

    journal = tmp_path / "budget.journal.jsonl"
    with StubOpenAIServer(judge_handler) as judge:
        def config(max_cost: float | None) -> JudgeRunConfig:
            return JudgeRunConfig(
                judge=EndpointConfig("judge-m", judge.base_url, max_tokens=32, timeout_s=5),
                strong=Side("gpt-4-1106-preview", outputs=outputs["gpt4_1106_preview"]),
                weak=Side("mixtral-8x7b-instruct-v0.1",
                          outputs=outputs["Mixtral-8x7B-Instruct-v0.1_concise"]),
                journal_path=journal, prices=_prices(), max_cost=max_cost, concurrency=2,
                retry=RetryPolicy(max_attempts=2, base_delay_s=0.01), progress=False)

        per_item = [estimate_run(config(None), [item]).cost for item in items]
        budget = sum(per_item[:5]) + 0.5 * per_item[5]
        first = run_judge(items, config(budget))
        assert first.stopped == "max_cost"
        assert 0 < first.labelled_now < len(items)
        assert first.labelled_now + first.not_launched == len(items)
        assert first.cost_total <= budget
        assert len(judge.delivered()) == 2 * first.labelled_now

        second = run_judge(items, config(None))
        assert second.finished_before == first.labelled_now
        assert len(second.battles) == len(items)
        assert len(judge.delivered()) == 2 * len(items)  # no item judged twice
        _, cost = _expected_cost([judge])
        assert second.cost_total == pytest.approx(cost, rel=1e-12)
        assert set(second.battles.numeric("p_b_wins")) == {0.5}  # a position-biased judge


def test_endpoint_errors_stop_the_run(data_dir, tmp_path, monkeypatch):
    items, outputs = _alpaca_items(data_dir, 3)
    with StubOpenAIServer(lambda r: Fault(status=401)) as judge:
        cfg = JudgeRunConfig(
            judge=EndpointConfig("judge-m", judge.base_url, api_key_env="DATA_AUG_TEST_KEY"),
            strong=Side("s", outputs=outputs["gpt4_1106_preview"]),
            weak=Side("w", outputs=outputs["claude-2.1"]),
            journal_path=tmp_path / "j.jsonl", progress=False)
        monkeypatch.delenv("DATA_AUG_TEST_KEY", raising=False)
        with pytest.raises(ConfigError, match="DATA_AUG_TEST_KEY"):
            run_judge(items, cfg)
        assert not judge.log
        monkeypatch.setenv("DATA_AUG_TEST_KEY", "sk-test")
        with pytest.raises(EndpointError, match="401"):
            run_judge(items, cfg)
        cfg.max_cost = 1.0
        with pytest.raises(ConfigError, match="price"):
            run_judge(items, cfg)


def test_retry_failed_turns_failures_into_battles(data_dir, tmp_path):
    items, outputs = _alpaca_items(data_dir, 4)
    broken = {"on": True}

    def judge_handler(request: Request) -> str:
        return "I refuse to decide." if broken["on"] else "Second answer wins. [[B]]"

    with StubOpenAIServer(judge_handler) as judge:
        cfg = JudgeRunConfig(
            judge=EndpointConfig("judge-m", judge.base_url, timeout_s=5),
            strong=Side("s", outputs=outputs["gpt4_1106_preview"]),
            weak=Side("w", outputs=outputs["claude-2.1"]),
            journal_path=tmp_path / "j.jsonl", max_verdict_attempts=2, progress=False)
        first = run_judge(items, cfg)
        assert first.battles is None and len(first.failures) == 4
        assert len(judge.delivered()) == 4 * 2 * 2  # 2 orders x 2 attempts each
        broken["on"] = False
        again = run_judge(items, cfg)  # failures are final unless asked
        assert again.labelled_now == 0 and len(judge.delivered()) == 16
        cfg.retry_failed = True
        fixed = run_judge(items, cfg)
        assert fixed.labelled_now == 4 and not fixed.failures
        assert set(fixed.battles.numeric("p_b_wins")) == {0.5}  # [[B]] in both orders
        battles, failures = battles_from_journal(tmp_path / "j.jsonl")
        assert len(battles) == 4 and not failures


def _cli_judge_args(data_dir: Path, out: Path, weak: StubOpenAIServer, judge: StubOpenAIServer,
                    limit: int) -> list[str]:
    return ["judge", "--outputs", str(data_dir / "alpaca_eval" / "outputs.jsonl"),
            "--strong-name", "gpt4_1106_preview", "--rename-strong", "gpt-4-1106-preview",
            "--weak-model", "weak-m", "--weak-base-url", weak.base_url, "--max-tokens", "64",
            "--judge-model", "judge-m", "--judge-base-url", judge.base_url,
            "--judge-max-tokens", "64", "--out", str(out), "--limit", str(limit),
            "--concurrency", "3", "--timeout", "5", "--backoff", "0.01", "--no-progress",
            "--price", "weak-m=0.5:1.5", "--price", "judge-m=2.5:10"]


def _run_cli(args: list[str]) -> None:
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the child is killed, never closes it
    app(args)


def test_cli_dry_run_calls_nothing(data_dir, tmp_path):
    out = tmp_path / "judged.jsonl"
    with StubOpenAIServer(_answerer("Weak")) as weak, \
            StubOpenAIServer(lambda r: "[[A]]") as judge:
        result = CliRunner().invoke(app, [*_cli_judge_args(data_dir, out, weak, judge, 20),
                                          "--dry-run"])
        assert result.exit_code == 0, result.output
        assert not weak.log and not judge.log
        assert not out.exists() and not (tmp_path / "judged.jsonl.journal.jsonl").exists()
    assert "items to label: 20 (60 requests)" in result.output
    assert "estimated cost: <= $" in result.output


def test_cli_judge_killed_mid_run_and_resumed(data_dir, tmp_path):
    limit = 10
    items, _ = _alpaca_items(data_dir, limit)
    out = tmp_path / "judged.jsonl"
    journal = tmp_path / "judged.jsonl.journal.jsonl"

    def judge_handler(request: Request) -> str:
        _, a, _ = _judge_question(request)
        return "The weak answer is terser. [[A]]" if a.startswith("Weak") else "[[B]]"

    gate = Gate()
    with StubOpenAIServer(_answerer("Weak"), gate=gate) as weak, \
            StubOpenAIServer(judge_handler, gate=gate) as judge:
        args = _cli_judge_args(data_dir, out, weak, judge, limit)
        judge.hold_after(6)
        # a forked child runs the CLI (a fresh interpreter would spend most of the test
        # importing torch) and is killed with SIGKILL: no cleanup code runs
        proc = multiprocessing.get_context("fork").Process(target=_run_cli, args=(args,))
        proc.start()
        try:
            _wait_quiet([weak, judge], journal, judge, timeout=20)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        finally:
            if proc.is_alive():
                proc.kill()
        assert proc.exitcode == -signal.SIGKILL
        judge.release()
        finished_before = set(read_journal(journal).finished)
        assert 0 < len(finished_before) < limit

        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        battles = Battles.read(out)
        assert len(battles) == limit
        assert set(battles.numeric("p_b_wins")) == {1.0}  # the judge always prefers weak
        assert battles.models() == ["gpt-4-1106-preview", "weak-m"]
        counts = _terminal_counts(journal)
        assert set(counts) == {i.item_id for i in items} and set(counts.values()) == {1}
        assert len(weak.delivered()) == limit  # each weak answer bought once
        assert len(judge.delivered()) == 2 * limit
        tokens, _ = _expected_cost([weak, judge])
        assert _journal_tokens(journal) == tokens
        cost = sum((p * PRICES[m][0] + c * PRICES[m][1]) / 1e6 for m, (p, c) in tokens.items())
        assert f"${cost:,.4f}" in result.output
        recovered, failures = battles_from_journal(journal)
        assert len(recovered) == limit and not failures


def test_judge_messages_and_prompt_files(data_dir, tmp_path):
    messages = judge_messages("Q?", "first", "second")
    assert messages[0]["role"] == "system" and "[[C]]" in messages[0]["content"]
    assert "[The Start of Answer A]\nfirst\n[The End of Answer A]" in messages[1]["content"]
    txt = tmp_path / "p.txt"
    txt.write_text("hello there\n\nhello there\nsecond prompt\n")
    items = read_prompts(txt)
    assert [i.prompt for i in items] == ["hello there", "second prompt"]
    items = read_prompts(data_dir / "alpaca_eval" / "outputs.jsonl")
    assert len(items) == 644 and all(len(i.item_id) == 12 for i in items)
    assert estimate_tokens("abcd" * 10) == 10
