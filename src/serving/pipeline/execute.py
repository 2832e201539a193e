"""One request, or one batch-scoring chunk, through a pipeline's steps.

Rows flow through the steps as whole arrays. A step with ``when:`` runs only on the rows where
its condition holds (the others take its ``otherwise:`` values); a row a step fails (its
``"_errors"``) is left out of the later steps and failed in the end, with the step named. The
deadline is checked before each step, and a cancelled request stops at the step it waits on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from serving.codecs import numpy_dtype
from serving.errors import DeadlineExceededError, ServingError
from serving.pipeline.graph import Fill, Graph, Step, StepRef
from serving.rows import ROW_ERRORS, failed_rows
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]


class Steps(Protocol):
    """How a pipeline reaches its step models (online: their batchers; offline: the instances)."""

    def outputs_of(self, ref: StepRef) -> dict[str, TensorSpec]:
        """The outputs of the version ``ref`` resolves to now (shapes without the batch dimension)."""

    def run(self, ref: StepRef, inputs: Arrays, deadline_s: float | None) -> Awaitable[tuple[Arrays, str]]:
        """Run ``inputs`` (rows first) on the version ``ref`` resolves to; its outputs and that version."""


_ALL = np.empty(0, dtype=np.int64)
"""Rows a step runs for when it runs for every row (never indexed)."""

StepObserver = Callable[[Step, str, float], None]
"""Told each step's resolved version and duration (seconds)."""


async def run_pipeline(
    graph: Graph,
    inputs: Arrays,
    steps: Steps,
    deadline_s: float | None = None,
    observe: StepObserver | None = None,
) -> Arrays:
    """Every pipeline output for ``inputs`` (rows first), plus ``"_errors"`` when a step failed rows.

    Raises:
        DeadlineExceededError: the deadline passed before a step.
        ServingError: a step failed as a whole (its message names the step).
    """
    n = len(next(iter(inputs.values())))
    values: Arrays = dict(inputs)
    alive: Array | None = None  # None while every row is alive (no mask to build on the common path)
    errors: dict[int, str] = {}
    for step in graph.steps:
        if deadline_s is not None and time.monotonic() >= deadline_s:
            raise DeadlineExceededError(f"pipeline {graph.name}: deadline exceeded before step {step.name!r}")
        if step.when is None and alive is None:
            chosen, rows, everyone = None, _ALL, True
        else:
            if step.when is None:
                assert alive is not None
                chosen = alive.copy()
            else:
                chosen = step.when.rows(values[step.when.source])  # a new array of its own
                if alive is not None:
                    chosen &= alive
            rows = chosen.nonzero()[0]
            everyone = len(rows) == n
        out: Arrays = {}
        if everyone or len(rows):
            feed = {name: values[src] if everyone else values[src][rows] for name, src in step.inputs.items()}
            start = time.perf_counter()
            try:
                out, version = await steps.run(step.ref, feed, deadline_s)
            except ServingError as exc:
                raise type(exc)(f"pipeline {graph.name}: step {step.name!r} ({step.ref}): {exc.message}") from exc
            if observe is not None:
                observe(step, version, time.perf_counter() - start)
            failed = failed_rows(out)
            if failed:
                if alive is None:
                    alive = np.ones(n, dtype=bool)
                for i, message in failed.items():
                    row = i if everyone else int(rows[i])
                    errors[row] = f"step {step.name!r}: {message}"
                    alive[row] = False
        if not step.used:
            continue
        specs = (
            steps.outputs_of(step.ref) if not everyone and not len(rows) else {}
        )  # shapes of a step that did not run
        for output in step.used:
            name = f"{step.name}.{output}"
            if everyone:
                values[name] = out[output]
                continue
            assert chosen is not None  # a step that ran for some rows only
            full = _blank(specs.get(output), n, out.get(output))
            if len(rows):
                full[rows] = out[output]
            skipped = (~chosen if alive is None else ~chosen & alive).nonzero()[0]
            fill = step.otherwise.get(output)
            if len(skipped) and fill is not None:
                _fill(full, skipped, fill, values)
            values[name] = full
    result = {output: values[source] for output, source in graph.sources.items()}
    if errors:
        marks = np.full(n, None, dtype=np.object_)
        for row, message in errors.items():
            marks[row] = message
        result[ROW_ERRORS] = marks
    return result


def _blank(spec: TensorSpec | None, n: int, like: Array | None) -> Array:
    """An output array for all ``n`` rows (the ones a step did not run stay zero or b"")."""
    if like is not None:
        shape: tuple[int, ...] = (n, *like.shape[1:])
        dtype: Any = like.dtype
    else:
        assert spec is not None
        shape = (n, *(d if d > 0 else 1 for d in spec.shape))
        dtype = np.object_ if spec.datatype == "BYTES" else numpy_dtype(spec.datatype)
    if dtype == np.object_:
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=dtype)


def _fill(full: Array, rows: Array, fill: Fill, values: Arrays) -> None:
    if fill.source is not None:
        full[rows] = values[fill.source][rows]
    elif full.dtype == np.object_:
        full[rows] = str(fill.value).encode("utf-8")
    else:
        full[rows] = fill.value
