"""Deadlines end to end: the V2 `timeout` parameter (microseconds) over HTTP and the client's
deadline over gRPC. A request whose deadline passes while it waits behind busy batches is
answered 504 / DEADLINE_EXCEEDED without the model running it, and is counted apart."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from metrics_scrape import scrape
from tritonclient.utils import InferenceServerException

from server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

ROWS = 16
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [ROWS, 256], "data": [0.1] * (ROWS * 256)}]}


def post(server: ServerProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/models/batched/infer", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def dropped(server: ServerProcess) -> float:
    return sum(
        s[2]
        for s in scrape(server.metrics_url)
        if s[0] == "ray_serving_deadline_dropped_requests_total" and s[1].get("model") == "batched"
    )


class Busy:
    """Full batches for the `batched` model from 6 threads: a queue of work for a while."""

    def __init__(self, server: ServerProcess, seconds: float = 4.0) -> None:
        self.codes: list[int] = []
        deadline = time.monotonic() + seconds

        def run() -> None:
            while time.monotonic() < deadline:
                self.codes.append(post(server, BODY)[0])

        self.threads = [threading.Thread(target=run) for _ in range(6)]
        for t in self.threads:
            t.start()
        time.sleep(0.5)  # the queue holds batches now

    def join(self) -> None:
        for t in self.threads:
            t.join(60)


def test_http_timeout_parameter_drops_a_queued_request_with_504(server: ServerProcess) -> None:
    before = dropped(server)
    busy = Busy(server)
    try:
        answers = [post(server, {**BODY, "parameters": {"timeout": 1000}}) for _ in range(5)]  # 1 ms
    finally:
        busy.join()
    # Behind full batches the 1 ms passes in the queue; a request that finds the model free
    # may still be answered within its 1 ms (200).
    assert {code for code, _ in answers} <= {200, 504}, answers
    assert any(code == 504 and "the model did not run it" in body["error"] for code, body in answers), answers
    assert set(busy.codes) == {200}  # the others were served
    deadline = time.monotonic() + 30
    while dropped(server) < before + 1:
        assert time.monotonic() < deadline, "deadline drops not counted"
        time.sleep(0.5)
    # A generous timeout changes nothing; a malformed one is a 400.
    assert post(server, {**BODY, "parameters": {"timeout": 30_000_000}})[0] == 200
    code, body = post(server, {**BODY, "parameters": {"timeout": "soon"}})
    assert code == 400 and "timeout" in body["error"]


def test_grpc_deadline_is_honoured_while_queued(server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(server.grpc_url)
    inp = tgrpc.InferInput("x", [ROWS, 256], "FP32")
    inp.set_data_from_numpy(np.full((ROWS, 256), 0.1, np.float32))
    busy = Busy(server)

    def call(_: int) -> str:
        try:
            client.infer("batched", [inp], client_timeout=0.002)
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    try:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(call, range(8)))
    finally:
        busy.join()
    assert "StatusCode.DEADLINE_EXCEEDED" in codes and set(codes) <= {"OK", "StatusCode.DEADLINE_EXCEEDED"}
    # and the server keeps serving
    assert client.infer("batched", [inp], client_timeout=30).as_numpy("y").shape == (ROWS, 256)
    client.close()
