"""A request checked against the model version it goes to: its inputs (names, datatypes, shapes,
finite values), the outputs it asks for, and when its answer is due. Offline scoring applies the
same per-row rules (``codecs.check_finite``), so online and offline agree on a valid row."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving import codecs
from serving.codecs import shape_matches
from serving.errors import InvalidInputError
from serving.model_instance import ModelInstance
from serving.types import InferenceRequest, Tensor

MAX_TIMEOUT_US = 24 * 3600 * 1_000_000
"""The largest V2 ``timeout`` parameter accepted (a day, in microseconds)."""


def request_deadline(request: InferenceRequest, start_ns: int) -> float | None:
    """When the answer is due (``time.monotonic()``): the transport's deadline, or the V2
    ``timeout`` parameter (microseconds from arrival), whichever comes first.

    Raises:
        InvalidInputError: a ``timeout`` that is not a positive integer.
    """
    timeout = request.parameters.get("timeout")
    deadline = request.deadline_s
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT_US:
            raise InvalidInputError(
                f"parameter 'timeout' must be a positive integer of microseconds (at most {MAX_TIMEOUT_US}), "
                f"got {str(timeout)[:32]!r}"
            )
        by_timeout = start_ns / 1e9 + timeout / 1e6
        deadline = by_timeout if deadline is None else min(deadline, by_timeout)
    return deadline


def check_inputs(mv: ModelInstance, tensors: list[Tensor]) -> dict[str, np.ndarray[Any, Any]]:
    """Match request tensors to the model's declared inputs.

    Raises:
        InvalidInputError: a missing, extra or duplicated input, a wrong datatype or shape,
            or batch sizes that differ between inputs.
    """
    specs = {s.name: s for s in mv.inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for t in tensors:
        spec = specs.get(t.name)
        if spec is None:
            raise InvalidInputError(f"unexpected input {t.name!r} for model {mv.name!r}; expected {sorted(specs)}")
        if t.name in arrays:
            raise InvalidInputError(f"input {t.name!r} given more than once")
        if t.datatype != spec.datatype:
            raise InvalidInputError(
                f"input {t.name!r} has datatype {t.datatype}, model {mv.name!r} expects {spec.datatype}"
            )
        shape = t.shape
        declared = mv.wire_shape(spec)
        ok = shape_matches(shape, declared) and (not mv.max_batch_size or shape[0] >= 1)
        if not ok:
            raise InvalidInputError(
                f"input {t.name!r} has shape {list(shape)}, model {mv.name!r} expects {declared}"
                + (f" (first dimension is the batch, 1..{mv.max_batch_size})" if mv.max_batch_size else "")
            )
        codecs.check_finite(t.data, f"input {t.name!r}")
        arrays[t.name] = t.data
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise InvalidInputError(f"missing input(s) {missing} for model {mv.name!r}")
    if mv.max_batch_size:
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) > 1:
            raise InvalidInputError(f"inputs disagree on the batch dimension: {sorted(sizes)}")
    return arrays


def check_outputs(mv: ModelInstance, request: InferenceRequest) -> list[str]:
    """The output names to return (all when the request names none).

    Raises:
        InvalidInputError: an unknown or duplicated output name.
    """
    known = [s.name for s in mv.outputs]
    if not request.outputs:
        return known
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInputError(f"unknown output(s) {unknown} for model {mv.name!r}; outputs are {known}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"output requested more than once: {names}")
    return names
