"""Judge-labelled battles: an LLM judge compares the strong and the weak model's answers.

Each prompt is judged twice, once with the strong model's answer shown first and once with
it shown second, to cancel the judge's position bias. The soft label is the mean of the
two verdicts, read as "probability that model_b (the weak model) is better":

====================  ==========================  =========
strong-first verdict  weak-first verdict          p_b_wins
====================  ==========================  =========
strong better         strong better (consistent)  0.0
weak better           weak better (consistent)    1.0
tie                   tie                         0.5
strong better         weak better (inconsistent)  0.5 (tie)
win for one side      tie                         0.25 / 0.75
====================  ==========================  =========

``winner`` follows the soft label: ``model_a`` below 0.5, ``model_b`` above, ``tie`` at 0.5.
A verdict the parser cannot read is asked again (bounded); if it stays unreadable the item
is recorded as a failure, never guessed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from data_aug.costs import CostMeter, PriceTable, Usage, estimate_tokens
from data_aug.endpoints import CallFailed, ChatEndpoint, EndpointConfig, RetryPolicy
from data_aug.items import PromptItem
from data_aug.journal import Journal, JournalState, read_journal
from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.errors import ConfigError, check_range

JUDGE_SYSTEM_PROMPT = (
    "You are a careful, impartial judge of AI assistants. You will see a user's question and "
    "two answers to it, Answer A and Answer B. Decide which answer serves the user better: "
    "weigh correctness first, then helpfulness, relevance, depth and clarity. Do not let the "
    "order of the answers, their length, or any names sway you; a longer answer is not a "
    "better one unless the extra content helps. Explain your reasoning briefly, then give your "
    "verdict on the last line in exactly this form: [[A]] if Answer A is better, [[B]] if "
    "Answer B is better, or [[C]] if they are equally good."
)

JUDGE_USER_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Answer A]\n{answer_a}\n[The End of Answer A]\n\n"
    "[The Start of Answer B]\n{answer_b}\n[The End of Answer B]\n\n"
    "Compare the two answers, then end with your verdict: [[A]], [[B]] or [[C]]."
)

# recorded in the journal header: a resumed run must ask the judge the same question
TEMPLATE_VERSION = hashlib.sha1(
    (JUDGE_SYSTEM_PROMPT + JUDGE_USER_TEMPLATE).encode()).hexdigest()[:12]

ORDERS = ("strong_first", "weak_first")

_VERDICT = re.compile(r"\[\[\s*\**\s*(A|B|C|tie)\s*\**\s*\]\]", re.IGNORECASE)
_FINAL = re.compile(r"final\s+verdict[^\[\n]*\[\[\s*\**\s*(A|B|C|tie)\s*\**\s*\]\]", re.IGNORECASE)


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict]:
    """The chat messages asking the judge to compare Answer A with Answer B."""
    user = JUDGE_USER_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"``, ``"C"`` (tie) from a judgement, or ``None`` if it is malformed.

    Accepts ``[[A]]``, ``[[ b ]]``, ``[[**C**]]`` and ``[[Tie]]``. Repeating the same verdict
    is fine; different verdicts in one judgement count only if one is introduced by
    "final verdict", otherwise the judgement is malformed.

    Examples
    --------
    >>> parse_verdict("Answer B is more accurate. [[B]]")
    'B'
    >>> parse_verdict("I cannot decide.") is None
    True
    """
    if not text:
        return None
    found = {_norm(v) for v in _VERDICT.findall(text)}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        finals = {_norm(v) for v in _FINAL.findall(text)}
        if len(finals) == 1:
            return finals.pop()
    return None


def _norm(token: str) -> str:
    token = token.upper()
    return "C" if token == "TIE" else token


def verdict_p_b_wins(verdict: str, order: str) -> float:
    """P(model_b = weak wins) implied by one verdict given which answer was shown first."""
    if verdict == "C":
        return 0.5
    strong_won = (verdict == "A") == (order == "strong_first")
    return 0.0 if strong_won else 1.0


def soft_label(strong_first: str, weak_first: str) -> float:
    """The mean over both orders of :func:`verdict_p_b_wins` (see the module table)."""
    return 0.5 * (verdict_p_b_wins(strong_first, "strong_first")
                  + verdict_p_b_wins(weak_first, "weak_first"))


