"""What a ``serving score`` invocation asks for, checked before anything runs, and its work units.

The input's Parquet footers split it into work units (consecutive row groups of one file, about
``rows_per_file`` rows): what one executor call reads, scores and writes.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from serving.config.model import BatchConfig, ColumnSource
from serving.errors import InvalidInputError
from serving.offline.inputs import InputSet, resolve_inputs
from serving.offline.mapping import ColumnPlan, plan_columns
from serving.offline.scorer import open_version, resolve_version
from serving.repository import ModelEntry


@dataclass(frozen=True)
class ScoreJob:
    """One invocation of ``serving score``."""

    repository: Path
    model: str
    inputs: list[str]
    output: str
    mapping: dict[str, ColumnSource] = field(default_factory=dict)
    passthrough: tuple[str, ...] | None = None
    batch_size: int = 16384
    concurrency: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int | None = None
    max_error_rate: float = 0.0
    rows_per_file: int = 1_000_000
    overwrite: bool = False
    address: str | None = None
    executor: str = "auto"
    """``auto`` (in-process for a small job without a cluster, else Ray Data), ``local`` or ``ray``."""
    local_max_rows: int = 2_000_000
    verbose: bool = False
    progress: bool = True
    incremental: bool = False
    """Score only the input files no earlier published run of this model version scored here."""
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)
    """Model -> alias -> version, for pipeline steps named MODEL@ALIAS (the CLI reads them from the
    serving state; batch jobs themselves never do)."""


@dataclass(frozen=True)
class WorkUnit:
    """Consecutive row groups of one input file, scored into one output file."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    rows: int
    partitions: dict[str, str]
    output: str
    """Output file stem, relative to the output folder (the input's hive folders kept)."""


@dataclass(frozen=True)
class Prepared:
    """A checked job: the model version, the inputs, the column plan and the work units."""

    entry: ModelEntry
    version: int
    inputs: InputSet
    plan: ColumnPlan
    units: list[WorkUnit]
    schema: pa.Schema
    """The input's schema with the hive partition columns (as strings) appended."""
    output: str
    """The output folder, its template filled in."""


def prepare(job: ScoreJob) -> Prepared:
    """Every check that needs no Ray: model, inputs, mapping, output folder.

    Raises:
        ModelNotFoundError, ConfigError, InvalidInputError: a bad invocation.
    """
    output_location(job.output)  # an output that cannot be published fails before anything is read
    entry, version = resolve_version(job.repository, job.model)
    inputs = resolve_inputs(job.inputs)
    schema = with_partitions(inputs)
    mv = open_version(entry, version, device="cpu", threads=1, warmup=False, aliases=job.aliases)
    try:
        batch = entry.config.batch
        config = BatchConfig(
            inputs={**batch.inputs, **job.mapping},
            passthrough=batch.passthrough if job.passthrough is None else job.passthrough,
            outputs=batch.outputs,
        )
        plan = plan_columns(config, mv.inputs, mv.outputs, schema, labels=entry.config.labels)
    finally:
        mv.unload()
    output = render_output(job.output, entry.name, version, dt.datetime.now(dt.UTC))
    out_fs, out_path = output_location(output)
    if out_fs.get_file_info(out_path).type != pafs.FileType.NotFound and not (job.overwrite or job.incremental):
        raise InvalidInputError(
            f"output {output} already exists (pass --incremental to add what is new, or --overwrite to replace it)"
        )
    return Prepared(entry, version, inputs, plan, plan_units(inputs, job.rows_per_file), schema, output)


def render_output(template: str, model: str, version: int, now: dt.datetime) -> str:
    """Fill ``{date}`` (UTC, YYYY-MM-DD), ``{model}`` and ``{version}`` in an output path.

    Raises:
        InvalidInputError: another placeholder, or unbalanced braces.
    """
    try:
        return template.format(date=now.strftime("%Y-%m-%d"), model=model, version=version)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInputError(
            f"--output {template!r}: {exc!s} is not a placeholder it knows (use {{date}}, {{model}}, {{version}})"
        ) from None


def plan_units(inputs: InputSet, rows_per_file: int) -> list[WorkUnit]:
    """Split every file at row-group boundaries into units of about ``rows_per_file`` rows
    (a unit is what one executor call reads; its output is split again at ``rows_per_file``)."""
    units: list[WorkUnit] = []
    for f in inputs.files:
        rel_dir = os.path.relpath(os.path.dirname(f.path), inputs.base_dir)
        stem = os.path.splitext(os.path.basename(f.path))[0]
        groups: list[int] = []
        rows = 0
        in_file = 0
        for i, n in enumerate(f.row_groups):
            groups.append(i)
            rows += n
            if rows >= rows_per_file or i == len(f.row_groups) - 1:
                # Named by the input file and the unit's place in it, not by the job's unit count:
                # the same file gives the same output names in every run (incremental runs replace them).
                name = f"{stem}-u{in_file:03d}"
                in_file += 1
                units.append(
                    WorkUnit(
                        len(units),
                        f.path,
                        tuple(groups),
                        rows,
                        f.partition_values(inputs.base_dir),
                        name if rel_dir == "." else f"{rel_dir}/{name}",
                    )
                )
                groups, rows = [], 0
    return units


def with_partitions(inputs: InputSet) -> pa.Schema:
    schema = inputs.schema
    for c in inputs.partition_columns:
        schema = schema.append(pa.field(c, pa.string()))
    return schema


def output_location(output: str) -> tuple[pafs.FileSystem, str]:
    """Where a job's output goes: a local (or mounted) filesystem path, or ``file://``.

    Raises:
        InvalidInputError: an object store (``s3://``, ``gs://`` ...): publishing a result there
            safely needs what object stores lack (an atomic folder rename, a lock that works
            there), so it is refused rather than half-done. Inputs may come from object stores.
    """
    if "://" in output:
        scheme = output.split("://", 1)[0].lower()
        if scheme != "file":
            raise InvalidInputError(
                f"--output {output[:200]!r}: outputs on {scheme[:20]}:// are not supported; a result is published "
                "by renaming a folder under a lock, which object stores do not offer. Write to a local or mounted "
                "folder and copy it (e.g. `aws s3 sync`); inputs may be read from object stores."
            )
        fs, path = pafs.FileSystem.from_uri(output)
        return fs, str(path)
    return pafs.LocalFileSystem(), os.path.abspath(output)
