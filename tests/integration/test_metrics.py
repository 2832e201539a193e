"""Prometheus metrics of a running server, scraped from Ray's metrics agent (Ray mode) or the
standalone server's own endpoint, under the same names."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from metrics_scrape import delta, exported_names, metric_names_in_configs, scrape, settle, sums
from tritonclient.utils import InferenceServerException

from server_process import MODES, ServerProcess, mode_args

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

LABELS = ("model", "version", "protocol", "outcome")


def post(server: ServerProcess, path: str, body: bytes) -> int:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def add_body(shape: list[int]) -> bytes:
    n = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0] * n}]}).encode()


def grpc_infer(server: ServerProcess, version: str, shape: list[int]) -> grpc.StatusCode | None:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    inp = tgrpc.InferInput("x", shape, "FP32")
    inp.set_data_from_numpy(np.ones(shape, np.float32))
    try:
        client.infer("add", [inp], model_version=version)
    except InferenceServerException as exc:
        return exc.status()  # type: ignore[no-any-return]
    return None


def test_known_traffic_is_counted_exactly(server: ServerProcess) -> None:
    def read() -> dict:  # type: ignore[type-arg]
        return sums(scrape(server.metrics_url), LABELS)

    before = settle(read)
    assert [post(server, "/v2/models/add/infer", add_body([1, 4])) for _ in range(3)] == [200] * 3
    assert post(server, "/v2/models/add/versions/2/infer", add_body([2, 4])) == 200
    assert post(server, "/v2/models/add/infer", add_body([1, 3])) == 400
    assert post(server, "/v2/models/add/infer", b"{not json") == 400
    assert post(server, "/v2/models/not-a-model/infer", add_body([1, 4])) == 404
    assert post(server, "/v2/models/add/versions/9/infer", add_body([1, 4])) == 404
    assert post(server, "/v2/models/broken/infer", json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4}]}
    ).encode()) == 500  # fmt: skip
    assert grpc_infer(server, "", [1, 4]) is None
    assert grpc_infer(server, "", [1, 4]) is None
    assert grpc_infer(server, "", [1, 5]) is not None
    assert grpc_infer(server, "9", [1, 4]) is not None

    newest = "3"
    want = {
        ("add", newest, "http", "ok"): 3,
        ("add", "2", "http", "ok"): 1,
        ("add", newest, "http", "invalid_input"): 2,
        ("_unknown", "_unknown", "http", "not_found"): 1,
        ("add", "_unknown", "http", "not_found"): 1,
        ("broken", "1", "http", "internal"): 1,
        ("add", newest, "grpc", "ok"): 2,
        ("add", newest, "grpc", "invalid_input"): 1,
        ("add", "_unknown", "grpc", "not_found"): 1,
    }
    expected = {("ray_serving_requests_total", tuple(zip(LABELS, k))): float(v) for k, v in want.items()}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = {k: v for k, v in delta(read(), before).items() if k[0] == "ray_serving_requests_total"}
        if got == expected:
            break
        time.sleep(1)
    assert got == expected
    after = settle(read)
    latency = {
        k[1][:3]: v for k, v in delta(after, before).items() if k[0] == "ray_serving_request_duration_seconds_count"
    }
    per_request: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, n in want.items():
        key = tuple(zip(LABELS[:3], labels[:3]))
        per_request[key] = per_request.get(key, 0) + n
    assert latency == per_request
    rows = delta(after, before)
    batches = sum(v for k, v in rows.items() if k[0] == "ray_serving_batch_size_count" and ("model", "add") in k[1])
    assert 1 <= batches <= 3 + 1 + 2  # successful add requests, batched together or not


def test_overload_rejections_are_counted(server: ServerProcess) -> None:
    keep = ("model", "version", "protocol")

    def read() -> dict:  # type: ignore[type-arg]
        return sums(scrape(server.metrics_url), keep)

    before = settle(read)
    body = add_body([1, 1024])
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: post(server, "/v2/models/slow/infer", body), range(12)))
    rejected = codes.count(503)
    assert rejected > 0
    key = ("ray_serving_rejected_requests_total", (("model", "slow"), ("version", "1"), ("protocol", "http")))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and delta(read(), before).get(key) != rejected:
        time.sleep(1)
    assert delta(read(), before).get(key) == rejected


def test_every_metric_the_alerts_and_dashboard_use_is_exported(server: ServerProcess) -> None:
    probe = json.dumps({"id": "metrics-probe", **json.loads(add_body([1, 4]))}).encode()
    assert post(server, "/v2/models/add/infer", probe) == 200
    # A label for it: the live accuracy series exist once feedback matched a logged prediction.
    assert post(server, "/v2/models/add/feedback", b'[{"id": "metrics-probe", "label": 0}]') == 200
    used = metric_names_in_configs()
    assert {"ray_serving_requests_total", "ray_serving_request_duration_seconds_bucket"} <= used
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        missing = used - exported_names(scrape(server.metrics_url))
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"named in configs but not exported: {sorted(missing)}"


@pytest.mark.parametrize("mode", MODES)
def test_a_scrape_sums_every_replica_process(tmp_path: Path, mode: str) -> None:
    """Two replicas (Ray mode) or two workers (standalone), two processes on one node, share the
    ports (SO_REUSEPORT): new connections spread over both, and one scrape holds both."""
    from models import add_model

    repo = tmp_path / "repo"
    add_model(repo, versions=(1,), resources={"replicas": 2} if mode == "ray" else {})
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args(mode, 1 if mode == "ray" else 2))
    server.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: post(server, "/v2/models/add/infer", add_body([1, 4])), range(30)))
        assert codes == [200] * 30
        key = ("ray_serving_requests_total", (("model", "add"), ("outcome", "ok")))
        ready_key = ("ray_serving_model_ready", (("model", "add"), ("outcome", "")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples = scrape(server.metrics_url)
            totals = sums(samples, ("model", "outcome"))
            if totals.get(key) == 30 and totals.get(ready_key) == 2:
                break
            time.sleep(1)
        assert totals.get(key) == 30
        assert totals.get(ready_key) == 2  # each replica reports its own version as ready
        process = "WorkerId" if mode == "ray" else "worker"  # the label naming the process
        workers = {s[1].get(process) for s in samples if s[0] == "ray_serving_model_ready"}
        assert len(workers) == 2
        # Each request came on a new connection: the kernel gave some to each replica.
        served_by = {s[1].get(process) for s in samples if s[0] == "ray_serving_requests_total" and s[2] > 0}
        assert served_by == workers
    finally:
        assert server.stop() == 0, server.log()
