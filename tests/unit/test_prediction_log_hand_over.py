"""The compiled hand-over (``_hand_over.c``) against the Python it mirrors (``PredictionLog.hand_over``
with the Python ``RowBlocks``): the same requests give the same queue, the same wake-ups of the
writer, the same drops counted and the same files, whatever the requests hold."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest

from serving.config.prediction_log import PredictionLogConfig
from serving.prediction_log import compiled, row_blocks
from serving.prediction_log.records import LogStream
from serving.prediction_log.writer import PredictionLog
from serving.telemetry.metrics import MemoryMetrics
from serving.types import TensorSpec

pytestmark = pytest.mark.skipif(compiled.hand_over is None, reason="the compiled hand-over is not built here")

Arrays = dict[str, Any] | None
Offer = tuple[str, str, Arrays, Arrays, tuple[str, str] | None]
"""request id, route, inputs, outputs, failure."""

QUIET = {"flush_rows": 10**6, "flush_s": 3600.0}
"""Nothing is written before close(): the queue can be compared."""


@dataclass
class Scenario:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    offers: list[Offer]
    settings: dict[str, Any] = field(default_factory=dict)
    batched: bool = True


def f32(rows: int, width: int, value: float) -> np.ndarray[Any, Any]:
    return np.full((rows, width), value, np.float32)


def mixed_requests() -> list[Offer]:
    offers: list[Offer] = []
    for k in range(40):
        rows = k % 3 + 1
        inputs: Arrays = {"x": f32(rows, 4, k)}
        outputs: Arrays = {"y": np.full((rows, 1), k, np.int64)}
        failure = None
        if k % 7 == 3:  # failed in the model: inputs, no outputs
            outputs, failure = None, ("model_execution", f"boom {k}")
        if k % 11 == 5:  # failed before its inputs were read
            inputs, outputs, failure = None, None, ("invalid_input", "bad")
        offers.append((f"r{k:03d}", "latest" if k % 2 else "alias:prod", inputs, outputs, failure))
    return offers


def odd_requests(block_rows: int) -> list[Offer]:
    wide = np.arange(2 * 8, dtype=np.float32).reshape(2, 8)
    return [
        ("strided", "split", {"x": wide[:, ::2]}, {"y": np.ones((2, 1), np.int64)}, None),  # not contiguous
        ("float64", "split", {"x": np.ones((1, 4))}, {"y": np.ones((1, 1), np.int64)}, None),  # another datatype
        ("big", "split", {"x": f32(block_rows + 1, 4, 2)}, {"y": np.ones((block_rows + 1, 1), np.int64)}, None),
        ("extra", "split", {"x": f32(1, 4, 3), "z": np.ones((1, 2))}, {"y": np.ones((1, 1), np.int64)}, None),
        ("empty", "split", {"x": f32(0, 4, 0)}, {"y": np.ones((0, 1), np.int64)}, None),
        ("fill", "split", {"x": f32(block_rows - 1, 4, 5)}, {"y": np.ones((block_rows - 1, 1), np.int64)}, None),
        ("next", "split", {"x": f32(2, 4, 6)}, {"y": np.ones((2, 1), np.int64)}, None),  # a second block
    ]


X = (TensorSpec("x", "FP32", (4,)),)
Y = (TensorSpec("y", "INT64", (1,)),)
BLOCK_ROWS = row_blocks.BLOCK_BYTES // 16

SCENARIOS = {
    "mixed": Scenario(X, Y, mixed_requests()),
    "inputs only": Scenario(X, Y, mixed_requests(), {"keep": "inputs"}),
    "outputs only": Scenario(X, Y, mixed_requests(), {"keep": "outputs"}),
    "unbatched": Scenario(
        X, Y, [(f"u{k}", "latest", {"x": np.full(4, k, np.float32)}, {"y": np.array([k])}, None) for k in range(9)],
        batched=False,
    ),
    "bytes": Scenario(
        (TensorSpec("s", "BYTES", (1,)),), Y,
        [(f"b{k}", "latest", {"s": np.array([[b"a" * k]], dtype=object)}, {"y": np.ones((1, 1), np.int64)}, None)
         for k in range(6)],
    ),
    "odd inputs": Scenario(X, Y, odd_requests(BLOCK_ROWS)),
    "a full queue": Scenario(X, Y, mixed_requests(), {"queue_rows": 20}),
    "a full queue in bytes": Scenario(X, Y, mixed_requests(), {"queue_mb": 0.0004}),
    "a file's worth waits": Scenario(X, Y, mixed_requests(), {"flush_rows": 10}),
    "sampled": Scenario(X, Y, mixed_requests() * 3, {"sample_rate": 0.4}),
    "odd ids": Scenario(
        X, Y, [(rid, "latest", {"x": f32(1, 4, 1)}, {"y": np.ones((1, 1), np.int64)}, None)
               for rid in ("", "é", "\ud800", "x" * 10_000, "a\x00b")],
    ),
}  # fmt: skip


class Recorder:
    """A log and what its hand-over did: the writer's wake-ups counted, the writer thread held."""

    def __init__(self, destination: Path, use_compiled: bool) -> None:
        self.log = PredictionLog(MemoryMetrics())
        self.wakes = 0
        self.log._wake = self._wake  # type: ignore[method-assign]
        self.hand_over = self.log.hand_over_function(use_compiled)
        self.destination = destination

    def _wake(self) -> None:
        self.wakes += 1

    def offer(self, stream: LogStream, offers: list[Offer]) -> None:
        for request_id, route, inputs, outputs, failure in offers:
            self.hand_over(stream, request_id, route, time.monotonic_ns(), inputs, outputs, failure)


