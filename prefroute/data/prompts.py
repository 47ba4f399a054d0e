"""Reading prompt files for scoring and calibration."""

from __future__ import annotations

from pathlib import Path

from prefroute._logging import logger
from prefroute.data.tabular import iter_jsonl
from prefroute.errors import DataError
from prefroute.validate import check_text, decode_utf8


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSONL file (a ``prompt`` field per row) or plain text (one per line).

    Blank lines of a text file are not prompts; their count is logged.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    prompts: list[str] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for i, row in iter_jsonl(path):
            if "prompt" not in row:
                raise DataError("missing field", file=str(path), row=i, field="prompt")
            prompt = check_text(row["prompt"], file=str(path), row=i, field="prompt")
            if not prompt.strip():
                raise DataError("empty or non-text prompt", file=str(path), row=i, field="prompt")
            prompts.append(prompt)
    else:
        blank = 0
        text = decode_utf8(path.read_bytes(), str(path))
        for line in text.splitlines():
            if line.strip():
                prompts.append(line)
            else:
                blank += 1
        if blank:
            logger.info("%s: skipped %d blank lines", path, blank)
    if not prompts:
        raise DataError("no prompts found", file=str(path))
    return prompts
