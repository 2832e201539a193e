"""``POST /v2/models/{model}/feedback``'s body: ``[{"id": "<request id>", "label": <class or value>,
"row": <row of the request, default 0>}, ...]``, and its answer."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import InvalidInputError
from serving.lifecycle.evaluation import as_text
from serving.protocol import rest_v2
from serving.telemetry.requests import MAX_REQUEST_ID
from serving.types import FeedbackResult, Label

MAX_LABELS = 100_000
"""Labels in one call (a bigger file goes in several calls: ``serving feedback`` splits it)."""
KEYS = {"id", "label", "row"}


def labels_from_json(body: bytes) -> list[Label]:
    """The labels of a feedback body.

    Raises:
        InvalidInputError: not JSON, not a list of label objects, or a field of the wrong kind.
    """
    doc = rest_v2.json_value(body)
    if not isinstance(doc, list):
        raise InvalidInputError('feedback body must be a JSON list: [{"id": "<request id>", "label": ...}, ...]')
    if len(doc) > MAX_LABELS:
        raise InvalidInputError(f"feedback body holds {len(doc)} labels; at most {MAX_LABELS} per call")
    return [_label(i, item) for i, item in enumerate(doc)]


def _label(i: int, item: Any) -> Label:
    if not isinstance(item, dict):
        raise InvalidInputError(f"feedback item {i} must be an object with id and label")
    unknown = sorted(set(item) - KEYS)
    if unknown:
        raise InvalidInputError(f"feedback item {i}: unknown keys {unknown} (allowed: id, label, row)")
    request_id, label, row = item.get("id"), item.get("label"), item.get("row", 0)
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise InvalidInputError(f"feedback item {i}: id must be a request id (a string of 1..{MAX_REQUEST_ID})")
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise InvalidInputError(f"feedback item {i}: label must be a string or a number")
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < 2**31:
        raise InvalidInputError(f"feedback item {i}: row must be a whole number >= 0")
    text = str(as_text(np.asarray([label], dtype=object))[0])
    for what, value in (("id", request_id), ("label", text)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"feedback item {i}: {what} is not valid Unicode text (a lone surrogate)") from None
    return Label(request_id, text, row)


def result_json(result: FeedbackResult) -> dict[str, int]:
    return {"received": result.received, "matched": result.matched, "unmatched": result.unmatched}
