"""Failing single rows of a batch: a model's ``"_errors"`` output.

A model (a ``model.py``, or a pipeline of them) may return, besides its declared outputs, an
output named ``"_errors"``: one entry per row, ``None`` (or ``""``) for a good row and a message
for a bad one. The values of its other outputs on bad rows are ignored. Online, a request with
a bad row fails alone with 400 / INVALID_ARGUMENT and the row's message, while the other
requests of the same batch are answered; in ``serving score`` the bad rows go to ``_errors``
with their message, and the others are scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import InvalidInputError, ModelOutputError

ROW_ERRORS = "_errors"
"""The output name a model fails single rows with."""

Arrays = dict[str, np.ndarray[Any, Any]]


def checked_row_errors(value: Any, rows: int, where: str) -> np.ndarray[Any, Any]:
    """A model's ``"_errors"`` as an object array of ``rows`` entries: None or a non-empty message.

    Raises:
        ModelOutputError: not one entry per row, or an entry that is neither None nor a string.
    """
    try:
        items = list(value)
    except TypeError:
        raise ModelOutputError(f"{where}: {ROW_ERRORS} must be a list with one entry per row") from None
    if len(items) != rows:
        raise ModelOutputError(f"{where}: {ROW_ERRORS} has {len(items)} entries for {rows} rows")
    out = np.empty(rows, dtype=np.object_)
    for i, item in enumerate(items):
        if item is None or item == "":
            out[i] = None
        elif isinstance(item, str):
            out[i] = item
        else:
            raise ModelOutputError(f"{where}: {ROW_ERRORS}[{i}] is {type(item).__name__}, not a message or None")
    return out


def failed_rows(outputs: Arrays) -> dict[int, str]:
    """The rows a model failed: row index -> message (empty when it failed none)."""
    errors = outputs.get(ROW_ERRORS)
    if errors is None:
        return {}
    return {i: str(m) for i, m in enumerate(errors) if m is not None}


def raise_for_failed_rows(outputs: Arrays, model: str) -> None:
    """Fail a request one of whose rows the model failed.

    Raises:
        InvalidInputError: naming the first failed rows and their messages.
    """
    failed = failed_rows(outputs)
    if not failed:
        return
    shown = "; ".join(f"row {i}: {m}" for i, m in list(failed.items())[:5])
    more = f" (and {len(failed) - 5} more rows)" if len(failed) > 5 else ""
    raise InvalidInputError(f"model {model!r} refused {len(failed)} row(s): {shown}{more}")
