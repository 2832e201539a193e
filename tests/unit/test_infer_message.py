"""ModelInfer's parse (raw contents as views of the received bytes) against protobuf's own parse
of the same bytes: the same fields and the same raw contents for any message, any layout of its
fields, and the same refusal for bytes that are not a message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol.grpc_v2 import to_core
from serving.protocol.infer_message import VIEWS_FROM_BYTES, parse_infer_request

texts = st.text(max_size=12)


@st.composite
def requests(draw: Any) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=draw(texts), model_version=draw(texts), id=draw(texts))
    for key in draw(st.lists(texts, max_size=2)):
        r.parameters[key].string_param = draw(texts)
    for i in range(draw(st.integers(0, 3))):
        t = r.inputs.add(name=f"in{i}", datatype="FP32", shape=[draw(st.integers(0, 5000))])
        t.parameters["p"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    for i in range(draw(st.integers(0, 2))):
        r.outputs.add(name=f"out{i}")
    for size in draw(st.lists(st.sampled_from([0, 1, 3, 4096, VIEWS_FROM_BYTES, 3 * VIEWS_FROM_BYTES]), max_size=3)):
        r.raw_input_contents.append(
            draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * max(1, size // 64)
        )
    return r


def fields_of(r: pb.ModelInferRequest) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(r)
    copy.ClearField("raw_input_contents")
    return copy


def assert_parsed_as_protobuf_does(data: bytes) -> None:
    expected = pb.ModelInferRequest.FromString(data)
    parsed = parse_infer_request(data)
    assert fields_of(parsed.message) == fields_of(expected)
    assert [bytes(r) for r in parsed.raw] == list(expected.raw_input_contents)


@settings(max_examples=200, deadline=None)
@given(requests())
def test_any_request_parses_as_protobuf_parses_it(request: pb.ModelInferRequest) -> None:
    assert_parsed_as_protobuf_does(request.SerializeToString())


@settings(max_examples=100, deadline=None)
@given(requests(), requests(), st.booleans())
def test_raw_contents_before_other_fields_or_between_them_parse_the_same(
    first: pb.ModelInferRequest, second: pb.ModelInferRequest, raw_first: bool
) -> None:
    """Concatenated messages merge (protobuf's rule): raw contents then fields, or fields, raw
    contents and fields again, are other layouts a client may send."""
    head = pb.ModelInferRequest(raw_input_contents=first.raw_input_contents) if raw_first else first
    assert_parsed_as_protobuf_does(head.SerializeToString() + second.SerializeToString())


def test_a_large_request_keeps_its_tensor_bytes_where_they_arrived() -> None:
    x = np.arange(64 * 784, dtype=np.float32).reshape(64, 784)
    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="input", datatype="FP32", shape=[64, 784])
    r.raw_input_contents.append(x.tobytes())
    data = r.SerializeToString()
    parsed = parse_infer_request(data)
    assert isinstance(parsed.raw[0], memoryview) and parsed.raw[0].obj is data  # no copy
    core = to_core(parsed)
    np.testing.assert_array_equal(core.inputs[0].data, x)
    assert not core.inputs[0].data.flags.writeable  # as numpy views of bytes always are


@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_damaged_bytes_are_refused_or_parsed_as_protobuf_does(request: pb.ModelInferRequest, data: Any) -> None:
    raw = bytearray(request.SerializeToString() + b"\x00" * VIEWS_FROM_BYTES)  # large enough to be split
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    for damaged in (bytes(raw), cut):
        try:
            pb.ModelInferRequest.FromString(damaged)
        except DecodeError:
            with pytest.raises(DecodeError):
                parse_infer_request(damaged)
        else:
            assert_parsed_as_protobuf_does(damaged)
