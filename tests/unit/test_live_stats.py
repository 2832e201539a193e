from __future__ import annotations

from typing import Any

from serving.telemetry.live import STALE_AFTER_S, RecentErrors, summarize
from serving.telemetry.metrics import BATCH_SIZE, QUEUE_DEPTH, REQUEST_SECONDS, REQUESTS, AggregatedMetrics


def replica(
    name: str, now: float, requests: int, failed: int, queue: float, errors: list[dict[str, Any]]
) -> dict[str, Any]:
    m = AggregatedMetrics()
    labels = {"model": "m", "version": "1", "protocol": "http"}
    m.inc(REQUESTS, {**labels, "outcome": "ok"}, requests - failed)
    m.inc(REQUESTS, {**labels, "outcome": "invalid_input"}, failed)
    for _ in range(requests):
        m.observe(REQUEST_SECONDS, labels, 0.002)
    m.observe(BATCH_SIZE, {"model": "m", "version": "1"}, 4)
    m.set(QUEUE_DEPTH, {"model": "m", "version": "1"}, queue)
    return {"replica": name, "node": "n", "time": now, "metrics": m.snapshot(), "errors": errors}


def test_replicas_are_summed_per_version_and_stale_ones_left_out() -> None:
    now = 1000.0
    e1 = {"time": now - 1, "model": "m", "version": "1", "kind": "invalid_input", "message": "a", "request_id": "r1"}
    e2 = {"time": now - 0.5, "model": "m", "version": "1", "kind": "invalid_input", "message": "b", "request_id": "r2"}
    doc = summarize(
        [
            replica("a", now - 0.5, 10, 1, 2, [e1]),
            replica("b", now - 1.0, 5, 0, 3, [e2]),
            replica("gone", now - STALE_AFTER_S - 1, 100, 100, 50, []),
        ],
        now=now,
    )
    assert [r["replica"] for r in doc["replicas"]] == ["a", "b"]
    (m,) = doc["models"]
    assert (m["requests"], m["failures"], m["queue_depth"]) == (15, 1, 5)
    assert sum(m["latency_buckets"]) == 15 and abs(m["latency_sum"] - 15 * 0.002) < 1e-9
    assert (m["batches"], m["batch_rows"]) == (2, 8)
    assert [e["request_id"] for e in doc["errors"]] == ["r2", "r1"]  # newest first, across replicas


def test_recent_errors_keep_the_last_ones_and_no_payload() -> None:
    errors = RecentErrors(size=3)
    for i in range(5):
        errors.add("m", "1", "grpc", "invalid_input", "x" * 1000, f"id{i}")
    items = errors.items()
    assert [e["request_id"] for e in items] == ["id2", "id3", "id4"]
    assert len(items[0]["message"]) == 500
