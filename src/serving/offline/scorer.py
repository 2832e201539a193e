"""Score Arrow tables with one model version: the same runtime and I/O contract as online.

``Scorer`` has no Ray in it: the Ray Data job runs one per actor, tests and benchmarks
run it in-process.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from serving.batching import split_outputs
from serving.codecs import numpy_dtype
from serving.config.model import Platform
from serving.errors import ModelNotFoundError, ServingError
from serving.lifecycle.lineage import file_sha256
from serving.model_instance import ModelInstance
from serving.offline.mapping import (
    ERROR_COLUMN,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    ColumnPlan,
    extract_inputs,
    output_columns,
)
from serving.offline.pipeline_steps import ScoringPipeline
from serving.repository import ModelEntry, load_model_entry
from serving.rows import failed_rows
from serving.runtime import Model, create_model

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]


def resolve_version(repository: Path, spec: str) -> tuple[ModelEntry, int]:
    """``NAME`` (newest version the policy serves) or ``NAME:VERSION`` (any version on disk).

    Raises:
        ModelNotFoundError: no such model folder or version.
        ConfigError: the model's ``model.yaml`` is invalid.
    """
    name, _, version = spec.partition(":")
    model_dir = repository / name
    if not name or not (model_dir / "model.yaml").is_file():
        known = sorted(p.parent.name for p in repository.glob("*/model.yaml")) if repository.is_dir() else []
        raise ModelNotFoundError(f"unknown model {name!r} in repository {repository} (models: {known})")
    entry = load_model_entry(model_dir)
    if not version:
        return entry, entry.selected[0]
    if not version.isdigit() or int(version) not in entry.available:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r} (versions on disk: {list(entry.available)})"
        )
    return entry, int(version)


def open_version(
    entry: ModelEntry,
    version: int,
    *,
    device: str | None = None,
    threads: int | None = None,
    warmup: bool = True,
    aliases: Mapping[str, Mapping[str, int]] | None = None,
) -> ModelInstance:
    """Load one version for batch scoring (runtime options may be overridden); a pipeline's
    steps named MODEL@ALIAS resolve through ``aliases`` (model -> alias -> version).

    Raises:
        ModelNotReadyError, ConfigError: the artifact cannot be loaded or contradicts model.yaml.
    """
    config = entry.config
    instance = config.instance.model_copy(
        update={k: v for k, v in {"device": device, "num_threads": threads, "warmup": warmup}.items() if v is not None}
    )
    config = config.model_copy(update={"instance": instance})
    model: Model
    if config.platform is Platform.PIPELINE:

        def open_step(name: str, step_version: str) -> ModelInstance:
            if step_version and not step_version.isdigit():
                target = (aliases or {}).get(name, {}).get(step_version)
                if target is None:
                    raise ModelNotFoundError(
                        f"pipeline {entry.name}: step model {name}@{step_version}: no such alias in the serving state"
                    )
                step_version = str(target)
            step_entry, number = resolve_version(entry.path.parent, f"{name}:{step_version}" if step_version else name)
            return open_version(step_entry, number, device=device, threads=threads, warmup=warmup)

        model = ScoringPipeline(entry.name, config, open_step)
    else:
        model = create_model(config, entry.version_dir(version))
    loaded = ModelInstance(entry.name, version, config, model)
    loaded.open()
    return loaded


def artifact_sha256(entry: ModelEntry, version: int) -> str:
    """The artifact's sha256; with other files (a python model's), over each file's name and sha256."""
    main = file_sha256(entry.artifact(version))
    extra = entry.config.extra_files
    if not extra:
        return main
    directory = entry.version_dir(version)
    lines = [f"{entry.artifact(version).name} {main}", *(f"{f} {file_sha256(directory / f)}" for f in extra)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass
class ScoredBatch:
    scored: pa.Table
    errors: pa.Table


class Scorer:
    """Turns tables into (scored rows, failed rows with a reason); never drops a row."""

    def __init__(self, mv: ModelInstance, plan: ColumnPlan) -> None:
        self.mv = mv
        self.plan = plan
        self.output_names = [o.name for o in mv.outputs]
        self.chunk_rows = mv.max_batch_size or 1

    def score(self, table: pa.Table) -> ScoredBatch:
        arrays, errors = extract_inputs(table, self.plan)
        good = np.flatnonzero(~errors.bad)
        if len(good) < table.num_rows:
            arrays = {k: v[good] for k, v in arrays.items()}
        outputs, failed = self._predict(arrays, len(good))
        if failed:  # outputs hold the other rows only, in order
            for i, reason in failed.items():
                errors.reasons[good[i]] = reason
                errors.bad[good[i]] = True
            good = np.setdiff1d(good, good[np.fromiter(failed, dtype=np.int64)])
        scored = self._scored_table(table, good, outputs)
        return ScoredBatch(scored, self._errors_table(table, errors.bad, errors.reasons))

    def _predict(self, arrays: dict[str, Array], n: int) -> tuple[dict[str, Array], dict[int, str]]:
        """Run in chunks of max_batch_size; a chunk the model rejects is retried row by row. The
        outputs of the rows that did not fail, in order, and the failed rows with their reason
        (a model's ``"_errors"`` among them)."""
        parts: list[dict[str, Array]] = []
        failed: dict[int, str] = {}
        batched = self.mv.max_batch_size > 0
        step = self.chunk_rows

        def keep(out: dict[str, Array], start: int) -> None:
            refused = failed_rows(out)
            for i, message in refused.items():
                failed[start + i] = f"model error: {message}"
            if refused:
                ok = np.setdiff1d(np.arange(len(next(iter(out.values())))), np.fromiter(refused, dtype=np.int64))
                out = {k: v[ok] for k, v in out.items()}
            parts.append(out)

        for start in range(0, n, step):
            chunk = {k: v[start : start + step] for k, v in arrays.items()}
            if not batched:
                chunk = {k: v[0] for k, v in chunk.items()}
            try:
                keep(self._run(chunk, batched), start)
            except ServingError as exc:
                if not batched or step == 1:
                    failed[start] = f"model error: {exc.message}"
                    continue
                for i in range(start, min(start + step, n)):
                    try:
                        keep(self._run({k: v[i : i + 1] for k, v in arrays.items()}, batched), i)
                    except ServingError as row_exc:
                        failed[i] = f"model error: {row_exc.message}"
        if not parts:
            return {name: np.empty((0,)) for name in self.output_names}, failed
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}, failed

    def _run(self, chunk: dict[str, Array], batched: bool) -> dict[str, Array]:
        out = self.mv.predict(chunk)
        if not batched:
            return {k: v[np.newaxis] for k, v in out.items()}
        split_outputs(out, [len(next(iter(chunk.values())))])  # raises unless one output row per input row
        return out

    def _scored_table(self, table: pa.Table, rows: Array, outputs: dict[str, Array]) -> pa.Table:
        all_rows = len(rows) == table.num_rows
        cols: dict[str, pa.Array | pa.ChunkedArray] = {}
        for c in self.plan.passthrough:
            cols[c] = table.column(c) if all_rows else table.column(c).take(pa.array(rows))
        cols.update(output_columns(outputs, self.plan) if len(rows) else self._empty_outputs())
        cols[MODEL_NAME_COLUMN] = pa.array(np.full(len(rows), self.mv.name, dtype=object), pa.string())
        cols[MODEL_VERSION_COLUMN] = pa.array(np.full(len(rows), self.mv.version, dtype=np.int64))
        return pa.table(cols)

    def _empty_outputs(self) -> dict[str, pa.Array]:
        """Zero-row output columns with the types a non-empty batch would have."""
        probe = {
            s.name: np.zeros((1, *[max(d, 1) for d in s.shape]), dtype=numpy_dtype(s.datatype)) for s in self.mv.outputs
        }
        return {k: v.slice(0, 0) for k, v in output_columns(probe, self.plan).items()}

    def _errors_table(self, table: pa.Table, bad: Array, reasons: Array) -> pa.Table:
        rows = np.flatnonzero(bad)
        failed = table.take(pa.array(rows)) if len(rows) else table.slice(0, 0)
        return (
            failed.append_column(ERROR_COLUMN, pa.array(list(reasons[rows]), pa.string()))
            .append_column(MODEL_NAME_COLUMN, pa.array([self.mv.name] * len(rows), pa.string()))
            .append_column(MODEL_VERSION_COLUMN, pa.array([self.mv.version] * len(rows), pa.int64()))
        )