def winner_of(p_b_wins: float) -> str:
    return "model_b" if p_b_wins > 0.5 else "model_a" if p_b_wins < 0.5 else "tie"


# --- configuration ------------------------------------------------------------------------

@dataclass
class Side:
    """Where one side's answers come from: an endpoint, or stored outputs by item id.

    ``name`` is the model's name in the battles.
    """

    name: str
    endpoint: EndpointConfig | None = None
    outputs: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.endpoint is None) == (self.outputs is None):
            raise ConfigError(f"side {self.name!r} needs exactly one of an endpoint or stored "
                              "outputs")

    def settings(self) -> dict:
        source = self.endpoint.settings() if self.endpoint is not None else "stored outputs"
        return {"name": self.name, "answers": source}


@dataclass
class JudgeRunConfig:
    """Everything a judge-labelling run needs (see :func:`run_judge`).

    ``max_verdict_attempts`` bounds how often a malformed verdict is asked again per order;
    ``max_cost`` (USD) stops launching new items once spent + in-flight estimates would pass
    it; ``retry_failed`` re-attempts items a previous run recorded as failed.
    """

    judge: EndpointConfig
    strong: Side
    weak: Side
    journal_path: str | Path
    prices: PriceTable = field(default_factory=PriceTable)
    max_cost: float | None = None
    concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_verdict_attempts: int = 3
    retry_failed: bool = False
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("concurrency", "JudgeRunConfig", self.concurrency, low=1)
        check_range("max_verdict_attempts", "JudgeRunConfig", self.max_verdict_attempts, low=1)
        if self.max_cost is not None:
            check_range("max_cost", "JudgeRunConfig", self.max_cost, low=0.0)
        if self.strong.name == self.weak.name:
            raise ConfigError(f"strong and weak side are both named {self.strong.name!r}")

    @property
    def source(self) -> str:
        return f"judge:{self.judge.model}"

    def header(self) -> dict:
        """What must not change between a run and its resumption."""
        return {"version": 1, "judge": self.judge.settings(), "template": TEMPLATE_VERSION,
                "strong": self.strong.settings(), "weak": self.weak.settings()}

    def called_models(self) -> list[str]:
        models = [self.judge.model]
        models += [s.endpoint.model for s in (self.strong, self.weak) if s.endpoint is not None]
        return models


# --- estimates ------------------------------------------------------------------------------

@dataclass
class CostEstimate:
    """Estimated tokens (and dollars where priced) for the items still to do."""

    items: int
    calls: int
    usage: Usage
    cost: float | None

    def lines(self) -> list[str]:
        from data_aug.costs import format_usd

        out = [f"items to label: {self.items:,} ({self.calls:,} requests)"]
        for model, (p, c) in sorted(self.usage.tokens.items()):
            out.append(f"  {model}: ~{p:,} input + <= {c:,} output tokens")
        out.append(f"estimated cost: <= {format_usd(self.cost)} (input from prompt lengths at "
                   "~4 chars/token, output at max_tokens)")
        return out


def _side_answer_estimate(side: Side, item: PromptItem) -> tuple[str | None, int]:
    """(known answer text, estimated answer tokens)."""
    if side.outputs is not None:
        answer = side.outputs.get(item.item_id, "")
        return answer, estimate_tokens(answer)
    assert side.endpoint is not None
    return None, side.endpoint.max_tokens


def item_estimate(config: JudgeRunConfig, item: PromptItem, cached: Mapping[str, dict] | None = None
                  ) -> Usage:
    """Upper-bound token use of the calls an item still needs (cached calls cost nothing)."""
    cached = cached or {}
    usage = Usage()
    answers = {}
    for role, side in (("strong", config.strong), ("weak", config.weak)):
        text, tokens = _side_answer_estimate(side, item)
        if f"answer:{role}" in cached:
            text = cached[f"answer:{role}"]["content"]
            tokens = estimate_tokens(text)
        elif side.endpoint is not None:
            usage.add(side.endpoint.model, estimate_tokens(item.prompt), side.endpoint.max_tokens)
        answers[role] = tokens
    template = estimate_tokens(JUDGE_SYSTEM_PROMPT + JUDGE_USER_TEMPLATE)
    judge_in = template + estimate_tokens(item.prompt) + answers["strong"] + answers["weak"]
    for order in ORDERS:
        if f"judge:{order}" not in cached:
            usage.add(config.judge.model, judge_in, config.judge.max_tokens)
    return usage


