"""Score with Ray Data: read, ``map_batches`` through one router actor per worker, write Parquet.

The checkpoint's files are put in Ray's object store once and each actor fetches them once,
so workers need no shared file system for the checkpoint. Each actor loads the router
through the same checked loader as the local path, so the scores are the local path's.
Ray is the optional extra ``prefroute[ray]``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prefroute.errors import ConfigError, DataError, PrefrouteError, check_int
from prefroute.io import staged_output_dir
from prefroute.scoring.inputs import (
    checked_prompt_column,
    count_rows,
    input_format,
    iter_prompt_batches,
)
from prefroute.scoring.local import score_prompts
from prefroute.scoring.outputs import Decision, score_table
from prefroute.validate import check_id_column

logger = logging.getLogger("prefroute.scoring")

# a checkpoint folder holds config, tensors and an index; anything much larger is not one
_MAX_CHECKPOINT_BYTES = 4 << 30
# A batch an actor failed to score comes back as one row of these columns instead of an
# exception: a Ray task that raises can leave Ray Data waiting for good (seen with Ray 2.51 on
# a 2-CPU local cluster), so failures travel as data and the driver raises them afterwards.
ERROR_COLUMN = "__prefroute_error__"
TRACEBACK_COLUMN = "__prefroute_traceback__"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PrefrouteError(
            "--engine ray needs Ray: pip install 'prefroute[ray]'"
        ) from None
    return ray


def init_ray(attempts: int = 3, **kwargs: Any) -> None:
    """``ray.init``, retried when a new local node misses Ray's fixed 30 s start-up deadline
    (it does on a heavily loaded machine)."""
    ray = _import_ray()
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as e:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            logger.warning("Ray node start-up timed out (attempt %d); retrying", attempt)
            ray.shutdown()


def checkpoint_files(directory: Path) -> dict[str, bytes]:
    """Every regular file under a checkpoint folder by relative path (links are refused)."""
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise PrefrouteError(f"checkpoint {directory}: {path} is a link; copy the file in")
        if path.is_file():
            total += path.stat().st_size
            if total > _MAX_CHECKPOINT_BYTES:
                raise PrefrouteError(f"checkpoint {directory} is larger than 4 GiB")
            files[path.relative_to(directory).as_posix()] = path.read_bytes()
    return files


class RouterActor:
    """Holds one loaded router; called by Ray Data on each batch (a pyarrow Table).

    A router that fails to load or to score is not raised (see ERROR_COLUMN): every batch
    from then on comes back as the failure, unscored.
    """

    def __init__(
        self, files: Any, prompt_field: str, decision: Decision, batch_size: int
    ) -> None:
        self.prompt_field = prompt_field
        self.decision = decision
        self.batch_size = batch_size
        self._failure: pa.Table | None = None
        try:
            self.router = _load_shipped_router(files)
        except Exception as e:
            self._failure = _failure_table(e)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Scores of ``batch``; after a failure, the failure."""
        if self._failure is None:
            try:
                return self._score(batch)
            except Exception as e:
                self._failure = _failure_table(e)
        return self._failure

    def _score(self, batch: pa.Table) -> pa.Table:
        # The driver checked every record (_check_input); these checks, without row numbers,
        # guard against a file changed since.
        prompts = checked_prompt_column(batch.column(self.prompt_field), None, None,
                                        self.prompt_field)
        id_field = self.decision.id_field
        ids = None
        if id_field:
            ids = check_id_column(batch.column(id_field), file=None, first_row=None,
                                  field=id_field)
        probs = score_prompts(self.router, prompts, self.batch_size)
        return score_table(prompts, ids, np.asarray(probs), self.decision)


