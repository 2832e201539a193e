"""A ``ModelInferRequest`` as ModelInfer reads it: its fields, and its raw tensor bytes left where
they arrived.

protobuf's parse copies each ``raw_input_contents`` entry into its arena, and reading the field
copies it again into a new ``bytes``: two copies of every tensor before numpy views it (~20 us
for a [64, 784] FP32 request of 200 KB, in-process; more in a server whose caches the client and
the model share). Every protobuf library writes fields in field-number order, so the raw contents
(field 7, the last) close the message: for a large request, the fields before them are parsed
as usual and each raw content becomes a view of the received bytes. A message laid out any other
way is parsed whole, as before, so the result is the same for every input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.protocol._pb import inference_pb2 as pb

RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_LENGTH_DELIMITED = 2
_RAW_TAG = (RAW_INPUT_CONTENTS << 3) | _LENGTH_DELIMITED
VIEWS_FROM_BYTES = 16 * 1024
"""Smaller requests are parsed whole: finding the raw contents in Python costs ~2-3 us, more
than copying a few kilobytes (measured: a batch-1 [1, 784] request, 3.3 us whole against 5.0
found; [16, 784], 3.6 against 2.6)."""


@dataclass(frozen=True, slots=True)
class InferMessage:
    message: pb.ModelInferRequest
    """The request's fields (without its raw contents when those are views)."""
    raw: Sequence[bytes | memoryview]
    """Its ``raw_input_contents``, in order."""

    @classmethod
    def of(cls, request: pb.ModelInferRequest) -> InferMessage:
        return cls(request, request.raw_input_contents)


def parse_infer_request(data: bytes) -> InferMessage:
    """Parse a serialized ``ModelInferRequest``.

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a valid message.
    """
    if len(data) >= VIEWS_FROM_BYTES:
        found = _raw_at_the_end(data)
        if found is not None:
            fields, raw = found
            return InferMessage(pb.ModelInferRequest.FromString(fields), raw)
    return InferMessage.of(pb.ModelInferRequest.FromString(data))


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i]`` and the index after it.

    Raises:
        IndexError: the data ends inside it.
        ValueError: longer than 64 bits.
    """
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _raw_at_the_end(data: bytes) -> tuple[bytes, list[memoryview]] | None:
    """The bytes of the fields before the raw contents (a copy: names, shapes and parameters, a
    few hundred bytes), and each raw content as a view, when the raw contents are the message's
    last fields; None for any other layout, and for bytes that do
    not parse this far (the whole parse then decides)."""
    view = memoryview(data)
    raw: list[memoryview] = []
    start: int | None = None
    i, end = 0, len(data)
    try:
        while i < end:
            tag, at = read_varint(data, i)
            if tag & 7 != _LENGTH_DELIMITED:  # every field of ModelInferRequest is
                return None
            length, at = read_varint(data, at)
            if at + length > end:
                return None
            if tag == _RAW_TAG:
                if start is None:
                    start = i
                raw.append(view[at : at + length])
            elif start is not None:  # a field after the raw contents
                return None
            i = at + length
    except (IndexError, ValueError):
        return None
    if start is None:
        return None
    return data[:start], raw
