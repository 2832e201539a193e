"""Unmodified tritonclient (HTTP and gRPC) against the running server, on every demo model."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from serving.demo import digits_data

from server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

DEMO = [("digits", "1"), ("digits", "2"), ("digits_torch", "1")]


@pytest.fixture(scope="module")
def rows() -> np.ndarray[Any, Any]:
    x, _ = digits_data()
    return x[:7]


def direct(repository: Path, model: str, version: str, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """The same artifact run straight through onnxruntime or torch, one intra-op thread as
    the server runs it (so reductions happen in the same order and answers are bit-equal)."""
    folder = repository / model / version
    if (folder / "model.onnx").exists():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        probs, label = sess.run(["probabilities", "label"], {"input": x})
        return {"probabilities": probs, "label": label}
    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(folder / "model.pt"))
    with torch.inference_mode():
        probs_t, label_t = module(torch.from_numpy(x))
    return {"probabilities": probs_t.numpy(), "label": label_t.numpy()}


def http_infer(server: ServerProcess, model: str, version: str, x: np.ndarray[Any, Any], binary: bool) -> Any:
    client = thttp.InferenceServerClient(server.http_url)
    inp = thttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    return client.infer(model, [inp], model_version=version, outputs=outs, request_id="r1")


def grpc_infer(server: ServerProcess, model: str, version: str, x: np.ndarray[Any, Any]) -> Any:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version, request_id="r1")


def test_health_and_server_metadata_both_protocols(server: ServerProcess) -> None:
    for client in (thttp.InferenceServerClient(server.http_url), tgrpc.InferenceServerClient(server.grpc_url)):
        assert client.is_server_live()
        assert client.is_server_ready()
    md = thttp.InferenceServerClient(server.http_url).get_server_metadata()
    assert md["name"] == "serving" and {"binary_tensor_data", "classification"} <= set(md["extensions"])
    gmd = tgrpc.InferenceServerClient(server.grpc_url).get_server_metadata()
    assert gmd.name == "serving"


@pytest.mark.parametrize(("model", "version"), DEMO)
def test_metadata_and_config_agree(server: ServerProcess, model: str, version: str) -> None:
    h = thttp.InferenceServerClient(server.http_url)
    g = tgrpc.InferenceServerClient(server.grpc_url)
    assert h.is_model_ready(model, version) and g.is_model_ready(model, version)
    hm = h.get_model_metadata(model, version)
    gm = g.get_model_metadata(model, version, as_json=True)
    assert hm["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in gm["inputs"]] == [
        ("input", "FP32", [-1, 64])
    ]
    assert {o["name"] for o in hm["outputs"]} == {"probabilities", "label"}
    hc = h.get_model_config(model, version)
    gc = g.get_model_config(model, version, as_json=True)["config"]
    assert hc["max_batch_size"] == int(gc["max_batch_size"]) == 64
    assert hc["input"][0]["dims"] == [64] and [int(d) for d in gc["input"][0]["dims"]] == [64]


@pytest.mark.parametrize(("model", "version"), DEMO)
def test_json_binary_and_grpc_answers_are_identical_and_match_the_runtime(
    server: ServerProcess, repository: Path, rows: np.ndarray[Any, Any], model: str, version: str
) -> None:
    expected = direct(repository, model, version, rows)
    answers = [
        http_infer(server, model, version, rows, binary=False),
        http_infer(server, model, version, rows, binary=True),
        grpc_infer(server, model, version, rows),
    ]
    assert answers[0].get_response()["model_version"] == version
    assert answers[2].get_response().model_version == version
    for answer in answers:
        np.testing.assert_array_equal(answer.as_numpy("probabilities"), expected["probabilities"])
        np.testing.assert_array_equal(answer.as_numpy("label"), expected["label"])
    first = answers[0].as_numpy("probabilities")
    for other in answers[1:]:
        assert other.as_numpy("probabilities").tobytes() == first.tobytes()


@pytest.mark.parametrize("version", ["1", "2"])
def test_class_count_answers_the_top_classes_with_their_labels(
    server: ServerProcess, repository: Path, rows: np.ndarray[Any, Any], version: str
) -> None:
    """Triton's classification extension as tritonclient asks for it (``class_count``): the top 3
    of ``probabilities`` per row, "value:index:label" with the labels of digits' model.yaml."""
    probs = direct(repository, "digits", version, rows)["probabilities"]
    expected = [[f"{p[i]:f}:{i}:{i}" for i in np.argsort(-p, kind="stable")[:3]] for p in probs]
    answers = []
    for binary in (False, True):
        inp = thttp.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=binary)
        out = thttp.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        client = thttp.InferenceServerClient(server.http_url)
        answers.append(client.infer("digits", [inp], model_version=version, outputs=[out]).as_numpy("probabilities"))
    ginp = tgrpc.InferInput("input", list(rows.shape), "FP32")
    ginp.set_data_from_numpy(rows)
    gout = tgrpc.InferRequestedOutput("probabilities", class_count=3)
    gclient = tgrpc.InferenceServerClient(server.grpc_url)
    answers.append(gclient.infer("digits", [ginp], model_version=version, outputs=[gout]).as_numpy("probabilities"))
    for answer in answers:
        assert answer.shape == (len(rows), 3)
        assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in answer.tolist()] == expected


