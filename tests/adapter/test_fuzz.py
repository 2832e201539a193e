"""Hostile input, generated: V2 JSON requests of any structure, the binary tensor extension with
inconsistent sizes and headers, and malformed or semantically absurd protobuf over gRPC. The
invariant for every example: an answer (never a hang), a 4xx (501 for an unsupported datatype)
with ``{"error": ...}`` or a success over HTTP, a status other than INTERNAL/UNKNOWN over gRPC;
and the server answers a good request afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serving.config.server import MAX_REQUEST_BYTES
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol.grpc_frontends import GrpcFrontEnd
from serving.protocol.http import build_http_app
from serving.service.local import LocalInferenceService

from adapter_support import start_grpc
from models import add_model, identity_model

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]  # fmt: skip
NAMES = ["x", "in_fp32", "in_bytes", "in_bool", "in_int64", "in_fp16", "in_uint8", "y", ""]
ROUTES = ["/v2/models/add/infer", "/v2/models/identity/infer", "/v2/models/identity/versions/1/infer",
          "/v2/models/add/versions/3/infer"]  # fmt: skip
HTTP_OK = {200, 400, 404, 405, 413, 501, 503, 504}
ANSWER_TIMEOUT_S = 5.0
"""A hang detector, not a speed assertion: an example that gets no answer at all fails."""

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=40
)
shapes = st.lists(
    st.one_of(st.integers(min_value=-3, max_value=8), st.sampled_from([0, 2**31, 2**40, 2**63 - 1, -(2**63)])),
    max_size=5,
)
edge_numbers = st.sampled_from([0, -1, 1, 255, 256, 65535, 2**31 - 1, -(2**31), 2**63 - 1, 2**64, -(2**64), 1e308,
                                -1e308, 5e-324, float("nan"), float("inf"), True, False, "1", None])  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if draw(st.booleans()) or True:
        t["name"] = draw(st.sampled_from(NAMES) | st.text(max_size=6))
    if draw(st.integers(0, 9)):
        t["datatype"] = draw(st.sampled_from(DATATYPES) | st.text(max_size=5))
    if draw(st.integers(0, 9)):
        t["shape"] = draw(shapes | json_values)
    if draw(st.integers(0, 9)):
        t["data"] = draw(
            st.lists(edge_numbers, max_size=12) | json_values | st.lists(st.lists(edge_numbers, max_size=4), max_size=4)
        )
    if draw(st.booleans()):
        t["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "timeout", "x"]),
                                               edge_numbers | json_values, max_size=3))  # fmt: skip
    return t


@st.composite
def v2_requests(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=3) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES) | json_values}), max_size=3) | json_values
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["timeout", "binary_data_output", "z"]), edge_numbers | json_values, max_size=3
            )
        )
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    return doc


IDENTITY = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
            "BYTES"]  # fmt: skip


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """Requests the identity model almost accepts: the right names and datatypes, every
    datatype's edge values, shapes that agree with the data or are one off."""
    datatype = draw(st.sampled_from(IDENTITY))
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(0, 4))
    n = rows * cols + draw(st.sampled_from([0, 0, 0, 1, -1]))
    valid: dict[str, st.SearchStrategy[Any]] = {
        "BOOL": st.booleans(),
        "BYTES": st.text(max_size=4),
        "FP16": st.floats(width=16),
        "FP32": st.floats(width=32),
        "FP64": st.floats(),
    }
    for kind, bits in (
        ("INT", 8),
        ("INT", 16),
        ("INT", 32),
        ("INT", 64),
        ("UINT", 8),
        ("UINT", 16),
        ("UINT", 32),
        ("UINT", 64),
    ):
        low = -(2 ** (bits - 1)) if kind == "INT" else 0
        valid[f"{kind}{bits}"] = st.integers(low, 2 ** (bits - 1 if kind == "INT" else bits) - 1)
    values = edge_numbers if draw(st.integers(0, 3)) == 0 else valid[datatype]
    data = draw(st.lists(values, min_size=max(n, 0), max_size=max(n, 0)))
    nested = draw(st.booleans()) and n == rows * cols and cols > 0
    tensor = {"name": f"in_{datatype.lower()}", "datatype": datatype, "shape": [rows, cols],
              "data": [data[i * cols : (i + 1) * cols] for i in range(rows)] if nested else data}  # fmt: skip
    doc: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": f"out_{datatype.lower()}", "parameters": {"binary_data": draw(st.booleans())}}]
    return doc | {"_model": f"id_{datatype.lower()}"}