def estimate_run(config: JudgeRunConfig, items: Sequence[PromptItem]) -> CostEstimate:
    """What the items not yet finished in the journal would cost at most; calls nothing."""
    state = read_journal(config.journal_path)
    todo = _todo(items, state, config.retry_failed)
    total = Usage()
    for item in todo:
        total.merge(item_estimate(config, item, _reusable_calls(state.calls.get(item.item_id, []))))
    return CostEstimate(len(todo), total.calls, total, total.cost(config.prices))


# --- the run ----------------------------------------------------------------------------

@dataclass
class JudgeReport:
    """What a run did, plus the journal's totals over all runs that wrote it."""

    battles: Battles | None
    failures: list[dict]
    finished_before: int
    labelled_now: int
    failed_now: int
    not_launched: int
    stopped: str | None  # "max_cost" when the budget stopped new items
    usage_total: Usage
    cost_total: float | None
    usage_this_run: Usage
    cost_this_run: float | None
    retries: Counter  # failed attempts of this run by kind: "429", "500", "timeout"...
    errors_total: Counter  # the same over all runs of the journal
    malformed_verdicts: int
    seconds: float

    def lines(self) -> list[str]:
        from data_aug.costs import format_usd

        n = 0 if self.battles is None else len(self.battles)
        out = [f"battles: {n:,} ({self.labelled_now:,} new), failures: {len(self.failures):,} "
               f"({self.failed_now:,} new), finished before this run: {self.finished_before:,}"]
        if self.not_launched:
            out.append(f"not launched: {self.not_launched:,} items (stopped by {self.stopped}); "
                       "run again with a higher --max-cost to go on")
        out.append(f"this run: {self.usage_this_run.prompt_tokens:,} input + "
                   f"{self.usage_this_run.completion_tokens:,} output tokens, "
                   f"{format_usd(self.cost_this_run)}; all runs: "
                   f"{self.usage_total.prompt_tokens:,} + {self.usage_total.completion_tokens:,} "
                   f"tokens, {format_usd(self.cost_total)}")
        if self.retries or self.malformed_verdicts:
            detail = ", ".join(f"{k} x{v}" for k, v in sorted(self.retries.items()))
            out.append(f"failed attempts this run: {detail or 'none'}; malformed verdicts: "
                       f"{self.malformed_verdicts}")
        return out


def _todo(items: Sequence[PromptItem], state: JournalState, retry_failed: bool) -> list[PromptItem]:
    out = []
    for item in items:
        done = state.finished.get(item.item_id)
        if done is None or (retry_failed and done["type"] == "failure"):
            out.append(item)
    return out


def _reusable_calls(calls: Sequence[dict]) -> dict[str, dict]:
    """Paid calls of an unfinished item that a resumed run can use instead of buying again."""
    reusable: dict[str, dict] = {}
    for call in calls:
        role = call["role"]
        if role.startswith("answer:") or (role.startswith("judge:") and call.get("verdict")):
            reusable.setdefault(role, call)
    return reusable


def _usage_of(calls: Sequence[dict]) -> Usage:
    usage = Usage()
    for call in calls:
        usage.add(call["model"], call["prompt_tokens"], call["completion_tokens"])
    return usage


