"""Triton's classification extension: an output requested with ``parameters: {"classification": N}``
is answered with its N highest values instead of the tensor, as BYTES strings
``"<value>:<index>[:<label>]"``, highest first, one list per batch row (shape ``[batch, N]`` for a
model with a batch dimension, ``[N]`` otherwise; fewer than N where a row has fewer values).

As Triton does it (``src/classification.cc``): the values of a row are compared in the output's
own datatype, a float is printed as C's ``%f`` and an integer as it is, and the label is the
class name at that index (``labels:`` in model.yaml, used where the row has as many values as
there are labels). Ties keep the lower index first; NaN ranks below every number."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving.codecs import DATATYPES, quote
from serving.errors import InvalidInputError
from serving.types import RequestedOutput, TensorSpec

Array = np.ndarray[Any, Any]

PARAMETER = "classification"
MAX_STRINGS = 65_536
"""Strings one answer may hold in all (rows x classes): each is made in Python on the event loop,
~0.3 us each (top 5 of 1,000 classes over 64 rows is 320)."""
RANK_INLINE_VALUES = 4_096
"""Above this many values an output is ranked off the event loop (64 rows of 10: 0.4 ms in all)."""
RANKED_DATATYPES = frozenset(DATATYPES) - {"BOOL", "BYTES"}
"""The integer and float datatypes: what has an order to rank by."""


def requested_count(name: str, datatype: str, parameters: dict[str, Any]) -> int | None:
    """How many classes the request asks for on output ``name`` (None: the tensor itself).

    Raises:
        InvalidInputError: not a positive integer, or an output that holds no numbers to rank.
    """
    count = parameters.get(PARAMETER)
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInputError(f"output {name!r}: classification must be a positive integer, got {quote(count)}")
    if datatype not in RANKED_DATATYPES:
        raise InvalidInputError(f"output {name!r} is {datatype}: classification ranks numbers only")
    return count


def top_classes(values: Array, count: int, batched: bool, labels: tuple[str, ...] | None) -> Array:
    """The ``count`` highest values of each row of ``values`` (each batch row when ``batched``,
    else the whole tensor), as an object array of ``bytes`` strings."""
    rows = values.reshape(len(values), -1) if batched and values.ndim else values.reshape(1, -1)
    width = rows.shape[1]
    k = min(count, width)
    nan = np.isnan(rows) if rows.dtype.kind == "f" else None
    keys = rows if nan is None else np.where(nan, -np.inf, rows)
    # Descending with ties in index order: a stable ascending sort of each row reversed, mapped back.
    order = width - 1 - np.argsort(keys[:, ::-1], axis=1, kind="stable")[:, ::-1]
    if nan is not None and nan.any():  # then each NaN after every number (-inf included)
        order = np.take_along_axis(order, np.argsort(np.take_along_axis(nan, order, 1), 1, kind="stable"), 1)
    order = order[:, :k]
    names = labels if labels is not None and len(labels) == width else None
    floats = rows.dtype.kind == "f"
    out = np.empty((len(rows), k), dtype=object)
    for r, (row, picked) in enumerate(zip(rows, order.tolist(), strict=True)):
        for j, i in enumerate(picked):
            value = f"{float(row[i]):f}" if floats else str(int(row[i]))
            text = f"{value}:{i}" if names is None else f"{value}:{i}:{names[i]}"
            out[r, j] = text.encode()
    return out if batched and values.ndim else out.reshape(k)


def ranked_outputs(outputs: list[RequestedOutput], specs: dict[str, TensorSpec], rows: int) -> dict[str, int]:
    """The requested ``outputs`` asked for as classes (their names checked), with how many each
    row answers: the count asked for, at most the values a row of the output declares. ``rows``:
    the request's rows (1 for a model without a batch dimension).

    Raises:
        InvalidInputError: see :func:`requested_count`; or more than ``MAX_STRINGS`` strings in all.
    """
    ranked: dict[str, int] = {}
    for o in outputs:
        if not o.parameters:
            continue
        spec = specs[o.name]
        count = requested_count(o.name, spec.datatype, o.parameters)
        if count is None:
            continue
        if all(d > 0 for d in spec.shape):  # a fixed row: never more classes than its values
            count = min(count, math.prod(spec.shape))
        if rows * count > MAX_STRINGS:
            raise InvalidInputError(
                f"output {o.name!r}: classification {count} over {rows} row(s) makes {rows * count} strings; "
                f"at most {MAX_STRINGS} an answer"
            )
        ranked[o.name] = count
    return ranked
