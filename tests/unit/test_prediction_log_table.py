"""The log's table and files from queued requests: row numbers, null tensors of failed requests,
batches of different shapes in one column, and a file per hour the requests span."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.config.prediction_log import PredictionLogConfig
from serving.prediction_log.columns import Scratch
from serving.prediction_log.records import LoggedRequest, LogStream
from serving.prediction_log.writer import Pending, PredictionLog, build_table, readable, row_numbers
from serving.telemetry.metrics import LOG_ROWS, MemoryMetrics
from serving.types import TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1,)),)
OUTPUTS = (TensorSpec("y", "INT64", (1,)),)


def request(request_id: str, time_s: float, x: np.ndarray | None, y: np.ndarray | None) -> LoggedRequest:
    rows = len(x) if x is not None else 1
    failure = None if y is not None else ("invalid_input", "no y")
    return LoggedRequest(request_id, int(time_s * 1e9), "latest", failure, 1_000_000, rows,
                         None if x is None else {"x": x}, None if y is None else {"y": y})  # fmt: skip


def stream(tmp_path: Path) -> LogStream:
    return LogStream("m", "1", PredictionLogConfig(destination=str(tmp_path), sample_rate=1.0), INPUTS, OUTPUTS)


def test_row_numbers_count_from_zero_within_each_request() -> None:
    assert row_numbers(np.array([1, 3, 2])).tolist() == [0, 0, 1, 2, 0, 1]
    assert row_numbers(np.array([1])).tolist() == [0]


def test_a_table_keeps_every_row_nulls_for_a_failed_request_and_mixed_widths(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.arange(4, dtype=np.float32).reshape(1, 4)  # a variable dimension: another width
    requests = [
        request("a", 10.0, a, np.array([[0], [1], [2]], np.int64)),
        request("f", 10.0, None, None),
        request("b", 10.0, b, np.array([[7]], np.int64)),
    ]
    table = build_table(stream(tmp_path), Pending.of(requests)).to_pylist()
    assert [(r["request_id"], r["row"]) for r in table] == [("a", 0), ("a", 1), ("a", 2), ("f", 0), ("b", 0)]
    assert [r["x"] for r in table] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], None, [0.0, 1.0, 2.0, 3.0]]
    assert [r["y"] for r in table] == [0, 1, 2, None, 7]


def test_the_same_rows_whether_converted_at_once_or_in_runs(tmp_path: Path) -> None:
    """Answered requests of a row each take the table's quick paths; one failed request among
    them sends every column through the general ones. The rows they share are the same."""
    xs = [np.full((1, 3), k, np.float32) for k in range(5)]
    ids = ["0", "1", "\u00e9t\u00e9", "\ud800 lone", "4"]  # not ASCII, and not even valid UTF-8
    whole = build_table(
        stream(tmp_path), Pending.of([request(ids[k], 0.0, x, np.array([[k]])) for k, x in enumerate(xs)])
    )
    mixed = [request(ids[k], 0.0, x, np.array([[k]])) for k, x in enumerate(xs)]
    mixed.insert(2, request("f", 0.0, None, None))
    runs = build_table(stream(tmp_path), Pending.of(mixed))
    assert whole.column("x").to_pylist() == [r for r in runs.column("x").to_pylist() if r is not None]
    assert whole.to_pylist() == [r for r in runs.to_pylist() if r["request_id"] != "f"]
    assert whole.column("request_id").to_pylist()[2:4] == ["\u00e9t\u00e9", "\\ud800 lone"]
    assert set(whole.column("status").to_pylist()) == {"ok"} and whole.column("error").null_count == 5


def test_requests_spanning_two_hours_go_to_a_file_each_in_their_hour(tmp_path: Path) -> None:
    metrics = MemoryMetrics()
    log = PredictionLog(metrics)
    s = stream(tmp_path)
    hour = 3600 * 490_000  # 2025-11-24 16:00 UTC
    for k, t in enumerate((hour - 1.0, hour + 0.5, hour - 0.5)):
        log.offer(s, request(f"r{k}", t, np.ones((1, 2), np.float32), np.array([[k]], np.int64)))
    log.close()
    files = sorted(p.relative_to(tmp_path).parent.as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["model=m/version=1/date=2025-11-24/hour=15", "model=m/version=1/date=2025-11-24/hour=16"]
    found = ds.dataset(tmp_path, partitioning="hive").to_table().to_pylist()
    assert sorted((r["request_id"], str(r["hour"]).zfill(2)) for r in found) == [
        ("r0", "15"),
        ("r1", "16"),
        ("r2", "15"),
    ]
    assert metrics.values[(LOG_ROWS.name, ("m", "1"))] == 3


def test_large_tensors_are_written_once_a_quarter_of_the_byte_bound_waits(tmp_path: Path) -> None:
    """Rows of large tensors fill ``queue_mb`` long before ``flush_rows``: the writer does not wait
    for either bound (or ``flush_s``) to be reached."""
    config = PredictionLogConfig(destination=str(tmp_path), flush_rows=10**6, flush_s=3600, queue_mb=0.1)
    s = LogStream("m", "1", config, INPUTS, OUTPUTS)
    log = PredictionLog(MemoryMetrics())
    try:
        x = np.zeros((1, 8000), np.float32)  # 32 kB: over a quarter of 100 kB
        log.offer(s, LoggedRequest("big", 0, "latest", None, 1_000_000, 1, {"x": x}, None, x.nbytes))
        deadline = time.monotonic() + 30
        while not list(tmp_path.rglob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(tmp_path.rglob("*.parquet"))) == 1
    finally:
        log.close()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),  # any id a client may send: lone surrogates included
            st.integers(1, 3),  # rows
            st.booleans(),  # answered
            st.sampled_from(["latest", "split", "alias:prod"]),
            st.integers(0, 2 * 3600 * 10**9),  # up to two hours apart
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([None, Scratch()]),
)
def test_every_column_holds_what_each_request_gave_whatever_the_mix(
    requests: list[tuple[str, int, bool, str, int]], scratch: Scratch | None
) -> None:
    """The table's quick paths (one answered row a request, ASCII ids) and its general ones agree
    with the rows written out one by one."""
    s = LogStream("m", "1", PredictionLogConfig(destination="unused"), (TensorSpec("x", "FP32", (2,)),), OUTPUTS)
    logged, expected = [], []
    for k, (rid, rows, answered, route, t) in enumerate(requests):
        x = np.arange(2 * rows, dtype=np.float32).reshape(rows, 2) + k
        y = np.arange(rows, dtype=np.int64).reshape(rows, 1) * k if answered else None
        failure = None if answered else ("invalid_input", f"bad {k}")
        logged.append(LoggedRequest(rid, t, route, failure, 1000 * k, rows, {"x": x}, None if y is None else {"y": y}))
        for r in range(rows):
            expected.append({
                "request_id": readable(rid), "row": r, "route": route, "status": "ok" if answered else "invalid_input",
                "error": None if answered else f"bad {k}", "latency_ms": k / 1000, "x": x[r].tolist(),
                "y": None if y is None else int(y[r, 0]), "time_us": t // 1000,
            })  # fmt: skip
    table = build_table(s, Pending.of(logged), scratch)
    got = table.to_pylist()
    times = table.column("time").cast("int64").to_pylist()
    assert [{**{k: v for k, v in row.items() if k != "time"}, "time_us": us} for row, us in zip(got, times)] == expected


def test_the_queue_keeps_each_tensor_aligned_with_its_requests_through_select_and_put_back() -> None:
    x = [np.full((1, 1), k, np.float32) for k in range(4)]
    requests = [request(f"r{k}", 0.0, x[k] if k != 1 else None, np.array([[k]])) for k in range(4)]
    pending = Pending.of(requests)
    assert pending.inputs["x"] == [x[0], None, x[2], x[3]] and len(pending.outputs["y"]) == 4
    later = Pending.of([LoggedRequest("r4", 0, "latest", None, 1, 1, {"z": x[0]}, None)])  # another tensor only
    both = pending.select([0, 1]) + later
    assert both.request_ids == ["r0", "r1", "r4"]
    assert both.inputs["x"] == [x[0], None, None] and both.inputs["z"] == [None, None, x[0]]
    assert both.outputs["y"][2] is None and pending.select(slice(2, 4)).inputs["x"] == [x[2], x[3]]
