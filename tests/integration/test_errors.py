"""Every error row of the protocol table over both transports, each followed by a success,
against the real server (a Ray Serve replica serving its own ports)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from conftest_values import MAX_REQUEST_BYTES
from server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def post(server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_serving(server: ServerProcess) -> None:
    status, body = post(server, "/v2/models/add/infer", json.dumps(GOOD).encode())
    assert status == 200, body
    assert body["outputs"][0]["data"] == [4, 5, 6, 7]


def with_input(**change: Any) -> bytes:
    return json.dumps({"inputs": [{**GOOD["inputs"][0], **change}]}).encode()


HTTP_CASES = [
    ("unknown model", "/v2/models/nope/infer", json.dumps(GOOD).encode(), {}, 404, "unknown model"),
    ("unknown version", "/v2/models/add/versions/7/infer", json.dumps(GOOD).encode(), {}, 404, "no version 7"),
    ("wrong shape", "/v2/models/add/infer", with_input(shape=[2, 2]), {}, 400, "expects [-1, 4]"),
    ("wrong datatype", "/v2/models/add/infer", with_input(datatype="INT32"), {}, 400, "expects FP32"),
    (
        "missing input",
        "/v2/models/add/infer",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "name": "q"}]}).encode(),
        {},
        400,
        "unexpected input",
    ),
    (
        "extra input",
        "/v2/models/add/infer",
        json.dumps({"inputs": [GOOD["inputs"][0], {**GOOD["inputs"][0], "name": "q"}]}).encode(),
        {},
        400,
        "unexpected input 'q'",
    ),
    ("malformed JSON", "/v2/models/add/infer", b'{"inputs": [{"name": "x",', {}, 400, "not valid JSON"),
    ("data disagrees with shape", "/v2/models/add/infer", with_input(data=[1, 2]), {}, 400, "needs 4 elements"),
    (
        "header length disagrees",
        "/v2/models/add/infer",
        json.dumps(GOOD).encode(),
        {"Inference-Header-Content-Length": "4096"},
        400,
        "outside the body",
    ),
    (
        "binary size disagrees",
        "/v2/models/add/infer",
        json.dumps(GOOD).encode() + b"\0" * 8,
        {"Inference-Header-Content-Length": str(len(json.dumps(GOOD)))},
        400,
        "binary section has 8 bytes",
    ),
    ("oversized payload", "/v2/models/add/infer", b" " * (MAX_REQUEST_BYTES + 10), {}, 413, "exceeds the limit"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
def test_http_error_then_success(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    code, doc = post(server, path, body, headers)
    assert code == status, doc
    assert set(doc) == {"error"} and message in doc["error"]
    assert_serving(server)


def grpc_infer(
    server: ServerProcess,
    model: str = "add",
    version: str = "",
    shape: tuple[int, ...] = (1, 4),
    datatype: str = "FP32",
    name: str = "x",
) -> Any:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    arr = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.int32)
    inp = tgrpc.InferInput(name, list(shape), datatype)
    inp.set_data_from_numpy(arr)
    return client.infer(model, [inp], model_version=version)


GRPC_CASES = [
    ("unknown model", {"model": "nope"}, "StatusCode.NOT_FOUND", "unknown model"),
    ("unknown version", {"version": "7"}, "StatusCode.NOT_FOUND", "no version 7"),
    ("wrong shape", {"shape": (2, 2)}, "StatusCode.INVALID_ARGUMENT", "expects [-1, 4]"),
    ("wrong datatype", {"datatype": "INT32"}, "StatusCode.INVALID_ARGUMENT", "expects FP32"),
    ("extra input", {"name": "q"}, "StatusCode.INVALID_ARGUMENT", "unexpected input 'q'"),
]


@pytest.mark.parametrize(("change", "status", "message"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES])
def test_grpc_error_then_success(server: ServerProcess, change: dict[str, Any], status: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(server, **change)
    assert info.value.status() == status
    assert message in info.value.message()
    assert grpc_infer(server).as_numpy("y").shape == (1, 4)
    assert_serving(server)


def test_grpc_malformed_protobuf_then_success(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\xff\xff\xff\xff\x0f not protobuf", timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_infer(server).as_numpy("y").shape == (1, 4)


def test_grpc_oversized_message_then_success(server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(server, shape=(2_000_000, 4))
    assert info.value.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT")
    assert grpc_infer(server).as_numpy("y").shape == (1, 4)


def test_overload_answers_503_and_unavailable_quickly_then_recovers(server: ServerProcess) -> None:
    """The slow model queues at most 2 requests: a burst gets 503 / UNAVAILABLE, not a hang."""
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.0] * 1024}]}
    ).encode()
    with ThreadPoolExecutor(12) as pool:
        http_codes = list(pool.map(lambda _: post(server, "/v2/models/slow/infer", body), range(12)))

    def grpc_call(_: int) -> str:
        try:
            grpc_infer(server, model="slow", shape=(1, 1024))
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    with ThreadPoolExecutor(12) as pool:
        grpc_codes = list(pool.map(grpc_call, range(12)))
    assert {c for c, _ in http_codes} <= {200, 503}
    assert 503 in {c for c, _ in http_codes}
    assert all("queue is full" in d["error"] for c, d in http_codes if c == 503)
    assert set(grpc_codes) <= {"OK", "StatusCode.UNAVAILABLE"}
    assert "StatusCode.UNAVAILABLE" in grpc_codes
    assert_serving(server)
    assert grpc_infer(server, model="slow", shape=(1, 1024)).as_numpy("y").shape == (1, 1024)


def test_http_get_errors(server: ServerProcess) -> None:
    for path, code in (("/v2/models/nope", 404), ("/v2/models/add/versions/1/ready", 404), ("/v2/not/a/route", 404)):
        try:
            urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10)
            raise AssertionError(f"{path} answered 200")
        except urllib.error.HTTPError as e:
            assert e.code == code, path
            assert "error" in json.loads(e.read())
