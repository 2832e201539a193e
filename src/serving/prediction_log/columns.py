"""Tensors as log columns, with a type fixed by the tensor's declared spec (every file of a
version's log has one schema, whatever the batches held): one value per row is a plain column,
more are nested lists (fixed-size where the dimension is fixed). BYTES are binary. This is the
layout ``serving score`` reads, so a log can be scored again by another version."""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import numpy as np
import pyarrow as pa

from serving.codecs import numpy_dtype
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]


def row_dims(spec: TensorSpec) -> tuple[int, ...]:
    """The dimensions of one row as columns hold them: a ``[1]`` row is one plain value."""
    return () if spec.shape in ((), (1,)) else spec.shape


def arrow_type(spec: TensorSpec) -> pa.DataType:
    typ: pa.DataType = pa.binary() if spec.datatype == "BYTES" else pa.from_numpy_dtype(numpy_dtype(spec.datatype))
    for d in reversed(row_dims(spec)):
        typ = pa.list_(typ, d) if d > 0 else pa.list_(typ)
    return typ


class Scratch:
    """Memory one thread reuses for the columns of every table it builds. A new array for each
    file's column made the writer fault in fresh pages for most rows it wrote. A table built in
    it is valid until the next one is built in it."""

    def __init__(self) -> None:
        self._buffers: list[Array] = []
        self._next = 0

    def start(self) -> None:
        """A new table: its columns may take the memory of the last one's."""
        self._next = 0

    def array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
        nbytes = math.prod(shape) * dtype.itemsize
        if self._next == len(self._buffers):
            self._buffers.append(np.empty(0, np.uint8))
        if self._buffers[self._next].nbytes < nbytes:
            self._buffers[self._next] = np.empty(nbytes, np.uint8)
        self._next += 1
        return self._buffers[self._next - 1][:nbytes].view(dtype).reshape(shape)


def column(spec: TensorSpec, parts: list[Array | None], rows: list[int], scratch: Scratch | None = None) -> pa.Array:
    """One column from the batches of several requests (``None``: a request without this tensor,
    its ``rows`` rows are null). Runs of batches of one shape are converted together; in
    ``scratch``'s memory when given."""
    typ = arrow_type(spec)
    if parts and all(map(operator.is_not, parts, itertools.repeat(None))):  # no Python step a row
        try:  # the usual case, one shape: numpy checks that the rows match as it concatenates
            return _convert(_concatenated(parts, sum(rows), scratch), spec, typ)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            pass
    chunks: list[pa.Array] = []
    run: list[Array] = []
    for part, n in zip(parts, rows):
        if part is not None and run and part.shape[1:] != run[0].shape[1:]:
            chunks.append(_convert(np.concatenate(run), spec, typ))
            run = []
        if part is None:
            if run:
                chunks.append(_convert(np.concatenate(run), spec, typ))
                run = []
            chunks.append(pa.nulls(n, typ))
        else:
            run.append(part)
    if run:
        chunks.append(_convert(np.concatenate(run) if len(run) > 1 else run[0], spec, typ))
    return pa.concat_arrays(chunks) if len(chunks) != 1 else chunks[0]


def chunked_column(spec: TensorSpec, chunks: list[Array]) -> pa.ChunkedArray:
    """One column of the rows of ``chunks`` (batches of rows), one chunk each, without a copy."""
    typ = arrow_type(spec)
    return pa.chunked_array([_convert(chunk, spec, typ) for chunk in chunks], typ)


def _concatenated(parts: list[Array], rows: int, scratch: Scratch | None) -> Array:
    if len(parts) == 1:
        return parts[0]
    if scratch is None or parts[0].dtype.kind == "O":
        return np.concatenate(parts)
    return np.concatenate(parts, out=scratch.array((rows, *parts[0].shape[1:]), parts[0].dtype))


def _convert(values: Array, spec: TensorSpec, typ: pa.DataType) -> pa.Array:
    n = len(values)
    dims = row_dims(spec)
    if spec.datatype == "BYTES":
        flat = pa.array(
            [v.encode() if isinstance(v, str) else bytes(v) for v in values.reshape(-1).tolist()], pa.binary()
        )
    else:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    if not dims:
        return flat
    actual = values.shape[1:]
    out: pa.Array = flat
    for i in range(len(dims) - 1, -1, -1):
        size = int(actual[i])
        if dims[i] > 0:
            out = pa.FixedSizeListArray.from_arrays(out, size)
        else:
            count = n * int(np.prod(actual[:i], dtype=np.int64))
            offsets = pa.array(np.arange(count + 1, dtype=np.int32) * size)
            out = pa.ListArray.from_arrays(offsets, out)
    return out.cast(typ) if out.type != typ else out
