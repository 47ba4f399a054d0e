"""`prefroute augment`: more training battles from golden labels or an LLM judge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prefroute._logging import logger
from prefroute.cli.common import renamed_option, resolve_data_dir
from prefroute.cli.select import select
from prefroute.errors import ConfigError, DataError, PrefrouteError, check_int
from prefroute.io import check_output_file

if TYPE_CHECKING:  # data_aug pulls in openai: imported inside the commands (fast --help)
    from data_aug.endpoints import EndpointConfig
    from data_aug.items import PromptItem

app = typer.Typer(
    help="Make training battles: golden labels from known answers, or judge labels from an "
    "LLM judge behind any OpenAI-compatible endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(select)


def _parse_where(where: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in where:
        field, sep, value = spec.partition("=")
        if not sep or not field:
            raise ConfigError(f"--where must look like FIELD=VALUE; got {spec!r}")
        out.setdefault(field, []).append(value)
    return out


@app.command()
def golden(
    out: Path = typer.Option(..., "--out", help="battles file to write (.jsonl or .parquet)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
    strong_model: str | None = typer.Option(
        None, "--strong-model", help="strong model (model_a) as named in the data [required]"
    ),
    weak_model: str | None = typer.Option(
        None, "--weak-model", help="weak model (model_b) as named in the data [required]"
    ),
    table: str | None = typer.Option(
        None,
        "--table",
        help="stored correctness table: mmlu, gsm8k, mt-bench, mmlu_pro, routerbench",
    ),
    answers: Path | None = typer.Option(
        None,
        "--answers",
        help="raw answers instead of a table: .jsonl/.csv/.parquet rows {prompt_id, prompt, model, "
        "output, answer (optional)}",
    ),
    gold: Path | None = typer.Option(
        None, "--gold", help="gold answers {prompt_id, answer} for --answers"
    ),
    gold_field: str = typer.Option("answer", "--gold-field", help="field holding the gold answer"),
    kind: str = typer.Option(
        "choice", "--kind", help="answer kind for --answers: choice (A-J) or number"
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="folder in the shared/data layout"
    ),
    ties: str = typer.Option(
        "keep", "--ties", help="keep or drop items both models got equally right"
    ),
    rename_strong: str | None = typer.Option(
        None, "--rename-strong", help="strong model's name in the battles"
    ),
    rename_weak: str | None = typer.Option(
        None, "--rename-weak", help="weak model's name in the battles"
    ),
    ids_file: Path | None = typer.Option(
        None, "--ids-file", help="keep only these item ids (one a line)"
    ),
    where: list[str] = typer.Option(
        [],
        "--where",
        help="keep items whose per-item field has this value, e.g. category=math (repeat)",
    ),
    old_strong: str | None = typer.Option(None, "--strong", hidden=True),
    old_weak: str | None = typer.Option(None, "--weak", hidden=True),
) -> None:
    """Golden-label battles: strong right & weak wrong -> strong wins, and so on.

    Example: prefroute augment golden --table mmlu_pro --strong-model gpt-4o-2024-05-13
    --weak-model Mixtral-8x7B-Instruct-v0.1 --rename-strong gpt-4-1106-preview
    --rename-weak mixtral-8x7b-instruct-v0.1 --ties drop --out runs/golden_mmlu_pro.jsonl
    """
    from data_aug.golden import golden_from_answers, golden_from_table
    from prefroute.data.outcomes import load_outcomes

    strong = renamed_option(strong_model, old_strong, "--strong-model", "--strong", required=True)
    weak = renamed_option(weak_model, old_weak, "--weak-model", "--weak", required=True)
    if (table is None) == (answers is None):
        raise ConfigError(
            "give exactly one of --table (stored correctness) or --answers (raw answers)"
        )
    if ties not in ("keep", "drop"):
        raise ConfigError(f"--ties must be keep or drop; got {ties!r}")
    check_output_file(out, overwrite=overwrite, inputs=[p for p in (answers, gold) if p])
    if answers is not None:
        if ids_file is not None or where:
            raise ConfigError("--ids-file and --where apply to --table only")
        battles = golden_from_answers(
            answers,
            strong,
            weak,
            kind,
            gold_path=gold,
            gold_field=gold_field,
            ties=ties,
            strong_name=rename_strong,
            weak_name=rename_weak,
        )
    else:
        outcomes = load_outcomes(table, resolve_data_dir(data_dir))
        ids = None
        if ids_file is not None:
            if not ids_file.exists():
                raise DataError("file not found", file=str(ids_file))
            ids = [
                line.strip()
                for line in ids_file.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        battles = golden_from_table(
            outcomes,
            strong,
            weak,
            ties=ties,
            strong_name=rename_strong,
            weak_name=rename_weak,
            ids=ids,
            meta=_parse_where(where) or None,
        )
    if len(battles) == 0:
        raise DataError("no battles left: every item lacked a result or was filtered out")
    battles.write(out)  # atomic: a temporary sibling renamed into place
    winners = battles.column("winner")
    counts = {w: winners.count(w) for w in ("model_a", "model_b", "tie")}
    typer.echo(
        f"wrote {len(battles):,} golden battles to {out} "
        f"(strong wins {counts['model_a']:,}, weak wins {counts['model_b']:,}, "
        f"ties {counts['tie']:,})"
    )


def _endpoint(
    model: str | None,
    base_url: str | None,
    key_env: str | None,
    max_tokens: int,
    temperature: float,
    timeout: float,
    role: str,
) -> EndpointConfig | None:
    from data_aug.endpoints import EndpointConfig

    if base_url is None:
        return None
    if model is None:
        raise ConfigError(f"--{role}-base-url needs --{role}-model")
    return EndpointConfig(
        model=model,
        base_url=base_url,
        api_key_env=key_env,
        max_tokens=max_tokens,
        temperature=temperature,
        timeout_s=timeout,
    )


def _stored(
    outputs: dict[str, dict[str, str]], items: list[PromptItem], model: str, file: Path
) -> dict[str, str]:
    from data_aug.items import prompt_id

    if model not in outputs:
        raise DataError(
            f"model {model!r} has no outputs; the file has {sorted(outputs)}",
            file=str(file),
            field="model",
        )
    answers = dict(outputs[model])
    # also reachable by content hash, for prompt files without the outputs' prompt ids
    for item in items:
        if item.item_id in answers:
            answers.setdefault(prompt_id(item.prompt), answers[item.item_id])
    return answers


@app.command()
def judge(
    out: Path = typer.Option(..., "--out", help="battles file to write (.jsonl or .parquet)"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="replace an existing --out file (not needed when resuming from its journal)",
    ),
    judge_model: str = typer.Option(
        ..., "--judge-model", help="the judge model's name at its endpoint"
    ),
    judge_base_url: str = typer.Option(
        ..., "--judge-base-url", help="e.g. https://api.openai.com/v1"
    ),
    judge_api_key_env: str | None = typer.Option(
        None,
        "--judge-api-key-env",
        help="env var holding the judge's API key (none: keyless server)",
    ),
    judge_max_tokens: int = typer.Option(1024, "--judge-max-tokens"),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help="prompts: .txt (one a line) or .jsonl/.csv/.parquet with 'prompt' "
        "(and optional 'prompt_id'); default: the prompts of --outputs",
    ),
    prompt_field: str = typer.Option("prompt", "--prompt-field"),
    strong_model: str | None = typer.Option(
        None,
        "--strong-model",
        help="strong model: generated at --strong-base-url, else its answers in --outputs",
    ),
    strong_base_url: str | None = typer.Option(None, "--strong-base-url"),
    strong_api_key_env: str | None = typer.Option(None, "--strong-api-key-env"),
    weak_model: str | None = typer.Option(
        None,
        "--weak-model",
        help="weak model: generated at --weak-base-url, else its answers in --outputs",
    ),
    weak_base_url: str | None = typer.Option(None, "--weak-base-url"),
    weak_api_key_env: str | None = typer.Option(None, "--weak-api-key-env"),
    max_tokens: int = typer.Option(
        1024, "--max-tokens", help="answer length limit (generated sides)"
    ),
    temperature: float = typer.Option(
        0.0, "--temperature", help="sampling temperature (generated sides)"
    ),
    outputs: Path | None = typer.Option(
        None,
        "--outputs",
        help="stored answers {prompt_id, prompt, model, output} (AlpacaEval layout)",
    ),
    from_log: Path | None = typer.Option(
        None, "--from-log", help="serving journal folder (prefroute serve --log-dir): judge "
        "its shadow pairs"
    ),
    old_strong_name: str | None = typer.Option(None, "--strong-name", hidden=True),
    old_weak_name: str | None = typer.Option(None, "--weak-name", hidden=True),
    rename_strong: str | None = typer.Option(
        None, "--rename-strong", help="strong model's name in the battles"
    ),
    rename_weak: str | None = typer.Option(
        None, "--rename-weak", help="weak model's name in the battles"
    ),
    journal: Path | None = typer.Option(
        None, "--journal", help="resumable run journal (default: OUT.journal.jsonl)"
    ),
    concurrency: int = typer.Option(8, "--concurrency", help="requests in flight at most"),
    max_cost: float | None = typer.Option(
        None,
        "--max-cost",
        help="USD for the whole journal (all runs): stop launching items once spent + "
        "in-flight estimates would pass it; finished items are kept",
    ),
    price: list[str] = typer.Option(
        [], "--price", help="MODEL=IN:OUT in USD per 1M input:output tokens (repeat per model)"
    ),
    prices_file: Path | None = typer.Option(
        None, "--prices", help="JSON file: model -> list IN, OUT (USD per 1M tokens)"
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="seconds per request"),
    max_attempts: int = typer.Option(
        6, "--max-attempts", help="tries per request on 429/5xx/timeouts"
    ),
    backoff: float = typer.Option(
        1.0, "--backoff", help="base backoff in seconds (doubles per retry, jittered)"
    ),
    max_backoff: float = typer.Option(60.0, "--max-backoff"),
    max_verdict_attempts: int = typer.Option(
        3, "--max-verdict-attempts", help="asks per order when the verdict is malformed"
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="re-attempt items recorded as failed"
    ),
    limit: int | None = typer.Option(None, "--limit", help="label only the first N prompts"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the estimated cost, call nothing"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Judge-labelled battles: a judge compares strong vs weak answers, in both orders.

    Each side's answers come from an endpoint (--strong-model with --strong-base-url) or
    stored outputs (--outputs with --strong-model naming a model in it). Interrupted runs
    resume from --journal without paying twice. Example: prefroute augment judge
    --outputs outputs.jsonl --strong-model gpt4_1106_preview
    --weak-model Mixtral-8x7B-Instruct-v0.1_concise --judge-model gpt-4o
    --judge-base-url https://api.openai.com/v1 --judge-api-key-env OPENAI_API_KEY
    --price gpt-4o=2.5:10 --max-cost 5 --out runs/judged.jsonl

    Verdict format: the judge sees the prompt and two answers (A, B; each prompt is judged
    in both orders) and must end its reply with exactly one of [[A]] (A is better), [[B]]
    (B is better) or [[C]] (equally good); [[Tie]] is read as [[C]]. A reply without one
    readable verdict is asked again up to --max-verdict-attempts times, then the item fails.

    Answers: a 200 whose body is not JSON, has wrong types, or lacks non-negative integer
    usage.prompt_tokens / usage.completion_tokens is a failed attempt, retried and
    journaled like a 5xx. An item that still fails is recorded and the run goes on; a run
    in which every item failed exits with code 2 and a summary of the reasons.
    """
    from data_aug.costs import PriceTable
    from data_aug.endpoints import EndpointConfig, RetryPolicy
    from data_aug.from_log import read_shadow_pairs
    from data_aug.items import read_outputs, read_prompts
    from data_aug.judge import JudgeRunConfig, Side, estimate_run, run_judge

    strong_model = renamed_option(strong_model, old_strong_name, "--strong-model", "--strong-name")
    weak_model = renamed_option(weak_model, old_weak_name, "--weak-model", "--weak-name")
    # without a base URL, the model names the side's answers in --outputs
    strong_name = strong_model if strong_base_url is None else None
    weak_name = weak_model if weak_base_url is None else None
    check_int("--limit", "prefroute augment judge", limit, optional=True)
    check_int("--concurrency", "prefroute augment judge", concurrency)
    check_int("--max-attempts", "prefroute augment judge", max_attempts)
    check_int("--max-verdict-attempts", "prefroute augment judge", max_verdict_attempts)
    journal_path = journal or out.with_name(out.name + ".journal.jsonl")
    inputs = [p for p in (prompts, outputs, prices_file) if p is not None]
    check_output_file(out, overwrite=overwrite or journal_path.exists(), inputs=inputs)
    check_output_file(journal_path, overwrite=True, inputs=[*inputs, out], flag="--journal")
    strong_ep = _endpoint(
        strong_model,
        strong_base_url,
        strong_api_key_env,
        max_tokens,
        temperature,
        timeout,
        "strong",
    )
    weak_ep = _endpoint(
        weak_model, weak_base_url, weak_api_key_env, max_tokens, temperature, timeout, "weak"
    )
    judge_ep = EndpointConfig(
        model=judge_model,
        base_url=judge_base_url,
        api_key_env=judge_api_key_env,
        max_tokens=judge_max_tokens,
        temperature=0.0,
        timeout_s=timeout,
    )
    stored: dict[str, dict[str, str]] = {}
    output_items: list[PromptItem] = []
    if from_log is not None:  # shadow pairs of a serving journal, as stored outputs
        if outputs is not None:
            raise ConfigError("--from-log and --outputs both give the answers; use one")
        output_items, stored, (strong_name, weak_name) = read_shadow_pairs(
            from_log, strong_name=strong_name, weak_name=weak_name)
        outputs = from_log
    elif outputs is not None:
        output_items, stored = read_outputs(outputs)
    elif strong_ep is None or weak_ep is None:
        raise ConfigError(
            "each side needs answers: --strong-model with --strong-base-url, or --outputs "
            "with --strong-model naming a model in it (same for weak)"
        )
    if prompts is not None:
        items = read_prompts(prompts, prompt_field=prompt_field)
    elif outputs is not None:
        items = output_items
    else:
        raise ConfigError("give --prompts (or --outputs, whose prompts are used)")

    sides = []
    for role, ep, stored_name, rename in (
        ("strong", strong_ep, strong_name, rename_strong),
        ("weak", weak_ep, weak_name, rename_weak),
    ):
        if ep is not None:
            sides.append(Side(rename or ep.model, endpoint=ep))
        else:
            if outputs is None or stored_name is None:
                raise ConfigError(
                    f"the {role} side needs --{role}-model with --{role}-base-url (generate "
                    f"answers) or with --outputs (stored answers)"
                )
            sides.append(
                Side(rename or stored_name, outputs=_stored(stored, items, stored_name, outputs))
            )
    before = len(items)
    items = [i for i in items if all(s.outputs is None or i.item_id in s.outputs for s in sides)]
    if len(items) < before:
        logger.warning(
            "judge: %d of %d prompts lack a stored output of a side; skipped",
            before - len(items),
            before,
        )
        typer.echo(f"skipping {before - len(items):,} prompts without stored outputs", err=True)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError("no prompts to label")

    config = JudgeRunConfig(
        judge=judge_ep,
        strong=sides[0],
        weak=sides[1],
        journal_path=journal_path,
        prices=PriceTable.parse(price, prices_file),
        max_cost=max_cost,
        concurrency=concurrency,
        retry=RetryPolicy(max_attempts=max_attempts, base_delay_s=backoff, max_delay_s=max_backoff),
        max_verdict_attempts=max_verdict_attempts,
        retry_failed=retry_failed,
        progress=not no_progress,
    )
    if dry_run:
        estimate = estimate_run(config, items)
        typer.echo(
            f"dry run: {len(items) - estimate.items:,} of {len(items):,} prompts already "
            f"finished in {config.journal_path}"
        )
        for line in estimate.lines():
            typer.echo(line)
        return
    report = run_judge(items, config)
    for line in report.lines():
        typer.echo(line)
    if report.battles is not None:
        report.battles.write(out)  # atomic: a temporary sibling renamed into place
        typer.echo(
            f"wrote {len(report.battles):,} battles to {out} (journal: {config.journal_path})"
        )
    else:
        typer.echo(f"no battles yet (journal: {config.journal_path})")
    if report.failures:
        reasons: dict[str, int] = {}
        for f in report.failures:
            reason = str(f.get("reason", "unknown"))
            reasons[reason] = reasons.get(reason, 0) + 1
        top = "; ".join(f"{r} x{n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:3])
        summary = (
            f"{len(report.failures):,} prompts failed ({top}); --retry-failed tries them again"
        )
        if report.battles is None:
            raise PrefrouteError(
                f"every prompt failed, no battles written: {summary} "
                f"(journal: {config.journal_path})"
            )
        typer.echo(summary)


@app.command()
def feedback(
    from_log: Path = typer.Option(..., "--from-log", help="serving journal folder (--log-dir)"),
    out: Path = typer.Option(..., "--out", help="battles file to write (.jsonl or .parquet)"),
) -> None:
    """Battles from users' feedback in a serving journal (POST /v1/feedback), one per answer.

    Example: prefroute augment feedback --from-log runs/journal --out feedback.jsonl
    """
    from data_aug.from_log import feedback_battles

    battles = feedback_battles(from_log)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    try:  # written beside, then renamed: never a half-written battles file
        battles.write(staging)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    typer.echo(f"wrote {len(battles):,} feedback battles to {out}")


if __name__ == "__main__":  # `python -m prefroute.cli.augment`, as the main CLI would run it
    import sys

    from prefroute.errors import PrefrouteError

    try:
        app()
    except PrefrouteError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