class _Run:
    def __init__(self, config: JudgeRunConfig, journal: Journal, meter: CostMeter) -> None:
        self.config = config
        self.journal = journal
        self.meter = meter
        self.state = journal.state
        self.usage_this_run = Usage()
        self.retries: Counter = Counter()
        self.malformed = 0
        self.labelled = 0
        self.failed = 0
        semaphore = asyncio.Semaphore(config.concurrency)
        self.endpoints: dict[str, ChatEndpoint] = {}
        for seed, (role, cfg) in enumerate((("judge", config.judge),
                                            ("strong", config.strong.endpoint),
                                            ("weak", config.weak.endpoint))):
            if cfg is not None:
                self.endpoints[role] = ChatEndpoint(cfg, config.retry, semaphore=semaphore,
                                                    seed=config.seed * 7919 + seed)

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.close()

    def _record_call(self, item: PromptItem, role: str, endpoint: ChatEndpoint, result,
                     verdict: str | None = None) -> dict:
        cfg = endpoint.config
        cost = self.config.prices.cost(cfg.model, result.prompt_tokens, result.completion_tokens)
        record = {"type": "call", "item_id": item.item_id, "role": role, "model": cfg.model,
                  "prompt_tokens": result.prompt_tokens,
                  "completion_tokens": result.completion_tokens, "cost": cost,
                  "attempts": result.attempts, "errors": result.errors,
                  "finish_reason": result.finish_reason, "content": result.content,
                  "time": round(time.time(), 3)}
        if not result.usage_reported:
            record["usage_estimated"] = True
        if role.startswith("judge:"):
            record["verdict"] = verdict
        self.journal.append(record)
        self.state.calls.setdefault(item.item_id, []).append(record)
        self.usage_this_run.add(cfg.model, result.prompt_tokens, result.completion_tokens)
        self.meter.charge(item.item_id, cost or 0.0)
        return record

    def _error_recorder(self, item: PromptItem, role: str, endpoint: ChatEndpoint):
        def record(error: str, attempt: int) -> None:
            entry = {"type": "error", "item_id": item.item_id, "role": role,
                     "model": endpoint.config.model, "error": error, "attempt": attempt,
                     "time": round(time.time(), 3)}
            self.journal.append(entry)
            self.state.errors.append(entry)
            self.retries[error] += 1
        return record

    async def _answer(self, item: PromptItem, role: str, side: Side, cached: dict) -> str:
        if side.outputs is not None:
            answer = side.outputs.get(item.item_id)
            if answer is None:
                raise CallFailed(f"no stored output of {side.name!r} for this prompt", [])
            return answer
        if f"answer:{role}" in cached:
            return cached[f"answer:{role}"]["content"]
        endpoint = self.endpoints[role]
        on_error = self._error_recorder(item, f"answer:{role}", endpoint)
        result = await endpoint.chat([{"role": "user", "content": item.prompt}], on_error=on_error)
        self._record_call(item, f"answer:{role}", endpoint, result)
        return result.content

    async def _verdict(self, item: PromptItem, order: str, strong: str, weak: str,
                       cached: dict, earlier_malformed: int) -> str:
        role = f"judge:{order}"
        if role in cached:
            return cached[role]["verdict"]
        a, b = (strong, weak) if order == "strong_first" else (weak, strong)
        messages = judge_messages(item.prompt, a, b)
        endpoint = self.endpoints["judge"]
        attempts = earlier_malformed
        while attempts < self.config.max_verdict_attempts:
            result = await endpoint.chat(messages,
                                         on_error=self._error_recorder(item, role, endpoint))
            verdict = parse_verdict(result.content)
            self._record_call(item, role, endpoint, result, verdict)
            if verdict is not None:
                return verdict
            attempts += 1
            self.malformed += 1
        raise CallFailed(f"judge verdict malformed {attempts} times ({order})", [])

    async def process(self, item: PromptItem) -> None:
        calls = self.state.calls.get(item.item_id, [])
        cached = _reusable_calls(calls)
        malformed = Counter(c["role"] for c in calls
                            if c["role"].startswith("judge:") and not c.get("verdict"))
        if item.item_id in self.state.finished:  # --retry-failed: fresh verdict attempts
            malformed = Counter()
        try:
            strong, weak = await _all(
                self._answer(item, "strong", self.config.strong, cached),
                self._answer(item, "weak", self.config.weak, cached))
            v_strong_first, v_weak_first = await _all(*(
                self._verdict(item, order, strong, weak, cached, malformed[f"judge:{order}"])
                for order in ORDERS))
        except CallFailed as e:
            self._finish(item, {"type": "failure", "item_id": item.item_id, "reason": e.reason,
                                "errors": e.errors, "prompt": item.prompt})
            self.failed += 1
            return
        p_b_wins = soft_label(v_strong_first, v_weak_first)
        battle = {"prompt": item.prompt, "model_a": self.config.strong.name,
                  "model_b": self.config.weak.name, "winner": winner_of(p_b_wins),
                  "p_b_wins": p_b_wins, "source": self.config.source}
        self._finish(item, {"type": "battle", "item_id": item.item_id, "battle": battle,
                            "verdicts": {"strong_first": v_strong_first,
                                         "weak_first": v_weak_first}})
        self.labelled += 1

    def _finish(self, item: PromptItem, record: dict) -> None:
        usage = _usage_of(self.state.calls.get(item.item_id, []))
        record["usage"] = usage.to_json()
        record["cost"] = usage.cost(self.config.prices)
        record["time"] = round(time.time(), 3)
        self.journal.append(record)
        self.state.finished[item.item_id] = record


