"""Triton's classification extension: an output requested with ``parameters: {"classification": N}``
is answered with its N highest values instead of the tensor, as BYTES strings
``"<value>:<index>[:<label>]"``, highest first, one list per batch row (shape ``[batch, N]`` for a
model with a batch dimension, ``[N]`` otherwise; fewer than N where a row has fewer values).

As Triton does it (``src/classification.cc``): the values of a row are compared in the output's
own datatype, a float is printed as C's ``%f`` and an integer as it is, and the label is the
class name at that index (``labels:`` in model.yaml, used where the row has as many values as
there are labels). Ties keep the lower index first; NaN ranks below every number."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.codecs import quote
from serving.errors import InvalidInputError
from serving.types import RequestedOutput

Array = np.ndarray[Any, Any]

PARAMETER = "classification"
RANKED_DATATYPES = frozenset(
    ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
)


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


def ranked_outputs(outputs: list[RequestedOutput], datatypes: dict[str, str]) -> dict[str, int]:
    """The requested ``outputs`` asked for as classes, with how many each (their names checked).

    Raises:
        InvalidInputError: see :func:`requested_count`.
    """
    ranked: dict[str, int] = {}
    for o in outputs:
        if o.parameters and (count := requested_count(o.name, datatypes[o.name], o.parameters)) is not None:
            ranked[o.name] = count
    return ranked