def _load_shipped_router(files: Any) -> Any:
    """The router whose checkpoint files the driver shipped, loaded from a temporary folder
    through the same checked loader as the local path."""
    import ray

    from prefroute.router import load_router

    if isinstance(files, ray.ObjectRef):
        files = ray.get(files)
    folder = Path(tempfile.mkdtemp(prefix="prefroute-ckpt-"))
    try:
        for name, data in files.items():
            target = (folder / name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise PrefrouteError(f"checkpoint file {name!r} lies outside the checkpoint")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return load_router(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _failure_table(error: Exception) -> pa.Table:
    """One row: what failed on this worker, and its traceback."""
    message = str(error) if isinstance(error, PrefrouteError) else (
        f"{type(error).__name__}: {error}")
    return pa.table({
        ERROR_COLUMN: [f"scoring failed on a Ray worker: {message}"],
        TRACEBACK_COLUMN: ["".join(traceback.format_exception(error))],
    })


def ordered_parquet_sink(folder: Path) -> Any:
    """A Ray Data sink writing each write task's blocks, in arrival order, to
    ``part-<task index>.parquet`` in ``folder``.

    Ray's own ``write_parquet`` hands a task's blocks to ``pyarrow.dataset.write_dataset`` with
    threads on and ``preserve_order`` off, so rows inside one file can come out shuffled (seen
    under load). Here a task writes its blocks one after another with one ``ParquetWriter``.
    """
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class OrderedParquetSink(Datasink):
        def __init__(self, target: str) -> None:
            self.target = target
            self.failures: list[tuple[str, str]] = []

        def write(self, blocks: Any, ctx: Any) -> int | tuple[str, str]:
            """Rows written, or (message, traceback) of a batch an actor failed to score."""
            path = Path(self.target) / f"part-{ctx.task_idx:06d}.parquet"
            partial = path.with_name(f".{path.name}.partial")
            writer: pq.ParquetWriter | None = None
            rows = 0
            try:
                for block in blocks:
                    table = BlockAccessor.for_block(block).to_arrow()
                    failure = _failure_in(table)
                    if failure is not None:
                        if writer is not None:
                            writer.close()
                            writer = None
                            partial.unlink()
                        return failure
                    if table.num_rows == 0:
                        continue
                    if writer is None:
                        writer = pq.ParquetWriter(partial, table.schema)
                    elif not table.schema.equals(writer.schema):
                        table = table.cast(writer.schema)
                    writer.write_table(table)
                    rows += table.num_rows
            finally:
                if writer is not None:
                    writer.close()
            if writer is not None:
                os.replace(partial, path)
            return rows

        def on_write_complete(self, write_result: Any) -> None:
            self.failures = [r for r in write_result.write_returns if isinstance(r, tuple)]

    return OrderedParquetSink(str(folder))


def _failure_in(table: pa.Table) -> tuple[str, str] | None:
    """The (message, traceback) of a failed batch inside a block, if the block holds one (Ray
    may have merged it with other batches' scores, filling its other columns with nulls)."""
    if ERROR_COLUMN not in table.column_names:
        return None
    messages = table.column(ERROR_COLUMN)
    tracebacks = table.column(TRACEBACK_COLUMN)
    for message, trace in zip(messages.to_pylist(), tracebacks.to_pylist()):
        if message is not None:
            return message, trace or ""
    return None


def _read(ray: Any, path: Path, columns: list[str], blocks: int | None) -> Any:
    fmt = input_format(path)
    if fmt == "parquet":
        dataset = ray.data.read_parquet(str(path), override_num_blocks=blocks)
        return dataset.select_columns(columns)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, include_columns=columns
        )
        parse = pacsv.ParseOptions(newlines_in_values=True)
        return ray.data.read_csv(str(path), parse_options=parse, convert_options=convert)
    if fmt == "jsonl":
        return ray.data.read_json(str(path), lines=True).select_columns(columns)
    raise DataError("--engine ray reads Parquet, CSV or JSON Lines", file=str(path))


def _check_input(path: Path, prompt_field: str, id_field: str | None, batch_size: int) -> None:
    """Read the prompt and id columns once on the driver through the local path's checks, so
    a bad record is one DataError naming its file, row and field before the cluster starts
    work. Ray batches do not know their row numbers, and a task that raises can leave Ray
    Data waiting instead of aborting (seen with Ray 2.51 on a 2-CPU local cluster)."""
    for _ in iter_prompt_batches(path, batch_size=batch_size, prompt_field=prompt_field,
                                 id_field=id_field):
        pass


def _prefroute_error_inside(error: BaseException) -> PrefrouteError | None:
    """The prefroute error a Ray task raised, unwrapped from Ray's exception chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Ray re-raises a task's error as a class deriving from both RayTaskError and the
        # original, whose text is a traceback: only the original's own class will do
        if isinstance(current, PrefrouteError) and type(current).__module__.startswith(
                "prefroute."):
            return current
        cause = getattr(current, "cause", None)
        todo += [current.__cause__, current.__context__,
                 cause if isinstance(cause, BaseException) else None]
    return None


def score_with_ray(
    checkpoint: str | Path,
    prompts_path: str | Path,
    out: str | Path,
    *,
    address: str | None = None,
    prompt_field: str = "prompt",
    id_field: str | None = None,
    with_decision: bool = False,
    with_prompt: bool = True,
    batch_size: int = 4096,
    actors: int | None = None,
    overwrite: bool = False,
) -> int:
    """Score ``prompts_path`` into the Parquet folder ``out`` with Ray Data; returns the row count.

    ``address`` joins an existing cluster (``auto`` or ``ray://host:10001``); without it Ray
    uses the cluster this process already joined or starts a local one. Rows keep input order:
    part files are named by write task in order, and each holds its rows in order. The folder
    must be reachable from every worker (a shared file system), as for Ray's own writers.
    ``out`` is staged beside itself and renamed into place.
    """
    from prefroute.router import load_router

    check_int("batch_size", "score_with_ray", batch_size)
    check_int("actors", "score_with_ray", actors, optional=True)
    checkpoint, prompts_path, out = Path(checkpoint), Path(prompts_path), Path(out)
    if not prompts_path.exists():
        raise DataError("file not found", file=str(prompts_path))
    if out.suffix.lower() in (".jsonl", ".csv"):
        raise ConfigError("--engine ray writes a folder of Parquet files; give --out a folder")
    router = load_router(checkpoint)  # checked on the driver first: errors surface here once
    decision = Decision(
        router.strong_model, router.weak_model, router.threshold, id_field, with_decision,
        with_prompt,
    )
    columns = [prompt_field] + ([id_field] if id_field and id_field != prompt_field else [])
    _check_input(prompts_path, prompt_field, id_field, batch_size)
    ray = _import_ray()
    if not ray.is_initialized():
        init_ray(address=address, include_dashboard=False, log_to_driver=False)
    elif address is not None:
        logger.info("Ray is already initialised in this process; --address %s not used", address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    if actors is None:  # one CPU stays free for the read and write tasks, or they would wait
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    rows = count_rows(prompts_path)
    # Ray sizes blocks in bytes (~128 MB); prompts are small, so ask for enough blocks to
    # keep every actor busy
    blocks = None if rows is None else max(2 * actors, -(-rows // (4 * batch_size)))
    files_ref = ray.put(checkpoint_files(checkpoint))
    with staged_output_dir(out, overwrite=overwrite, inputs=(prompts_path, checkpoint)) as stage:
        dataset = _read(ray, prompts_path, columns, blocks)
        scored = dataset.map_batches(
            RouterActor,
            fn_constructor_kwargs={
                "files": files_ref,
                "prompt_field": prompt_field,
                "decision": decision,
                "batch_size": batch_size,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            concurrency=actors,
            num_cpus=1,
        )
        sink = ordered_parquet_sink(stage)
        try:
            scored.write_datasink(sink)
        except Exception as e:
            inner = _prefroute_error_inside(e)
            if inner is None:
                raise
            raise inner.with_traceback(None) from None
        if sink.failures:
            message, worker_traceback = sink.failures[0]
            error = PrefrouteError(message)
            error.add_note("On the Ray worker:\n" + worker_traceback)  # shown with --debug
            raise error
        rows = sum(
            pq.ParquetFile(f).metadata.num_rows for f in sorted(stage.glob("*.parquet"))
        )
    return rows
