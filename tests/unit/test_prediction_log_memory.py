"""The memory the log keeps: copies of the inputs in blocks it reuses (never the transport's
buffers), and the writer's columns built in memory it reuses."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from serving.config.prediction_log import PredictionLogConfig
from serving.prediction_log.columns import Scratch
from serving.prediction_log.records import LoggedRequest, LogStream
from serving.prediction_log.row_blocks import BLOCK_BYTES, RowBlocks, row_blocks
from serving.prediction_log.writer import Pending, PredictionLog, build_table
from serving.telemetry.metrics import MemoryMetrics
from serving.types import TensorSpec

F32 = np.dtype(np.float32)


def test_rows_are_copied_into_a_block_and_the_block_is_reused_once_no_copy_is_left() -> None:
    blocks = RowBlocks((4,), F32, max_bytes=1e6)
    first = blocks.copy(np.ones((2, 4), np.float32))
    second = blocks.copy(np.full((1, 4), 2, np.float32))
    assert first.base is second.base  # one block
    assert first.tolist() == [[1.0] * 4] * 2 and second.tolist() == [[2.0] * 4]
    block = id(first.base)  # (an id: a reference would keep the block busy)
    blocks.copy(np.zeros((blocks.rows - 3, 4), np.float32))  # fills it
    busy = blocks.copy(np.zeros((1, 4), np.float32))  # the first block still has copies: a new one
    assert id(busy.base) != block
    del first, second
    for _ in range(blocks.rows):  # fills the second block; the next takes the first again
        last = blocks.copy(np.zeros((1, 4), np.float32))
    assert id(last.base) == block


def test_rows_of_another_shape_or_datatype_or_too_many_get_a_copy_of_their_own() -> None:
    blocks = RowBlocks((4,), F32, max_bytes=1e6)
    for values in (np.ones((1, 5), np.float32), np.ones((1, 4), np.float64), np.ones((blocks.rows + 1, 4), F32)):
        copy = blocks.copy(values)
        assert copy.base is None and not np.shares_memory(copy, values) and np.array_equal(copy, values)


def test_the_log_keeps_copies_of_the_inputs_not_the_transports_buffer(tmp_path: Path) -> None:
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path)), (TensorSpec("x", "FP32", (3,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    payload = bytearray(np.arange(3, dtype=np.float32).tobytes())  # as a front end hands it over
    x = np.frombuffer(payload, np.float32).reshape(1, 3)
    request = LoggedRequest("r", time.time_ns(), "latest", None, 1, 1, {"x": x}, {"y": np.ones((1, 1), np.float32)})
    log = PredictionLog(MemoryMetrics())
    log.offer(stream, request)
    assert request.inputs is not None and not np.shares_memory(request.inputs["x"], x)
    payload[:] = bytes(len(payload))  # the transport reuses its buffer
    log.close()
    assert ds.dataset(tmp_path).to_table().column("x").to_pylist() == [[0.0, 1.0, 2.0]]


def test_a_table_built_in_scratch_memory_equals_one_built_without(tmp_path: Path) -> None:
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path)), (TensorSpec("x", "FP32", (3,)),),
        (TensorSpec("y", "INT64", (1,)),),
    )  # fmt: skip
    rng = np.random.default_rng(0)

    def request(name: str) -> LoggedRequest:
        x, y = rng.random((2, 3), np.float32), rng.integers(0, 9, (2, 1))
        return LoggedRequest(name, 0, "latest", None, 1, 2, {"x": x}, {"y": y})

    def pending(k: int) -> Pending:
        return Pending.of([request(f"{k}-{i}") for i in range(50)])

    scratch = Scratch()
    for k in range(3):  # the second and third reuse the first's memory
        rows = pending(k)
        assert build_table(stream, rows, scratch).to_pylist() == build_table(stream, rows).to_pylist()


def test_the_queue_bound_is_shared_between_the_inputs_by_the_size_of_their_rows() -> None:
    specs = (TensorSpec("a", "FP32", (768,)), TensorSpec("b", "FP32", (256,)), TensorSpec("s", "BYTES", (1,)))
    blocks = row_blocks(specs, {"a": "a", "b": "b", "s": "s"}, 64 * BLOCK_BYTES)
    assert set(blocks) == {"a", "b"}  # BYTES are copied one by one
    assert (blocks["a"].max_blocks - 2, blocks["b"].max_blocks - 2) == (48, 16)


def test_the_zstd_level_is_the_files_and_a_level_out_of_range_is_refused(tmp_path: Path) -> None:
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path), zstd_level=-1), (TensorSpec("x", "FP32", (3,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    log = PredictionLog(MemoryMetrics())
    x, y = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    log.offer(stream, LoggedRequest("r", time.time_ns(), "latest", None, 1, 1, {"x": x}, {"y": y}))
    log.close()
    (path,) = tmp_path.rglob("*.parquet")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert ds.dataset(tmp_path).to_table().column("x").to_pylist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValidationError):
        PredictionLogConfig(zstd_level=23)


def test_flush_returns_once_the_writer_threads_write_in_progress_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feedback flushes the log before it matches labels: rows the writer thread took just before
    (its write still going, to a slow destination here) must be in a file when flush returns."""
    import serving.prediction_log.writer as writer

    started = threading.Event()
    slow = writer.write_atomically

    def slow_write(*args: Any, **kwargs: Any) -> str:
        if threading.current_thread().name == "prediction-log":  # the writer thread's writes only
            started.set()
            time.sleep(0.5)
        return slow(*args, **kwargs)

    monkeypatch.setattr(writer, "write_atomically", slow_write)
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path), flush_rows=5), (TensorSpec("x", "FP32", (3,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    log = PredictionLog(MemoryMetrics())
    x, y = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    for i in range(7):  # five fill a batch the writer thread takes; two wait for the next
        log.offer(stream, LoggedRequest(f"r{i}", time.time_ns(), "latest", None, 1, 1, {"x": x}, {"y": y}))
        if i == 4:
            assert started.wait(5)
    log.flush()
    assert sorted(ds.dataset(tmp_path).to_table().column("request_id").to_pylist()) == [f"r{i}" for i in range(7)]
    log.close()