def test_the_two_digits_versions_differ_and_latest_is_default(
    server: ServerProcess, rows: np.ndarray[Any, Any]
) -> None:
    v1 = grpc_infer(server, "digits", "1", rows).as_numpy("probabilities")
    v2 = grpc_infer(server, "digits", "2", rows).as_numpy("probabilities")
    default = grpc_infer(server, "digits", "", rows)
    assert not np.array_equal(v1, v2)
    np.testing.assert_array_equal(default.as_numpy("probabilities"), v2)
    assert default.get_response().model_version == "2"


def test_repository_index_lists_every_version(server: ServerProcess) -> None:
    index = thttp.InferenceServerClient(server.http_url).get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
        ("digits_torch", "1", "READY"),
    }
    gindex = tgrpc.InferenceServerClient(server.grpc_url).get_model_repository_index(as_json=True)
    assert {(m["name"], m["version"]) for m in gindex["models"]} >= {("digits", "1"), ("digits", "2")}


def test_concurrent_load_executes_batches_larger_than_one(server: ServerProcess) -> None:
    """Observed through the statistics extension, not assumed."""
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)

    def call(_: int) -> int:
        client = tgrpc.InferenceServerClient(server.grpc_url)
        inp = tgrpc.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(10):
            client.infer("batched", [inp])
        return 10

    def stats() -> dict[str, Any]:
        return thttp.InferenceServerClient(server.http_url).get_inference_statistics("batched")["model_stats"][0]

    def rows_by_batch(s: dict[str, Any]) -> dict[int, int]:
        return {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]}

    before = stats()  # other tests may have used the model: compare deltas
    g_before = int(
        tgrpc.InferenceServerClient(server.grpc_url)
        .get_inference_statistics("batched", as_json=True)["model_stats"][0]
        .get("inference_count", 0)
    )
    with ThreadPoolExecutor(16) as pool:
        sent = sum(pool.map(call, range(16)))
    after = stats()
    assert after["inference_count"] - before["inference_count"] == sent
    assert after["execution_count"] - before["execution_count"] < sent
    old, new = rows_by_batch(before), rows_by_batch(after)
    executed = {size: n - old.get(size, 0) for size, n in new.items() if n > old.get(size, 0)}
    assert max(executed) > 1
    assert sum(size * n for size, n in executed.items()) == sent
    gstats = tgrpc.InferenceServerClient(server.grpc_url).get_inference_statistics("batched", as_json=True)
    assert int(gstats["model_stats"][0]["inference_count"]) - g_before == sent
