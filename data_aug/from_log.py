"""Battles from a serving journal (``prefroute serve --log-dir``).

Two inputs come out of it:

* **shadow pairs**: requests that were also sent to the other side have both answers; they
  feed the existing judge pipeline as stored outputs keyed by request id
  (``prefroute augment judge --from-log DIR``), with its journal, resume and cost cap;
* **feedback**: a user's verdict on an answer is a battle by itself
  (``prefroute augment feedback --from-log DIR``): ``preferred: this|other`` gives the
  winner, ``score`` in [0, 1] the served answer's chance of being the better one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_aug.items import PromptItem
from prefroute._logging import logger
from prefroute.data.battles import Battles
from prefroute.errors import DataError
from prefroute.serve.journal import iter_journal

FEEDBACK_SOURCE = "feedback"


def _requests(directory: str | Path) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """Requests by id, shadow records and feedback records, in journal order."""
    requests: dict[str, dict] = {}
    shadows, feedback = [], []
    for path, line, record in iter_journal(directory):
        kind = record.get("type")
        if kind == "request":
            for name in ("id", "text", "side", "model", "strong_model", "weak_model"):
                if not isinstance(record.get(name), str):
                    raise DataError("a request record needs a string", file=path, row=line,
                                    field=name)
            requests[record["id"]] = record
        elif kind == "shadow":
            shadows.append(record)
        elif kind == "feedback":
            feedback.append({**record, "_where": (path, line)})
    return requests, shadows, feedback


def read_shadow_pairs(
    directory: str | Path, *, strong_name: str | None = None, weak_name: str | None = None
) -> tuple[list[PromptItem], dict[str, dict[str, str]], tuple[str, str]]:
    """(items, stored answers model -> {request id: text}, (strong, weak)) of shadow pairs.

    A pair needs the routed answer (the journal keeps it for shadowed requests) and a
    successful shadow answer. With several model pairs in the journal, ``strong_name`` and
    ``weak_name`` choose one.
    """
    requests, shadows, _ = _requests(directory)
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    skipped: Counter = Counter()
    for shadow in shadows:
        request = requests.get(shadow.get("id"))
        if request is None:
            skipped["shadow of an unknown request"] += 1
            continue
        if not isinstance(shadow.get("response"), str) or shadow.get("error"):
            skipped["shadow call failed"] += 1
            continue
        if not isinstance(request.get("response"), str):
            skipped["routed answer not journalled"] += 1
            continue
        pairs.setdefault((request["strong_model"], request["weak_model"]), []).append(
            (request, shadow))
    for reason, n in skipped.items():
        logger.warning("journal %s: %d shadow records skipped (%s)", directory, n, reason)
    if strong_name or weak_name:
        pairs = {p: v for p, v in pairs.items()
                 if (strong_name in (None, p[0])) and (weak_name in (None, p[1]))}
    if not pairs:
        raise DataError("no complete shadow pair (both answers) in the journal"
                        + (f" for {strong_name!r} / {weak_name!r}" if strong_name or weak_name
                           else ""), file=str(directory))
    if len(pairs) > 1:
        listed = ", ".join(f"{s} / {w} ({len(v)})" for (s, w), v in pairs.items())
        raise DataError(f"the journal has shadow pairs of several model pairs ({listed}); "
                        "choose one with --strong-name and --weak-name", file=str(directory))
    (strong, weak), found = next(iter(pairs.items()))
    items, stored = [], {strong: {}, weak: {}}
    for request, shadow in found:
        items.append(PromptItem(request["id"], request["text"]))
        served = strong if request["side"] == "strong" else weak
        other = weak if served == strong else strong
        stored[served][request["id"]] = request["response"]
        stored[other][request["id"]] = shadow["response"]
    logger.info("journal %s: %d shadow pairs of %s vs %s", directory, len(items), strong, weak)
    return items, stored, (strong, weak)


def feedback_battles(directory: str | Path) -> Battles:
    """One battle per answer with feedback (the last verdict counts), strong model as model_a."""
    requests, _, feedback = _requests(directory)
    latest: dict[str, dict] = {}
    unknown = 0
    for record in feedback:
        if record.get("id") in requests:
            latest[record["id"]] = record
        else:
            unknown += 1
    if unknown:
        logger.warning("journal %s: %d feedback records name no journalled request; skipped",
                       directory, unknown)
    if len(latest) < sum(1 for r in feedback if r.get("id") in requests):
        logger.info("journal %s: repeated feedback on one answer: the last verdict counts",
                    directory)
    rows = []
    for request_id, record in latest.items():
        request = requests[request_id]
        path, line = record["_where"]
        served_is_weak = request["side"] == "weak"
        if "preferred" in record:
            if record["preferred"] not in ("this", "other"):
                raise DataError("expected 'this' or 'other'", file=path, row=line,
                                field="preferred")
            served_won = record["preferred"] == "this"
            p_served = 1.0 if served_won else 0.0
        else:
            p_served = record.get("score")
            if isinstance(p_served, bool) or not isinstance(p_served, (int, float)) or not (
                    0.0 <= p_served <= 1.0):
                raise DataError("expected a number in [0, 1]", file=path, row=line,
                                field="score")
        p_b_wins = float(p_served if served_is_weak else 1.0 - p_served)
        winner = "model_b" if p_b_wins > 0.5 else "model_a" if p_b_wins < 0.5 else "tie"
        rows.append({"prompt": request["text"], "model_a": request["strong_model"],
                     "model_b": request["weak_model"], "winner": winner,
                     "p_b_wins": p_b_wins, "source": FEEDBACK_SOURCE})
    if not rows:
        raise DataError("no feedback on a journalled request", file=str(directory))
    return Battles.from_records(rows, file=str(directory))
