from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from serving import codecs

from adapter_support import MAX_REQUEST_BYTES, identity_values
from models import IDENTITY_TYPES


def identity_body(binary: bool) -> tuple[bytes, dict[str, str]]:
    inputs, blobs = [], []
    for dt in IDENTITY_TYPES:
        arr = identity_values(dt)
        item: dict[str, Any] = {"name": f"in_{dt.lower()}", "datatype": dt, "shape": list(arr.shape)}
        if binary:
            blob = codecs.to_raw(arr, dt)
            blobs.append(blob)
            item["parameters"] = {"binary_data_size": len(blob)}
        else:
            item["data"] = codecs.to_list(arr, dt)
        inputs.append(item)
    doc = {"id": "req-1", "inputs": inputs, "parameters": {"binary_data_output": binary}}
    header = json.dumps(doc).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"inference-header-content-length": str(len(header))}


def parse_response(response: httpx.Response) -> dict[str, np.ndarray[Any, Any]]:
    length = response.headers.get("inference-header-content-length")
    body = response.content
    header = json.loads(body[: int(length)] if length else body)
    offset = int(length) if length else 0
    out = {}
    for o in header["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            out[o["name"]] = codecs.from_raw(o["datatype"], o["shape"], body[offset : offset + size], o["name"])
            offset += size
        else:
            out[o["name"]] = codecs.from_list(o["datatype"], o["shape"], o["data"], o["name"])
    return out


async def test_health_and_server_metadata(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/health/live")).json() == {"live": True}
    assert (await http.get("/v2/health/ready")).json() == {"ready": True}
    md = (await http.get("/v2")).json()
    assert md["name"] == "serving"
    assert {"binary_tensor_data", "model_configuration", "statistics", "model_repository"} <= set(md["extensions"])


async def test_model_metadata_config_and_version_selection(http: httpx.AsyncClient) -> None:
    md = (await http.get("/v2/models/add")).json()
    assert md["versions"] == ["3", "2"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert (await http.get("/v2/models/add/versions/2/ready")).json() == {"name": "add", "ready": True}
    cfg = (await http.get("/v2/models/add/config")).json()
    assert cfg["max_batch_size"] == 16
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    newest = (await http.post("/v2/models/add/infer", json=body)).json()
    assert newest["model_version"] == "3" and newest["outputs"][0]["data"] == [3, 3, 3, 3]
    older = (await http.post("/v2/models/add/versions/2/infer", json=body)).json()
    assert older["model_version"] == "2" and older["outputs"][0]["data"] == [2, 2, 2, 2]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_every_datatype_round_trips(http: httpx.AsyncClient, binary: bool) -> None:
    body, headers = identity_body(binary)
    response = await http.post("/v2/models/identity/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert ("inference-header-content-length" in response.headers) == binary
    outputs = parse_response(response)
    assert (
        json.loads(
            response.content[: int(response.headers.get("inference-header-content-length", len(response.content)))]
        )["id"]
        == "req-1"
    )
    for dt in IDENTITY_TYPES:
        np.testing.assert_array_equal(outputs[f"out_{dt.lower()}"], identity_values(dt))


async def test_requested_outputs_and_per_output_binary(http: httpx.AsyncClient) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    response = await http.post("/v2/models/add/infer", json=body)
    out = parse_response(response)
    np.testing.assert_array_equal(out["y"], np.arange(8, dtype=np.float32).reshape(2, 4) + 3)


@pytest.mark.parametrize("binary", [False, True])
async def test_classification_answers_the_top_classes(http: httpx.AsyncClient, binary: bool) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 8, 0, 9, 1]}],
        "outputs": [{"name": "y", "parameters": {"classification": 2, "binary_data": binary}}],
    }
    r = await http.post("/v2/models/add/infer", json=body)
    assert r.status_code == 200, r.text
    y = parse_response(r)["y"]  # add v3: x + 3
    assert y.shape == (2, 2)
    assert [[bytes(v) for v in row] for row in y.tolist()] == [
        [b"7.000000:3", b"6.000000:2"],
        [b"12.000000:2", b"11.000000:0"],
    ]


