"""Copies of the inputs the log keeps, in blocks it reuses.

The log used to keep each request's own input arrays until they were written: views of the
transport's buffers, kept alive for a second or more and freed by the thousand once their file was
written. glibc then gave those pages back to the kernel (protobuf's Python module calls
``malloc_trim(0)`` every 10,000 frees) and the serving thread faulted them in again as it read new
requests: 0.72 page faults a request on the reference MLP at 100 % logged, 0.02 without the log.
With the rows copied into blocks that are used again once every row in them is written, the
transport's memory is reused at once, as without a log: 0.07.

The blocks also give the writer its columns without a copy: the rows taken for a file lie in a few
runs of consecutive rows, one per block (:meth:`RowBlocks.take_runs`), and each run is a chunk of
the file's column. Concatenating them first (10,000 rows of 784 floats, ~8 ms, the GIL held for
part of it) left the serving loop's tail longer: p99.9 latency a median 36 ms over eight runs
against 15.5 ms over nine with the runs (reference MLP over gRPC, 16 calls in flight, every
request logged; 9.7 ms without a log; docs/benchmarks.md has each run)."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from serving.codecs import numpy_dtype
from serving.prediction_log.compiled import hand_over as compiled
from serving.prediction_log.records import tensor_row_nbytes
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]

BLOCK_BYTES = 1 << 20


class RowBlocks:
    """Rows of one tensor, copied into blocks of ``BLOCK_BYTES``. A block is used again when its
    rows have been taken (:meth:`take_runs`) and no view of them is left (nothing but this object
    refers to it). Not thread-safe: the log calls it under its lock."""

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype[Any], max_bytes: float) -> None:
        self.row_shape = row_shape
        self.dtype = dtype
        row_nbytes = max(1, dtype.itemsize * math.prod(row_shape))
        self.rows = max(1, BLOCK_BYTES // row_nbytes)
        self.max_blocks = 2 + int(max_bytes // (self.rows * row_nbytes))
        """Blocks kept for reuse at most: enough for the queue's bound in bytes."""
        self._blocks: list[Array] = []
        self._current: Array | None = None
        self._used = 0
        self._start = 0
        """Where the current block's rows not yet taken by :meth:`take_runs` begin."""
        self._filled: list[tuple[Array, int, int]] = []
        """Runs of earlier blocks not yet taken: (block, first row, row after the last)."""
        self._outside = False
        """Rows were copied outside the blocks since the last :meth:`take_runs`."""

    def copy(self, values: Array) -> Array:
        """``values`` (a batch of rows) copied; into the current block when it has this shape
        and datatype and fits in one."""
        n = len(values)
        if values.dtype != self.dtype or values.shape[1:] != self.row_shape or n > self.rows:
            self._outside = True
            return values.copy()
        if self._current is None or self._used + n > self.rows:
            if self._current is not None and self._used > self._start:
                self._filled.append((self._current, self._start, self._used))
            self._current = self._unused_block()
            self._used = self._start = 0
        rows = self._current[self._used : self._used + n]
        rows[...] = values
        self._used += n
        return rows

    def take_runs(self) -> list[Array] | None:
        """The rows copied since the last call, in order, as runs of consecutive rows of the
        blocks (views); None when some were copied outside the blocks. A run keeps its block from
        being used again until it is dropped."""
        runs = self._filled
        if self._current is not None and self._used > self._start:
            runs.append((self._current, self._start, self._used))
        outside = self._outside
        self._filled, self._start, self._outside = [], self._used, False
        return None if outside else [block[start:stop] for block, start, stop in runs]

    def _unused_block(self) -> Array:
        for block in self._blocks:
            # References: the list, ``block`` and getrefcount's argument; a copy's view, a run not
            # taken yet, or being the current block, adds one.
            if sys.getrefcount(block) == 3:
                return block
        block = np.empty((self.rows, *self.row_shape), self.dtype)
        if len(self._blocks) < self.max_blocks:
            self._blocks.append(block)
        return block


def row_blocks(specs: tuple[TensorSpec, ...], kept: dict[str, str], max_bytes: float) -> dict[str, RowBlocks]:
    """Blocks for each kept tensor with a fixed row shape and a fixed-size datatype (the rest,
    BYTES and variable dimensions, are copied one by one). ``max_bytes``, the queue's bound, is
    shared between them by the size of their rows: what the blocks keep for reuse. The compiled
    :class:`RowBlocks` (``_hand_over.c``) where it is built."""
    sizes = {s.name: n for s in specs if s.name in kept and (n := tensor_row_nbytes(s)) is not None}
    total = sum(sizes.values()) or 1
    dtypes = {s.name: (s.shape, numpy_dtype(s.datatype)) for s in specs if s.name in sizes}
    kind = compiled.RowBlocks if compiled is not None else RowBlocks
    return {name: kind(shape, dtype, max_bytes * sizes[name] / total) for name, (shape, dtype) in dtypes.items()}
