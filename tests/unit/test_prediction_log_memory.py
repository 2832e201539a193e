"""The memory the log keeps: copies of the inputs in blocks it reuses (never the transport's
buffers), and the writer's columns built in memory it reuses."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from serving.config.prediction_log import PredictionLogConfig
from serving.prediction_log import compiled
from serving.prediction_log.columns import Scratch
from serving.prediction_log.records import LoggedRequest, LogStream
from serving.prediction_log.row_blocks import BLOCK_BYTES, RowBlocks, row_blocks
from serving.prediction_log.writer import Pending, PredictionLog, build_table
from serving.telemetry.metrics import MemoryMetrics
from serving.types import TensorSpec

F32 = np.dtype(np.float32)
KINDS = [RowBlocks] + ([compiled.hand_over.RowBlocks] if compiled.hand_over is not None else [])


@pytest.fixture(params=KINDS, ids=lambda kind: "compiled" if kind is not RowBlocks else "python")
def kind(request: pytest.FixtureRequest) -> Any:
    """Each test of the blocks runs on the Python ``RowBlocks`` and on the compiled one."""
    return request.param


def test_rows_are_copied_into_a_block_and_the_block_is_reused_once_no_copy_is_left(kind: Any) -> None:
    blocks = kind((4,), F32, max_bytes=1e6)
    first = blocks.copy(np.ones((2, 4), np.float32))
    second = blocks.copy(np.full((1, 4), 2, np.float32))
    assert first.base is second.base  # one block
    assert first.tolist() == [[1.0] * 4] * 2 and second.tolist() == [[2.0] * 4]
    block = id(first.base)  # (an id: a reference would keep the block busy)
    blocks.copy(np.zeros((blocks.rows - 3, 4), np.float32))  # fills it
    busy = blocks.copy(np.zeros((1, 4), np.float32))  # the first block still has copies: a new one
    assert id(busy.base) != block
    del first, second
    for _ in range(blocks.rows):  # fills the second block: the first's rows are not taken yet
        last = blocks.copy(np.zeros((1, 4), np.float32))
    assert id(last.base) != block
    del busy, last
    blocks.take_runs()  # taken (for a file) and dropped: the next block is the first again
    for _ in range(blocks.rows):
        last = blocks.copy(np.zeros((1, 4), np.float32))
    assert id(last.base) == block


def test_the_rows_taken_are_runs_of_the_blocks_in_order_none_when_some_were_copied_outside(kind: Any) -> None:
    blocks = kind((4,), F32, max_bytes=1e6)
    batches = [np.full((k % 5 + 1, 4), k, np.float32) for k in range(2 * blocks.rows // 3)]  # spans blocks
    for b in batches[:10]:
        blocks.copy(b)
    first = blocks.take_runs()
    for b in batches[10:]:
        blocks.copy(b)
    rest = blocks.take_runs()
    assert first is not None and rest is not None and len(rest) > 1
    for runs, part in ((first, batches[:10]), (rest, batches[10:])):
        assert all(r.base is not None for r in runs)  # views of the blocks, not copies
        assert np.array_equal(np.concatenate(runs), np.concatenate(part))
    assert blocks.take_runs() == []  # nothing since
    blocks.copy(np.ones((1, 4), np.float32))
    blocks.copy(np.ones((1, 5), np.float32))  # another shape: a copy of its own
    assert blocks.take_runs() is None
    blocks.copy(np.ones((1, 4), np.float32))
    assert [r.tolist() for r in blocks.take_runs() or []] == [[[1.0] * 4]]


def test_the_files_hold_every_input_row_across_blocks_and_a_request_without_inputs(tmp_path: Path) -> None:
    """Columns of input runs (no copy), and of each request's rows where the runs do not cover a
    file's rows (a request that failed before its inputs were read), are the rows offered."""
    width = BLOCK_BYTES // 4 // 50  # 50 rows a block
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path), flush_rows=120), (TensorSpec("x", "FP32", (width,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    log = PredictionLog(MemoryMetrics())
    expected: list[list[float] | None] = []
    for k in range(400):
        rows = k % 3 + 1
        x = np.full((rows, width), k, np.float32)
        inputs: dict[str, Any] | None = {"x": x}
        if k == 250:
            inputs = None  # failed before its inputs were read
        log.offer(stream, LoggedRequest(f"r{k:04d}", time.time_ns(), "latest", None, 1, rows, inputs,
                                        {"y": np.zeros((rows, 1), np.float32)}))  # fmt: skip
        expected += [None] * rows if inputs is None else [[float(k)] * width] * rows
    log.close()
    table = ds.dataset(tmp_path).to_table().sort_by([("request_id", "ascending"), ("row", "ascending")])
    got = table.column("x").to_pylist()
    assert len(got) == len(expected) and got == expected


def test_rows_of_another_shape_or_datatype_or_too_many_get_a_copy_of_their_own(kind: Any) -> None:
    blocks = kind((4,), F32, max_bytes=1e6)
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


def test_a_table_of_input_runs_equals_one_of_each_requests_rows_and_copies_nothing(tmp_path: Path, kind: Any) -> None:
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path)), (TensorSpec("x", "FP32", (4096,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    blocks = kind((4096,), F32, max_bytes=1e7)
    assert blocks.rows == 64
    rng = np.random.default_rng(0)
    requests = []
    for k in range(60):  # 2-3 rows each: three blocks
        x = rng.random((k % 2 + 2, 4096), np.float32)
        requests.append(LoggedRequest(f"{k}", 0, "latest", None, 1, len(x), {"x": blocks.copy(x)},
                                      {"y": np.zeros((len(x), 1), np.float32)}))  # fmt: skip
    runs = blocks.take_runs()
    assert runs is not None and len(runs) == 3
    pending = Pending.of(requests)
    table = build_table(stream, pending, Scratch(), {"x": runs})
    assert table.column("x").num_chunks == 3
    assert table.to_pylist() == build_table(stream, pending).to_pylist()
    data = table.column("x").chunk(0).values.buffers()[1]
    assert data is not None and data.address == runs[0].ctypes.data  # the block's memory, not a copy
    fewer = build_table(stream, pending, None, {"x": runs[:2]})  # runs that do not cover every row: unused
    assert fewer.column("x").num_chunks == 1 and fewer.to_pylist() == table.to_pylist()


def test_the_queue_bound_is_shared_between_the_inputs_by_the_size_of_their_rows() -> None:
    specs = (TensorSpec("a", "FP32", (768,)), TensorSpec("b", "FP32", (256,)), TensorSpec("s", "BYTES", (1,)))
    blocks = row_blocks(specs, {"a": "a", "b": "b", "s": "s"}, 64 * BLOCK_BYTES)
    assert set(blocks) == {"a", "b"}  # BYTES are copied one by one
    assert (blocks["a"].max_blocks - 2, blocks["b"].max_blocks - 2) == (48, 16)


@pytest.mark.parametrize(
    ("settings", "codec"),
    [({}, "LZ4"), ({"compression": "zstd", "zstd_level": -1}, "ZSTD"), ({"compression": "none"}, "UNCOMPRESSED")],
)
def test_files_use_the_compression_set_lz4_by_default_and_every_reader_opens_them(
    tmp_path: Path, settings: dict[str, Any], codec: str
) -> None:
    stream = LogStream(
        "m", "1", PredictionLogConfig(destination=str(tmp_path), **settings), (TensorSpec("x", "FP32", (3,)),),
        (TensorSpec("y", "FP32", (1,)),),
    )  # fmt: skip
    log = PredictionLog(MemoryMetrics())
    x, y = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    log.offer(stream, LoggedRequest("r", time.time_ns(), "latest", None, 1, 1, {"x": x}, {"y": y}))
    log.close()
    (path,) = tmp_path.rglob("*.parquet")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == codec
    assert ds.dataset(tmp_path).to_table().column("x").to_pylist() == [[1.0, 1.0, 1.0]]
    assert duckdb.sql(f"SELECT x FROM '{path}'").fetchall() == [([1.0, 1.0, 1.0],)]


def test_a_zstd_level_out_of_range_or_an_unknown_codec_is_refused() -> None:
    with pytest.raises(ValidationError):
        PredictionLogConfig(zstd_level=23)
    with pytest.raises(ValidationError):
        PredictionLogConfig(compression="lzo")  # type: ignore[arg-type]


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
