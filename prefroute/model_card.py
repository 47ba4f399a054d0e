"""Checkpoints that explain themselves: the README.md model card and ``prefroute info``.

The card is rendered from ``config.json`` alone (the model pair, the training data and its
size, the calibration, any recorded evaluation, how to load and serve it), so it can be
rewritten whenever the router section changes and never disagrees with the checkpoint.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

from prefroute.checkpoint import CONFIG_NAME, read_config
from prefroute.errors import CheckpointError
from prefroute.io import atomic_write_text

CARD_NAME = "README.md"


def printable(value: Any) -> str:
    """``str(value)`` with control and format characters escaped (``\\n``, ``\\x1b``,
    ``\\u202e``), so a string from a checkpoint cannot add lines or terminal codes."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch == " " or unicodedata.category(ch)[0] not in "CZ"
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _checked_sections(config: dict[str, Any], where: str) -> tuple[dict, dict, dict]:
    """(params, state, router) of a config, each an object; router.training, .calibration
    and .evaluation of the shapes the card reads (else a CheckpointError naming them)."""
    from prefroute.router import checked_calibration, checked_object, checked_training

    params, state, router = (checked_object(config.get(key) or {}, where, key)
                             for key in ("params", "state", "router"))
    checked_training(router.get("training"), where)
    checked_calibration(router.get("calibration"), where)
    evaluation = router.get("evaluation") or []
    if not isinstance(evaluation, list) or not all(isinstance(e, dict) for e in evaluation):
        raise CheckpointError(f"{where}: router.evaluation is not a list of objects")
    return params, state, router


def card_facts(config: dict[str, Any], where: str | Path = CONFIG_NAME) -> dict[str, Any]:
    """The facts a card shows, from a checkpoint's config (missing ones are None); strings
    from the checkpoint are escaped by ``printable``."""
    params, state, router = _checked_sections(config, str(where))
    calibration = router.get("calibration") or {}
    training = router.get("training") or {}
    embedder = state.get("embedder") or params.get("embedder")
    if isinstance(embedder, dict):
        embedder = embedder.get("name")
    count = calibration.get("n_prompts")
    return {
        "router_type": printable(config.get("type")),
        "strong_model": _text(router.get("strong_model") or params.get("strong_model")),
        "weak_model": _text(router.get("weak_model") or params.get("weak_model")),
        "embedder": printable(embedder) if isinstance(embedder, str) else None,
        "training_sources": [printable(s) for s in training.get("sources") or []],
        "training_battles": training.get("n_battles"),
        "threshold": router.get("threshold"),
        "calibration_method": _text(calibration.get("method")),
        "calibration_target_strong_rate": calibration.get("target_strong_rate"),
        "calibration_realised_strong_rate": calibration.get("realised_strong_rate"),
        "calibration_prompts": count if isinstance(count, int) else 0,
        "calibration_score_range": calibration.get("score_range") or None,
        "calibration_budget": calibration.get("budget") or None,
        "rate_names": bool(calibration.get("rate_thresholds")),
        "evaluation": list(router.get("evaluation") or []),
    }


