"""OpenTelemetry spans exported by the running server (OTLP/HTTP to a receiver in this process),
continuing the client's W3C traceparent; JSON logs carrying request and trace ids."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from otlp_receiver import OtlpReceiver, ReceivedSpan

from server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

ADD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]})


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def post(server: ServerProcess, path: str, body: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body.encode(), method="POST")
    for k, v in {"Content-Type": "application/json", **headers}.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def spans_of(otlp: OtlpReceiver, trace_id: str, done: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        spans = [s for s in otlp.snapshot() if s.trace_id == trace_id]
        if done(spans):
            return spans
        time.sleep(0.3)
    raise AssertionError(f"spans of trace {trace_id} incomplete: {[s.name for s in spans]}")


def check_chain(otlp: OtlpReceiver, trace_id: str, client_span: str, model: str) -> None:
    """request -> queue wait; batch (linked to the request) -> model run."""
    spans = spans_of(otlp, trace_id, lambda s: {"infer", "queue", "batch", "model.run"} <= {x.name for x in s})
    infer = next(s for s in spans if s.name == "infer")
    assert infer.parent_span_id == client_span
    assert infer.attributes["serving.model"] == model
    queue = next(s for s in spans if s.name == "queue")
    assert queue.parent_span_id == infer.span_id
    batch = next(s for s in spans if s.name == "batch")
    assert (trace_id, infer.span_id) in batch.links
    assert batch.attributes["serving.model"] == model
    assert batch.attributes["serving.batch_size"] >= 1
    run = next(s for s in spans if s.name == "model.run")
    assert run.parent_span_id == batch.span_id


def test_http_traceparent_continues_through_queue_batch_and_model(server: ServerProcess, otlp: OtlpReceiver) -> None:
    header, trace_id, span_id = traceparent()
    assert post(server, "/v2/models/add/infer", ADD, {"traceparent": header}) == 200
    check_chain(otlp, trace_id, span_id, "add")


def test_grpc_metadata_traceparent_continues(server: ServerProcess, otlp: OtlpReceiver) -> None:
    header, trace_id, span_id = traceparent()
    client = tgrpc.InferenceServerClient(server.grpc_url)
    inp = tgrpc.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.infer("add", [inp], headers={"traceparent": header})
    check_chain(otlp, trace_id, span_id, "add")


def test_a_batch_span_links_every_request_it_served(server: ServerProcess, otlp: OtlpReceiver) -> None:
    """16 concurrent requests to the `batched` model (2 ms fill window): each request's trace has a
    batch span, and every batch span links exactly the request spans of the requests it ran."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]})
    parents = [traceparent() for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda p: post(server, "/v2/models/batched/infer", body, {"traceparent": p[0]}), parents))
    assert codes == [200] * 16
    infer_spans = {}
    for _, trace_id, _ in parents:
        spans = spans_of(otlp, trace_id, lambda s: {"infer", "queue"} <= {x.name for x in s})
        infer_spans[trace_id] = next(s.span_id for s in spans if s.name == "infer")
    wanted = set(infer_spans.items())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batches = [s for s in otlp.snapshot() if s.name == "batch" and set(s.links) & wanted]
        if set().union(*(set(b.links) for b in batches)) >= wanted:
            break
        time.sleep(0.3)
    assert set().union(*(set(b.links) for b in batches)) >= wanted
    assert sum(b.attributes["serving.batch_requests"] for b in batches) == 16
    for b in batches:
        assert len(b.links) == b.attributes["serving.batch_requests"]
        assert b.attributes["serving.model"] == "batched"


def test_json_logs_carry_request_and_trace_ids_and_no_payload(server: ServerProcess) -> None:
    header, trace_id, _ = traceparent()
    marker = "31415.926"
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [float(marker)] * 4}]})
    assert post(server, "/v2/models/broken/infer", body, {"traceparent": header, "X-Request-ID": "req-logs-1"}) == 500
    deadline = time.monotonic() + 30
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        for raw in server.log_path.read_text(errors="replace").splitlines():
            start = raw.find('{"ts"')
            if start >= 0 and "req-logs-1" in raw:
                lines.append(json.loads(raw[start:]))
        time.sleep(0.5)
    assert lines, "no JSON log line with the request id"
    line = lines[0]
    assert line["request_id"] == "req-logs-1"
    assert line["trace_id"] == trace_id
    assert line["level"] == "error"
    assert marker not in json.dumps(lines)