async def test_classification_of_a_wide_output_answers_alike_off_the_event_loop(http: httpx.AsyncClient) -> None:
    wide = np.arange(5000, dtype=np.float32)[::-1].reshape(1, -1)  # past RANK_INLINE_VALUES: a thread ranks it
    inputs = []
    for dt in IDENTITY_TYPES:
        arr = wide if dt == "FP32" else identity_values(dt)[:1]
        inputs.append({"name": f"in_{dt.lower()}", "datatype": dt, "shape": list(arr.shape),
                       "data": codecs.to_list(arr, dt)})  # fmt: skip
    body = {"inputs": inputs, "outputs": [{"name": "out_fp32", "parameters": {"classification": 3}}]}
    r = await http.post("/v2/models/identity/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["4999.000000:0", "4998.000000:1", "4997.000000:2"]


async def test_repository_index_and_stats(http: httpx.AsyncClient) -> None:
    index = (await http.post("/v2/repository/index", json={})).json()
    assert {"name": "add", "version": "2", "state": "READY", "reason": ""} in index
    assert {r["name"] for r in index} == {"add", "identity", "identity_typed", "slow", "batched", "broken"}
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": [0] * 12}]}
    await http.post("/v2/models/add/infer", json=body)
    stats = (await http.get("/v2/models/add/versions/3/stats")).json()["model_stats"]
    assert stats[0]["inference_count"] == 3 and stats[0]["execution_count"] == 1
    assert stats[0]["inference_stats"]["success"]["count"] == 1
    assert stats[0]["batch_stats"][0]["batch_size"] == 3
    assert {s["name"] for s in (await http.get("/v2/models/stats")).json()["model_stats"]} >= {"add", "identity"}


GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def bad(**change: Any) -> dict[str, Any]:
    item = {**GOOD["inputs"][0], **change}
    return {"inputs": [item]}


ERROR_CASES: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("unknown model", "/v2/models/nope/infer", GOOD, {}, 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/add/versions/9/infer", GOOD, {}, 404, "no version 9"),
    ("version filtered by policy", "/v2/models/add/versions/1/infer", GOOD, {}, 404, "no version 1"),
    ("unknown alias", "/v2/models/add/versions/x/infer", GOOD, {}, 404, "has no version or alias"),
    ("wrong shape", "/v2/models/add/infer", bad(shape=[2, 2]), {}, 400, "expects [-1, 4]"),
    ("wrong datatype", "/v2/models/add/infer", bad(datatype="FP64"), {}, 400, "expects FP32"),
    ("unknown datatype", "/v2/models/add/infer", bad(datatype="FLOAT"), {}, 400, "unknown datatype"),
    ("data disagrees with shape", "/v2/models/add/infer", bad(data=[1, 2, 3]), {}, 400, "needs 4 elements"),
    ("string data for FP32", "/v2/models/add/infer", bad(data=["a", "b", "c", "d"]), {}, 400, "numbers"),
    (
        "extra input",
        "/v2/models/add/infer",
        {"inputs": [GOOD["inputs"][0], {**GOOD["inputs"][0], "name": "z"}]},
        {},
        400,
        "unexpected input 'z'",
    ),
    (
        "missing input",
        "/v2/models/identity/infer",
        {"inputs": [{"name": "in_fp32", "datatype": "FP32", "shape": [1, 1], "data": [1]}]},
        {},
        400,
        "missing input",
    ),
    ("no inputs", "/v2/models/add/infer", {"inputs": []}, {}, 400, "non-empty 'inputs'"),
    ("malformed JSON", "/v2/models/add/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("JSON array body", "/v2/models/add/infer", b"[1]", {}, 400, "JSON object"),
    ("unknown output", "/v2/models/add/infer", {**GOOD, "outputs": [{"name": "nope"}]}, {}, 400, "unknown output"),
    (
        "batch above max_batch_size",
        "/v2/models/add/infer",
        bad(shape=[17, 4], data=[0] * 68),
        {},
        400,
        "max_batch_size 16",
    ),
    (
        "header length beyond body",
        "/v2/models/add/infer",
        GOOD,
        {"inference-header-content-length": "99999"},
        400,
        "outside the body",
    ),
    (
        "header length not a number",
        "/v2/models/add/infer",
        GOOD,
        {"inference-header-content-length": "ten"},
        400,
        "must be an integer",
    ),
    (
        "binary size beyond body",
        "/v2/models/add/infer",
        bad(data=None, parameters={"binary_data_size": 16}),
        {"inference-header-content-length": "LEN"},
        400,
        "runs past",
    ),
    (
        "classification count not a positive integer",
        "/v2/models/add/infer",
        {**GOOD, "outputs": [{"name": "y", "parameters": {"classification": 0}}]},
        {},
        400,
        "classification must be a positive integer",
    ),
    (
        "model failing its batch",
        "/v2/models/broken/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]},
        {},
        500,
        "internal error",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
async def test_error_rows_then_a_success(
    http: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str], status: int, message: str
) -> None:
    if isinstance(body, dict) and body.get("inputs") and body["inputs"][0].get("data", 0) is None:
        body = {"inputs": [{k: v for k, v in body["inputs"][0].items() if k != "data"}]}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    if headers.get("inference-header-content-length") == "LEN":
        headers = {"inference-header-content-length": str(len(content))}
    response = await http.post(path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    ok = await http.post("/v2/models/add/infer", json=GOOD)
    assert ok.status_code == 200


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v2/models/add/infer", content=b" " * (MAX_REQUEST_BYTES + 1))
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


async def test_unknown_route_and_method_answer_json_errors(http: httpx.AsyncClient) -> None:
    r = await http.get("/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()
    r = await http.get("/v2/models/add/infer")
    assert r.status_code == 405 and "error" in r.json()


async def test_unknown_model_metadata_and_readiness(http: httpx.AsyncClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/config", "/v2/models/nope/stats"):
        r = await http.get(path)
        assert r.status_code == 404, path
        message = r.json()["error"]
        assert message.startswith("unknown model 'nope'; served: "), message
        assert {"'add'", "'identity'", "'slow'"} <= set(message.split("served: ")[1].split(", "))