@pytest.fixture
def python_row_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Switches ``row_blocks`` between the compiled blocks and the Python ones."""

    def use(compiled_blocks: bool) -> None:
        monkeypatch.setattr(row_blocks, "compiled", compiled.hand_over if compiled_blocks else None)

    yield use


def queue_state(log: PredictionLog) -> list[dict[str, Any]]:
    """Everything the queue holds, comparable (times and latencies are when it ran)."""
    state = []
    for key, waiting in sorted(log._waiting.items()):
        p = waiting.pending
        tensors = {
            side: {
                name: [None if v is None else (v.dtype.str, v.shape, v.tolist()) for v in arrays]
                for name, arrays in sorted(getattr(p, side).items())
            }
            for side in ("inputs", "outputs")
        }
        copies_of_transport = [
            v.base is None or isinstance(v.base, np.ndarray)
            for arrays in p.inputs.values()
            for v in arrays
            if v is not None
        ]
        state.append({
            "key": key[1:], "rows": waiting.rows, "nbytes": waiting.nbytes, "waiting since": waiting.since > 0,
            "ids": p.request_ids, "routes": p.routes, "failures": p.failures, "rows each": p.rows,
            "nbytes each": p.nbytes, "tensors": tensors, "latencies >= 0": all(x >= 0 for x in p.latencies_ns),
            "times": len(p.times_ns), "copies": copies_of_transport,
        })  # fmt: skip
    return state


def written(destination: Path) -> list[dict[str, Any]]:
    if not destination.exists():
        return []
    table = ds.dataset(destination, partitioning="hive").to_table()
    rows = table.drop_columns(["time", "latency_ms", "date", "hour"]).to_pylist()
    return sorted(rows, key=lambda r: (r["request_id"], r["row"]))


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_compiled_hand_over_queues_writes_and_counts_what_the_python_one_does(
    tmp_path: Path, name: str, python_row_blocks: Callable[[bool], None]
) -> None:
    scenario = SCENARIOS[name]
    results = {}
    for kind in ("python", "compiled"):
        python_row_blocks(kind == "compiled")
        destination = tmp_path / kind
        config = PredictionLogConfig(destination=str(destination), **{**QUIET, **scenario.settings})
        stream = LogStream("m", "1", config, scenario.inputs, scenario.outputs, scenario.batched)
        recorder = Recorder(destination, kind == "compiled")
        recorder.offer(stream, scenario.offers)
        state = queue_state(recorder.log)
        blocks = {
            name: [r.tolist() for r in runs] if (runs := b.take_runs()) is not None else None
            for w in recorder.log._waiting.values() for name, b in (w.blocks or {}).items()
        }  # fmt: skip
        recorder.log.close()
        metrics = recorder.log.metrics
        assert isinstance(metrics, MemoryMetrics)
        results[kind] = (state, recorder.wakes, blocks, metrics.values, written(destination))
    assert results["compiled"] == results["python"]
    state, wakes, _, counted, files = results["compiled"]
    assert wakes >= 1 and files  # not vacuous: something was queued, woke the writer and was written
    if "full" in name:
        assert any(key[0] == "serving_log_dropped_rows" and value > 0 for key, value in counted.items())


def test_new_settings_for_a_version_move_its_waiting_rows_to_a_new_queue_in_both(
    tmp_path: Path, python_row_blocks: Callable[[bool], None]
) -> None:
    """The compiled hand-over leaves a version without a queue for its settings to the Python
    (``hand_over``), which makes one and carries the waiting rows over."""
    results = {}
    for kind in ("python", "compiled"):
        python_row_blocks(kind == "compiled")
        destination = tmp_path / kind
        first = LogStream("m", "1", PredictionLogConfig(destination=str(destination), **QUIET), X, Y)
        second = LogStream("m", "1", PredictionLogConfig(destination=str(destination), queue_rows=500, **QUIET), X, Y)
        recorder = Recorder(destination, kind == "compiled")
        offers = mixed_requests()
        recorder.offer(first, offers[:20])
        recorder.offer(second, offers[20:])
        recorder.offer(first, offers[:2])  # the old settings again: a queue of their own again
        state = queue_state(recorder.log)
        recorder.log.close()
        results[kind] = (state, recorder.wakes, written(destination))
    assert results["compiled"] == results["python"]
    assert len(results["compiled"][2]) == sum(len(np.atleast_2d(o[2]["x"])) if o[2] else 1 for o in mixed_requests() + mixed_requests()[:2])  # fmt: skip


def test_a_stopped_log_drops_and_counts_every_row_in_both(tmp_path: Path) -> None:
    counted = {}
    for use_compiled in (False, True):
        stream = LogStream("m", "1", PredictionLogConfig(destination=str(tmp_path / str(use_compiled))), X, Y)
        recorder = Recorder(tmp_path, use_compiled)
        recorder.offer(stream, mixed_requests()[:1])
        recorder.log.close()
        recorder.offer(stream, mixed_requests())
        metrics = recorder.log.metrics
        assert isinstance(metrics, MemoryMetrics)
        counted[use_compiled] = metrics.values
    rows = sum(len(o[2]["x"]) if o[2] else 1 for o in mixed_requests())
    assert counted[True] == counted[False]
    assert counted[True][("serving_log_dropped_rows", ("m", "1"))] == rows


def test_the_compiled_hand_over_refuses_what_it_cannot_take_and_lets_go_of_the_lock(tmp_path: Path) -> None:
    stream = LogStream("m", "1", PredictionLogConfig(destination=str(tmp_path), **QUIET), X, Y)
    log = PredictionLog(MemoryMetrics())
    hand_over: Any = log.hand_over_function()
    x, y = {"x": f32(1, 4, 1)}, {"y": np.ones((1, 1), np.int64)}
    with pytest.raises(TypeError, match="positional"):
        hand_over(stream, "r", "latest", 0, x)
    with pytest.raises(TypeError, match="positional"):
        hand_over(stream, "r", "latest", 0, x, y, failure=None)
    with pytest.raises(TypeError, match="dicts or None"):
        hand_over(stream, "r", "latest", 0, [1], y)
    hand_over(stream, "r0", "latest", 0, x, y)  # makes the version's queue
    waiting = log._waiting[stream.key]
    waiting.constants = (stream, "not a number", *waiting.constants[2:])
    with pytest.raises(TypeError):
        hand_over(stream, "r1", "latest", 0, x, y)
    assert not log._lock.locked()
    assert waiting.pending.request_ids == ["r0"]  # nothing half added
    log.close()