async def _all(*coroutines):
    """Like gather, but every call finishes (and is journaled) before a failure propagates."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, CallFailed):
            raise result
    for result in results:
        if isinstance(result, CallFailed):
            raise result
    return results


async def run_judge_async(items: Sequence[PromptItem], config: JudgeRunConfig) -> JudgeReport:
    """Label ``items`` with judge battles, resuming from (and appending to) the journal.

    Items already finished in the journal are skipped; paid calls of unfinished items are
    reused. Cancelling the task (or killing the process) loses at most the requests in
    flight. Raises ``EndpointError`` if an endpoint refuses the key or model.
    """
    start = time.perf_counter()
    if config.max_cost is not None:
        config.prices.require(config.called_models(), "--max-cost")
    for endpoint in (config.judge, config.strong.endpoint, config.weak.endpoint):
        if endpoint is not None:
            endpoint.api_key()  # a missing key fails before anything is written
    with Journal(config.journal_path, config.header()) as journal:
        state = journal.state
        finished_before = len(state.finished)
        spent = _usage_of(state.all_calls()).cost(config.prices) or 0.0
        meter = CostMeter(config.max_cost, spent=spent)
        todo = _todo(items, state, config.retry_failed)
        logger.info("judge: %d items, %d finished before, %d to do", len(items),
                    len(items) - len(todo), len(todo))
        run = _Run(config, journal, meter)
        pending = iter(todo)
        stopped: list[str] = []
        not_launched = 0
        bar = tqdm(total=len(todo), desc="judging", unit="item", disable=not config.progress)

        async def worker() -> None:
            nonlocal not_launched
            for item in pending:
                if stopped:
                    not_launched += 1
                    continue
                cached = _reusable_calls(state.calls.get(item.item_id, []))
                estimate = item_estimate(config, item, cached).cost(config.prices) or 0.0
                if not meter.try_reserve(item.item_id, estimate):
                    stopped.append("max_cost")
                    not_launched += 1
                    continue
                try:
                    await run.process(item)
                finally:
                    meter.release(item.item_id)
                bar.update(1)
                bar.set_postfix(spent=f"${meter.spent:.4f}", failed=run.failed, refresh=False)

        tasks = [asyncio.ensure_future(worker()) for _ in range(config.concurrency)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
            await run.close()
        if stopped:
            logger.warning("judge: --max-cost %.4f reached; %d items not launched",
                           config.max_cost, not_launched)
        usage_total = _usage_of(state.all_calls())
        battles, failures = _collect(state, [item.item_id for item in items])
        return JudgeReport(
            battles=battles, failures=failures, finished_before=finished_before,
            labelled_now=run.labelled, failed_now=run.failed, not_launched=not_launched,
            stopped=stopped[0] if stopped else None, usage_total=usage_total,
            cost_total=usage_total.cost(config.prices), usage_this_run=run.usage_this_run,
            cost_this_run=run.usage_this_run.cost(config.prices), retries=run.retries,
            errors_total=Counter(e["error"] for e in state.errors),
            malformed_verdicts=run.malformed, seconds=time.perf_counter() - start)


def run_judge(items: Sequence[PromptItem], config: JudgeRunConfig) -> JudgeReport:
    """Synchronous wrapper of :func:`run_judge_async`."""
    return asyncio.run(run_judge_async(items, config))


def _collect(state: JournalState, order: Sequence[str]) -> tuple[Battles | None, list[dict]]:
    records, failures = [], []
    for item_id in order:
        done = state.finished.get(item_id)
        if done is None:
            continue
        if done["type"] == "battle":
            records.append(done["battle"])
        else:
            failures.append(done)
    battles = Battles.from_records(records) if records else None
    return battles, failures


def battles_from_journal(path: str | Path) -> tuple[Battles | None, list[dict]]:
    """The battles and failures a journal holds (last record per item), in journal order."""
    state = read_journal(path)
    return _collect(state, list(state.finished))