class Harness:
    """One event loop for every example: the service, its ASGI app and a gRPC server (the compiled front end) on it."""

    def __init__(self, repository: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.service = LocalInferenceService.from_repository(repository)
        self.app = build_http_app(self.service, max_request_bytes=MAX_REQUEST_BYTES, admin=self.service.admin)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://fuzz")
        self.server, self.channel = self.run(self._start_grpc())

    async def _start_grpc(self) -> tuple[GrpcFrontEnd, grpc.aio.Channel]:
        server, target = await start_grpc(self.service)
        return server, grpc.aio.insecure_channel(target)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, ANSWER_TIMEOUT_S))

    def post(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.run(self.http.post(path, content=content, headers=headers or {}))  # type: ignore[no-any-return]

    def grpc_raw(self, method: str, payload: bytes) -> grpc.StatusCode:
        call = self.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")

        async def go() -> grpc.StatusCode:
            try:
                await call(payload, timeout=ANSWER_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return self.run(go())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.http.aclose())
        self.run(self.channel.close())
        self.run(self.server.stop(None))
        self.run(self.service.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("fuzz-repo")
    identity_model(root)
    for datatype in IDENTITY:  # one input each: near-valid requests reach the model
        identity_model(root, f"id_{datatype.lower()}", types=(datatype,))
    add_model(root, version_policy={"latest": 2})
    h = Harness(root)
    yield h
    good = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    assert h.post("/v2/models/add/infer", good.encode()).status_code == 200  # still serving
    h.close()


def assert_client_error(r: httpx.Response) -> None:
    event(f"HTTP {r.status_code}")
    assert r.status_code in HTTP_OK, (r.status_code, r.text[:300])
    if r.status_code != 200:
        body = r.json()
        assert isinstance(body.get("error"), str) and body["error"], r.text[:300]


@FUZZ
@given(route=st.sampled_from(ROUTES), doc=v2_requests())
def test_v2_json_requests_of_any_shape_get_a_4xx_or_an_answer(harness: Harness, route: str, doc: Any) -> None:
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    assert_client_error(harness.post(route, body, {"content-type": "application/json"}))


@FUZZ
@given(doc=near_valid())
def test_every_datatype_edge_values_near_valid_requests(harness: Harness, doc: dict[str, Any]) -> None:
    model = doc.pop("_model")
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    assert_client_error(harness.post(f"/v2/models/{model}/infer", body, {"content-type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_arbitrary_bodies(harness: Harness, raw: bytes) -> None:
    assert_client_error(harness.post("/v2/models/identity/infer", raw))


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    inputs = draw(st.lists(tensors(), min_size=1, max_size=3))
    payloads = []
    for t in inputs:
        t.pop("data", None)
        raw = draw(st.binary(max_size=64))
        size = draw(st.sampled_from(["exact", "short", "long", "negative", "huge", "text", "missing"]))
        values = {"exact": len(raw), "short": max(len(raw) - 1, 0), "long": len(raw) + 3, "negative": -4,
                  "huge": 2**62, "text": "12", "missing": None}  # fmt: skip
        if values[size] is not None:
            t["parameters"] = {**t.get("parameters", {}), "binary_data_size": values[size]}
        payloads.append(raw)
    header = json.dumps({"inputs": inputs}, allow_nan=True).encode()
    body = header + b"".join(payloads) + draw(st.binary(max_size=8))
    length = draw(st.sampled_from(["exact", "zero", "negative", "past", "text", "short"]))
    values = {"exact": str(len(header)), "zero": "0", "negative": "-5", "past": str(len(body) + 10),
              "text": "abc", "short": str(max(len(header) - 3, 1))}  # fmt: skip
    return body, {"inference-header-content-length": values[length], "content-type": "application/octet-stream"}


@FUZZ
@given(route=st.sampled_from(ROUTES), request=binary_requests())
def test_binary_extension_with_inconsistent_sizes_and_headers(
    harness: Harness, route: str, request: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = request
    assert_client_error(harness.post(route, body, headers))


def _varint(n: int) -> bytes:
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


@st.composite
def infer_messages(draw: st.DrawFn) -> bytes:
    """Real ModelInferRequest messages with absurd field values, sometimes truncated or with junk appended."""
    tensors_ = []
    for _ in range(draw(st.integers(0, 3))):
        t = pb.ModelInferRequest.InferInputTensor(
            name=draw(st.sampled_from(NAMES) | st.text(max_size=5)),
            datatype=draw(st.sampled_from(DATATYPES) | st.text(max_size=5)),
            shape=draw(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4)),
        )
        kind = draw(st.sampled_from(["fp32", "int64", "bytes", "bool", "none"]))
        if kind == "fp32":
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=10)))
        elif kind == "int64":
            t.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=10)))
        elif kind == "bytes":
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=5)))
        elif kind == "bool":
            t.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=10)))
        tensors_.append(t)
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["add", "identity", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "3", "-1", "x"])),
        inputs=tensors_,
        raw_input_contents=draw(st.lists(st.binary(max_size=40), max_size=3)),
    )
    if draw(st.booleans()):
        msg.parameters["timeout"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    data = msg.SerializeToString()
    cut = draw(st.sampled_from(["whole", "truncated", "junk", "bad-length"]))
    if cut == "truncated" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif cut == "junk":
        data += draw(st.binary(max_size=16))
    elif cut == "bad-length":  # field 3 (inputs), length-delimited, with a length past the end
        data = b"\x1a" + _varint(draw(st.integers(0, 2**63))) + data
    return data


@FUZZ
@given(payload=infer_messages() | st.binary(max_size=120) | st.binary(max_size=8).map(lambda b: b"\xff" * 10 + b))
def test_grpc_model_infer_with_malformed_or_absurd_protobuf(harness: Harness, payload: bytes) -> None:
    code = harness.grpc_raw("ModelInfer", payload)
    event(f"gRPC {code.name}")
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code


@FUZZ
@given(
    method=st.sampled_from(
        [
            "ModelMetadata",
            "ModelReady",
            "ModelConfig",
            "ModelStatistics",
            "RepositoryIndex",
            "ServerMetadata",
            "ServerLive",
        ]
    ),
    payload=st.binary(max_size=60),
)
def test_grpc_other_rpcs_with_arbitrary_bytes(harness: Harness, method: str, payload: bytes) -> None:
    code = harness.grpc_raw(method, payload)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code


def _v2(data: Any, shape: Any = (1, 4), datatype: str = "FP32", name: str = "x", **extra: Any) -> bytes:
    doc = {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": data}], **extra}
    return json.dumps(doc).encode()


DEEP = 100_000
# Requests at the extremes of depth, width, length and count that hypothesis's default strategies
# never reach; each is invalid and must get a 4xx with a reason (found from outside: the first
# two answered 500 with a RecursionError, NaN / Infinity / 1e400 were served as numbers).
EXTREMES: dict[str, bytes] = {
    "arrays nested 100k deep": b'{"inputs":' + b"[" * DEEP + b"]" * DEEP + b"}",
    "objects nested 100k deep": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "data nested 900 deep": _v2(json.loads("[" * 900 + "1" + "]" * 900)),
    "parameters nested 500 deep": b'{"parameters":{"p":' + b"[" * 500 + b"]" * 500 + b"}," + _v2([1, 2, 3, 4])[1:],
    "NaN token": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[NaN,1,2,3]}]}',
    "Infinity token": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,-Infinity,2,3]}]}',
    "1e400 (a standard literal that overflows to inf)": _v2([1, 2, 3, 4]).replace(b"[1, 2, 3, 4]", b"[1e400, 2, 3, 4]"),
    "an integer of 5,000 digits": _v2([1, 2, 3, 4]).replace(b"[1, 2, 3, 4]", b"[" + b"9" * 5000 + b", 2, 3, 4]"),
    "INT64 beyond 2**63": _v2([10**30, 1, 2, 3], datatype="INT64"),
    "a lone surrogate in BYTES": b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1,1],"data":["\\ud800"]}]}',
    "shape of 2**62 x 2**62": _v2([1, 2, 3, 4], shape=(2**62, 2**62)),
    "shape of 100k dimensions": _v2([1], shape=(1,) * 100_000),
    "shape with a 400-digit number": _v2([1, 2, 3, 4]).replace(b"[1, 4]", b"[" + b"9" * 400 + b", 4]"),
    "20,000 inputs": json.dumps(
        {
            "inputs": [
                {"name": f"x{i}", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]} for i in range(20_000)
            ]
        }
    ).encode(),
    "a 500 kB input name": _v2([1, 2, 3, 4], name="x" * 500_000),
    "binary_data_size of 10**30": json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 10**30}}]}
    ).encode(),
    "timeout of 10**40 us": _v2([1, 2, 3, 4], parameters={"timeout": 10**40}),
    "UTF-16 body": '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'.encode("utf-16"),
}


