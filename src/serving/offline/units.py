"""Score one work unit: read its row groups, score them in chunks, write the scored rows and the
failed rows (with reasons). No Ray in here: the in-process executor and the Ray Data actors run
the same :class:`UnitScorer`, so both write the same files.

Output layout (what pandas, pyarrow, DuckDB and Spark read as one dataset)::

    OUTPUT/<hive dirs of the input>/<file stem>-u<unit in file>-<NNN>.parquet   scored rows
    OUTPUT/_errors/<hive dirs>/<file stem>-u<unit in file>.parq               failed rows, with `error`
    OUTPUT/_manifest.json, OUTPUT/_SUCCESS

Partition columns are not written into the files: readers restore them from the folder names,
and a column present in both (with another type) is what makes readers refuse a dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.model_instance import ModelInstance
from serving.offline.manifest import ERRORS_DIR, ERRORS_SUFFIX
from serving.offline.plan import Prepared, ScoreJob, WorkUnit
from serving.offline.scorer import Scorer, open_version


@dataclass(frozen=True, slots=True)
class UnitResult:
    index: int
    scored: int
    failed: int
    files: tuple[str, ...] = ()
    """Files written, relative to the output folder."""


class RollingWriter:
    """Writes ``<stem>-NNN.parquet`` files of at most ``rows_per_file`` rows each."""

    def __init__(self, fs: pafs.FileSystem, stem: str, rows_per_file: int) -> None:
        self.fs, self.stem, self.rows_per_file = fs, stem, rows_per_file
        self._writer: pq.ParquetWriter | None = None
        self._stream: Any = None  # ParquetWriter does not close a stream it was handed
        self._rows = 0
        self._files = 0
        self.paths: list[str] = []

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None or self._rows >= self.rows_per_file:
                self.close()
                path = f"{self.stem}-{self._files:03d}.parquet"
                self.paths.append(path)
                self.fs.create_dir(os.path.dirname(path), recursive=True)
                self._stream = self.fs.open_output_stream(path)
                self._writer = pq.ParquetWriter(self._stream, table.schema)
                self._files += 1
            assert self._writer is not None
            take = min(table.num_rows, self.rows_per_file - self._rows)
            self._writer.write_table(table.slice(0, take))
            self._rows += take
            table = table.slice(take)

    def close(self) -> None:
        """Finish the current file (and its stream, even if finishing it failed)."""
        writer, stream = self._writer, self._stream
        self._writer = self._stream = None
        self._rows = 0
        try:
            if writer is not None:
                writer.close()
        finally:
            if stream is not None:
                stream.close()


class UnitScorer:
    """One loaded model version scoring work units into a staging folder.

    Files are named by unit, so a unit that is retried rewrites its files instead of adding rows.
    """

    def __init__(
        self,
        scorer: Scorer,
        schema: pa.Schema,
        in_fs: pafs.FileSystem,
        out_fs: pafs.FileSystem,
        staging: str,
        batch_size: int,
        rows_per_file: int,
    ) -> None:
        self.scorer = scorer
        self.schema = schema
        self.in_fs, self.out_fs = in_fs, out_fs
        self.staging = staging
        self.batch_size = batch_size
        self.rows_per_file = rows_per_file

    def score_unit(self, unit: WorkUnit, progress: Callable[[int, int], None] | None = None) -> UnitResult:
        """Score one unit; ``progress(scored, failed)`` after each chunk."""
        scored = failed = 0
        errors: list[pa.Table] = []
        writer = RollingWriter(self.out_fs, f"{self.staging}/{unit.output}", self.rows_per_file)
        try:
            with self.in_fs.open_input_file(unit.path) as f:
                reader = pq.ParquetFile(f)
                for rb in reader.iter_batches(batch_size=self.batch_size, row_groups=list(unit.row_groups)):
                    result = self.scorer.score(self._complete(pa.Table.from_batches([rb]), unit.partitions))
                    if result.scored.num_rows:
                        writer.write(_without(result.scored, unit.partitions))
                        scored += result.scored.num_rows
                    if result.errors.num_rows:
                        errors.append(_without(result.errors, unit.partitions))
                        failed += result.errors.num_rows
                    if progress is not None:
                        progress(result.scored.num_rows, result.errors.num_rows)
        finally:  # a unit that fails part-way leaves no open file (it is retried whole)
            writer.close()
        written = [os.path.relpath(p, self.staging) for p in writer.paths]
        if errors:
            path = f"{self.staging}/{ERRORS_DIR}/{unit.output}{ERRORS_SUFFIX}"
            self.out_fs.create_dir(os.path.dirname(path), recursive=True)
            with self.out_fs.open_output_stream(path) as out:
                pq.write_table(pa.concat_tables(errors), out)
            written.append(os.path.relpath(path, self.staging))
        return UnitResult(unit.index, scored, failed, tuple(written))

    def _complete(self, table: pa.Table, partitions: dict[str, str]) -> pa.Table:
        """Add the hive partition values, and null columns for what this file lacks (their rows fail)."""
        for f in self.schema:
            if f.name in partitions:
                table = table.append_column(f.name, pa.array([partitions[f.name]] * table.num_rows, pa.string()))
            elif f.name not in table.column_names:
                table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
        return table


def open_unit_scorer(
    job: ScoreJob, prepared: Prepared, out_fs: pafs.FileSystem, staging: str, threads: int | None
) -> tuple[UnitScorer, ModelInstance]:
    """Load the job's model version (on the GPU when the job asks for GPUs) and a scorer of units
    around it; the caller unloads the model when done."""
    device = "gpu" if job.num_gpus > 0 else None
    mv = open_version(prepared.entry, prepared.version, device=device, threads=threads, aliases=job.aliases)
    scorer = Scorer(mv, prepared.plan)
    worker = UnitScorer(
        scorer, prepared.schema, prepared.inputs.filesystem, out_fs, staging, job.batch_size, job.rows_per_file
    )
    return worker, mv


def _without(table: pa.Table, partitions: dict[str, str]) -> pa.Table:
    """The table without the partition columns (the folder names carry them)."""
    drop = [c for c in partitions if c in table.column_names]
    return table.drop_columns(drop) if drop else table
