"""Reading prompt files for calibration: the scoring input layer, all in memory."""

from __future__ import annotations

from pathlib import Path

READ_BATCH = 65_536


def read_prompts(path: str | Path, prompt_field: str = "prompt") -> list[str]:
    """Every prompt of a JSONL, CSV or Parquet file (its ``prompt_field``), or of a plain text
    file (one per line; blank lines are not prompts), checked as ``prefroute score`` checks
    them: a bad row is a DataError naming the file, the row and the field."""
    from prefroute.scoring.inputs import iter_prompt_batches

    prompts: list[str] = []
    for batch in iter_prompt_batches(path, batch_size=READ_BATCH, prompt_field=prompt_field):
        prompts.extend(batch.prompts.to_pylist())
    return prompts