@pytest.mark.parametrize("case", list(EXTREMES))
def test_requests_at_the_extremes_get_a_4xx_with_a_reason(harness: Harness, case: str) -> None:
    r = harness.post("/v2/models/add/infer", EXTREMES[case], {"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert isinstance(error, str) and 0 < len(error) <= 2_000, (case, len(error))


def _grpc_infer(*inputs: tuple[str, str, list[int], Any], raw: list[bytes] | None = None) -> bytes:
    msg = pb.ModelInferRequest(model_name="add")
    for name, datatype, shape, values in inputs:
        t = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        if values is not None:
            t.contents.fp32_contents.extend(values)
    msg.raw_input_contents.extend(raw or [])
    return msg.SerializeToString()


GRPC_EXTREMES: dict[str, bytes] = {
    "NaN in fp32_contents": _grpc_infer(("x", "FP32", [1, 4], [float("nan"), 1, 2, 3])),
    "inf in raw_input_contents": _grpc_infer(
        ("x", "FP32", [1, 4], None), raw=[np.array([[1, np.inf, 2, 3]], np.float32).tobytes()]
    ),
    "20,000 inputs": _grpc_infer(*((f"x{i}", "FP32", [1, 4], [1, 2, 3, 4]) for i in range(20_000))),
    "shape of 100k dimensions": _grpc_infer(("x", "FP32", [1] * 100_000, [1.0])),
    "shape of 2**62 x 2**62": _grpc_infer(("x", "FP32", [2**62, 2**62], [1, 2, 3, 4])),
    "unknown groups nested 100k deep": b"\x0b" * DEEP + b"\x0c" * DEEP,
    "a 1 MB input name": _grpc_infer(("x" * 1_000_000, "FP32", [1, 4], [1, 2, 3, 4])),
}


@pytest.mark.parametrize("case", list(GRPC_EXTREMES))
def test_grpc_requests_at_the_extremes_are_invalid_argument(harness: Harness, case: str) -> None:
    code = harness.grpc_raw("ModelInfer", GRPC_EXTREMES[case])
    too_large = len(GRPC_EXTREMES[case]) > MAX_REQUEST_BYTES
    assert code is (grpc.StatusCode.RESOURCE_EXHAUSTED if too_large else grpc.StatusCode.INVALID_ARGUMENT), (case, code)