def _text(value: Any) -> str | None:
    return None if value is None else printable(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def _number(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def evaluation_rows(evaluation: list[dict[str, Any]]) -> list[str]:
    """Markdown table rows for recorded evaluations (each beside random and the oracle)."""
    rows = [
        "| benchmark | protocol | n | APGR [95% CI] | random APGR | oracle APGR | CPT(50%) |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for e in evaluation:
        ci = e.get("apgr_ci")
        interval = (
            f" [{_number(ci[0], '.3f')}, {_number(ci[1], '.3f')}]"
            if isinstance(ci, (list, tuple)) and len(ci) == 2
            else " (no CI recorded)"
        )
        cpt50 = e.get("cpt_50")
        rows.append(
            f"| {printable(e.get('benchmark'))} | {printable(e.get('protocol', 'n/a'))} "
            f"| {printable(e.get('n_prompts', 'n/a'))} "
            f"| {_number(e.get('apgr'), '.3f')}{interval} | {_number(e.get('random_apgr'), '.3f')} "
            f"| {_number(e.get('oracle_apgr'), '.3f')} "
            f"| {'not reached' if cpt50 is None else _pct(cpt50 / 100)} |"
        )
    return rows


def render_model_card(config: dict[str, Any], name: str = "this router",
                      where: str | Path = CONFIG_NAME) -> str:
    """The README.md text for a checkpoint config (``where``: its path, for errors)."""
    f = card_facts(config, where)
    sources = ", ".join(f"`{s}`" for s in f["training_sources"]) or "not recorded"
    battles = f"{f['training_battles']:,}" if isinstance(f["training_battles"], int) else "n/a"
    lines = [
        "---",
        "library_name: prefroute",
        "tags: [llm-routing, prefroute, " + str(f["router_type"]) + "]",
        "---",
        "",
        f"# prefroute `{f['router_type']}` router: {f['strong_model']} vs {f['weak_model']}",
        "",
        "A prefroute checkpoint: it predicts P(strong model beats weak model | prompt) and sends",
        "the prompt to the strong model when that probability reaches the threshold.",
        "",
        "| | |",
        "|---|---|",
        f"| router | `{f['router_type']}` (embedder: {f['embedder'] or 'none'}) |",
        f"| strong model | `{f['strong_model']}` |",
        f"| weak model | `{f['weak_model']}` |",
        f"| training data | {sources} |",
        f"| training battles | {battles} |",
        "",
        "## Calibration",
        "",
    ]
    if f["calibration_method"]:
        low_high = f["calibration_score_range"]
        spread = (
            f"; its scores on them span {_number(low_high[0])}-{_number(low_high[1])}"
            if low_high
            else ""
        )
        budget = (
            f" (budget: {json.dumps(f['calibration_budget'])})" if f["calibration_budget"] else ""
        )
        lines += [
            f"Threshold {_number(f['threshold'])}, chosen by `{f['calibration_method']}`{budget} "
            f"for a strong-call rate of {_pct(f['calibration_target_strong_rate'])} "
            f"(realised {_pct(f['calibration_realised_strong_rate'])}) on "
            f"{f['calibration_prompts']:,} calibration prompts{spread}.",
        ]
        if f["rate_names"]:
            lines += [
                "",
                "The checkpoint stores the threshold for every whole strong-call percentage, so a",
                f"server request can name a rate: `router-{f['router_type']}@30` sends about 30%",
                "of prompts like the calibration prompts to the strong model.",
            ]
    else:
        lines += [
            f"Not calibrated: the threshold is {_number(f['threshold'])}, which may send all "
            "traffic one way. Run `prefroute calibrate CHECKPOINT --prompts FILE --strong-rate "
            "0.3` first.",
        ]
    lines += ["", "## Evaluation", ""]
    if f["evaluation"]:
        lines += [
            "APGR is the average performance gap recovered over strong-call rates (random",
            "routing: 0.5; the oracle can exceed 1); CPT(50%) is the strong-call rate needed to",
            "recover half the gap. Recorded on stored benchmark outcomes:",
            "",
            *evaluation_rows(f["evaluation"]),
        ]
    else:
        lines += ["No evaluation recorded (run `prefroute eval CHECKPOINT --benchmark mmlu`)."]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from prefroute import load_router",
        f'router = load_router("{name}")  # a folder, or a Hugging Face Hub repo id',
        'print(router.route(["Prove that sqrt(2) is irrational.", "Say hi"]))',
        "```",
        "",
        "```bash",
        f"prefroute info {name}",
        f"prefroute serve {name} --strong-base-url https://api.openai.com/v1 \\",
        "    --weak-base-url http://localhost:8000/v1",
        f"# then request model router-{f['router_type']}@30 (30% strong calls) from any "
        "OpenAI client",
        "```",
        "",
        "The checkpoint is data only: `config.json` and safetensors, no pickle and no code.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | Path, name: str | None = None) -> Path:
    """Render ``README.md`` into a checkpoint folder from its config.json (atomically)."""
    directory = Path(directory)
    config = read_config(directory)
    text = render_model_card(config, name or str(directory), directory / CONFIG_NAME)
    return atomic_write_text(directory / CARD_NAME, text)


def describe_checkpoint(directory: str | Path) -> str:
    """The card's facts as plain text lines (``prefroute info``)."""
    directory = Path(directory)
    f = card_facts(read_config(directory), directory / CONFIG_NAME)
    battles = f["training_battles"]
    lines = [
        f"checkpoint:       {printable(directory)}",
        f"router:           {f['router_type']} (embedder: {f['embedder'] or 'none'})",
        f"strong model:     {f['strong_model']}",
        f"weak model:       {f['weak_model']}",
        f"training data:    {', '.join(f['training_sources']) or 'not recorded'}"
        + (f" ({battles:,} battles)" if isinstance(battles, int) else ""),
    ]
    if f["calibration_method"]:
        low_high = f["calibration_score_range"]
        lines.append(
            f"calibration:      threshold {_number(f['threshold'])} ({f['calibration_method']}): "
            f"{_pct(f['calibration_realised_strong_rate'])} strong calls on "
            f"{f['calibration_prompts']:,} prompts"
            + (f"; scores {_number(low_high[0])}-{_number(low_high[1])}" if low_high else "")
        )
        lines.append(
            "rate names:       "
            + ("router-<name>@<percent> available" if f["rate_names"] else "no (recalibrate)")
        )
    else:
        lines.append(f"calibration:      none (threshold {_number(f['threshold'])})")
    if f["evaluation"]:
        lines.append("evaluation:")
        lines += ["  " + row for row in evaluation_rows(f["evaluation"])]
    else:
        lines.append("evaluation:       none recorded")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    lines.append(
        "files:            "
        + ", ".join(f"{printable(p.name)} ({p.stat().st_size / 1e6:.2f} MB)" for p in files)
    )
    if not (directory / CARD_NAME).exists():
        lines.append(f"note: no {CARD_NAME} model card (saved by an older prefroute)")
    return "\n".join(lines)
