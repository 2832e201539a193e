""":class:`PredictionLog`: the request path hands it sampled requests; a thread of its own turns
them into Parquet files. The request path only appends to a bounded list: when a version's list
is full, the request's rows are dropped and counted (``serving_log_dropped_rows``), and the request
goes on. A write that fails (a full disk, an object store away) is retried while the rows fit;
:meth:`PredictionLog.close` writes everything still waiting (drain, SIGTERM)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from serving.prediction_log import columns
from serving.prediction_log.compiled import hand_over as compiled
from serving.prediction_log.files import file_name, open_destination, partition_of, write_atomically, writer_name
from serving.prediction_log.records import (
    ERROR,
    LATENCY_MS,
    META_SCHEMA,
    OK,
    REQUEST_ID,
    ROUTE,
    ROW,
    STATUS,
    TIME,
    LoggedRequest,
    LogStream,
    nbytes_of,
    sampled,
)
from serving.prediction_log.row_blocks import RowBlocks, row_blocks
from serving.telemetry.metrics import LOG_DROPPED, LOG_ROWS, Metrics

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]

RETRY_S = 1.0
"""Pause after a failed write before the next try."""
FLUSH_WAIT_S = 10.0
"""How long :meth:`PredictionLog.flush` waits for the writer thread's write in progress."""
FAILURE_LOG_S = 60.0
"""While writes keep failing, one log line per this many seconds."""
HOUR_NS = 3600 * 10**9


class HandOverFunction(Protocol):
    """:meth:`PredictionLog.hand_over`'s signature, which the compiled ``HandOver`` shares."""

    def __call__(
        self,
        stream: LogStream,
        request_id: str,
        route: str,
        start_ns: int,
        inputs: dict[str, Array] | None,
        outputs: dict[str, Array] | None,
        failure: tuple[str, str] | None = None,
        /,
    ) -> None: ...


Tensors = dict[str, list[Array | None]]
"""Each tensor's arrays, one entry a request (None: the request lacks it)."""


@dataclass
class Pending:
    """Requests waiting for the writer, one list per field of :class:`LoggedRequest`, and one per
    tensor. No object per request outlives its offer, so the queue gives Python's garbage
    collector nothing new to follow (numbers, strings and arrays are not tracked): with an object
    kept per request, the serving thread spent ~5 us more a request than with the collector off
    (measured over gRPC, reference MLP, 100 % logged). Nor a dict per request: a dict is counted
    by the collector when it is made, and one held until its file is written is freed with
    thousands of others once the file is, past where the count stops at zero, so it counts as if
    it were never freed. With the inputs and the outputs of each request kept as dicts, a server
    logging every request ran 5x as many young collections as one without a log, and 4x as many
    full ones, of 31-39 ms each (``gc.get_stats``, 40 s)."""

    request_ids: list[str] = field(default_factory=list)
    times_ns: list[int] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    failures: list[tuple[str, str] | None] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    inputs: Tensors = field(default_factory=dict)
    outputs: Tensors = field(default_factory=dict)
    lists: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    """Every list above, and the two dicts, in that order: what the compiled hand-over appends
    to (its fields are never given other lists)."""

    def __post_init__(self) -> None:
        self.lists = (
            self.request_ids,
            self.times_ns,
            self.routes,
            self.failures,
            self.latencies_ns,
            self.rows,
            self.nbytes,
            self.inputs,
            self.outputs,
        )

    def add(self, r: LoggedRequest, blocks: dict[str, RowBlocks] | None = None) -> None:
        """Queue ``r``; with ``blocks``, copies of its inputs (into their blocks where they have
        them), so that the transport's buffers are not kept."""
        n = len(self.request_ids)
        _append(self.inputs, r.inputs, n, blocks)
        _append(self.outputs, r.outputs, n)
        self.request_ids.append(r.request_id)
        self.times_ns.append(r.time_ns)
        self.routes.append(r.route)
        self.failures.append(r.failure)
        self.latencies_ns.append(r.latency_ns)
        self.rows.append(r.rows)
        self.nbytes.append(r.nbytes)

    @classmethod
    def of(cls, requests: list[LoggedRequest]) -> Pending:
        pending = cls()
        for r in requests:
            pending.add(r)
        return pending

    def __len__(self) -> int:
        return len(self.request_ids)

    def select(self, which: slice | list[int]) -> Pending:
        """The requests at ``which`` (a slice, or indices in order)."""

        def pick(values: list[Any]) -> list[Any]:
            return values[which] if isinstance(which, slice) else [values[i] for i in which]

        picked: dict[str, Any] = {
            f.name: pick(getattr(self, f.name)) for f in fields(self) if f.init and f.name not in ("inputs", "outputs")
        }
        return Pending(
            **picked,
            inputs={name: pick(arrays) for name, arrays in self.inputs.items()},
            outputs={name: pick(arrays) for name, arrays in self.outputs.items()},
        )

    def __add__(self, later: Pending) -> Pending:
        def joined(a: Tensors, b: Tensors) -> Tensors:
            return {name: a.get(name, [None] * len(self)) + b.get(name, [None] * len(later)) for name in {**a, **b}}

        both: dict[str, Any] = {
            f.name: getattr(self, f.name) + getattr(later, f.name)
            for f in fields(self)
            if f.init and f.name not in ("inputs", "outputs")
        }
        return Pending(**both, inputs=joined(self.inputs, later.inputs), outputs=joined(self.outputs, later.outputs))


def _append(
    tensors: Tensors, arrays: dict[str, Array] | None, n: int, blocks: dict[str, RowBlocks] | None = None
) -> None:
    """One request's ``arrays`` added to ``tensors``, which hold ``n`` requests before it; with
    ``blocks``, copies of them."""
    if arrays:
        for name, values in arrays.items():
            column = tensors.get(name)
            if column is None:
                column = tensors[name] = [None] * n
            if blocks is not None:
                values = b.copy(values) if (b := blocks.get(name)) is not None else np.array(values)
            column.append(values)
    for column in tensors.values():
        if len(column) == n:  # this request lacks it
            column.append(None)


@dataclass
class _Waiting:
    stream: LogStream
    pending: Pending = field(default_factory=Pending)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0
    max_rows: int = field(init=False)
    max_bytes: float = field(init=False)
    flush_rows: int = field(init=False)
    flush_bytes: float = field(init=False)
    """The stream's bounds, read once: the request path checks them on every offer."""
    blocks: dict[str, RowBlocks] | None = None
    """Where the kept inputs are copied (``row_blocks``); the stream's next batch takes them over."""
    constants: tuple[Any, ...] = field(init=False, repr=False)
    """What the compiled hand-over reads of it, in one tuple: (stream, max_rows, max_bytes,
    flush_rows, flush_bytes, blocks)."""
    runs: dict[str, list[Array] | None] = field(default_factory=dict)
    """Once taken for writing: each blocked input's rows as runs in its blocks (``take_runs``),
    the columns' chunks when they hold exactly the batch's rows."""

    def __post_init__(self) -> None:
        config = self.stream.config
        self.max_rows = config.queue_rows
        self.max_bytes = config.queue_mb * 1e6
        self.flush_rows = config.flush_rows
        self.flush_bytes = self.max_bytes / 4  # large tensors fill the bound long before the rows do
        if self.blocks is None:
            s = self.stream  # an unbatched request is one row without a batch dimension: copied as it is
            self.blocks = row_blocks(s.inputs, s.input_columns, self.max_bytes) if s.batched else {}
        self.constants = (self.stream, self.max_rows, self.max_bytes, self.flush_rows, self.flush_bytes, self.blocks)

    def keep(self, request: LoggedRequest) -> None:
        """Queue ``request`` with copies of its inputs: the transport's buffers are not kept. (Its
        outputs are the model's batch output, shared by the batch's requests: kept as they are.)"""
        assert self.blocks is not None
        self.pending.add(request, self.blocks)

    def full_enough(self) -> bool:
        """``flush_rows`` rows wait, or a quarter of the queue's bytes."""
        return self.rows >= self.flush_rows or self.nbytes >= self.flush_bytes

    def due(self, now: float) -> float:
        """Seconds until this batch must be written (<= 0: now)."""
        if self.full_enough():
            return 0.0
        return self.since + self.stream.config.flush_s - now


class PredictionLog:
    """The log of every version this process serves; one writer thread."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.writer = writer_name()
        self._seq = itertools.count(1)
        self._waiting: dict[tuple[str, str, str], _Waiting] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        """Wakes the writer; ``with self._lock`` where no wait or notify follows (the request path:
        the Condition's own ``with`` is Python code around the same lock)."""
        self._stopping = False
        self._writing = False
        """The writer thread is writing batches it took (:meth:`flush` waits for them)."""
        self._written = threading.Condition(self._lock)
        """Wakes :meth:`flush` when the writer thread has written what it took (not ``_cond``,
        whose single notify is the writer's)."""
        self._thread: threading.Thread | None = None
        self._failure_logged = -FAILURE_LOG_S
        self._scratch = columns.Scratch()
        """The writer thread's memory for columns (other threads that flush build without it)."""
        self._retry_at = 0.0

    def hand_over_function(self, use_compiled: bool = True) -> HandOverFunction:
        """What the request path calls to hand a request over: the compiled ``HandOver``
        (``_hand_over.c``) where it is built, else :meth:`hand_over`. In Python the hand-over
        took ~9 us of the serving thread's CPU a call (bench/log_floor.py)."""
        if compiled is not None and use_compiled:
            function: HandOverFunction = compiled.HandOver(self)
            return function
        return self.hand_over

    def hand_over(
        self,
        stream: LogStream,
        request_id: str,
        route: str,
        start_ns: int,
        inputs: dict[str, Array] | None,
        outputs: dict[str, Array] | None,
        failure: tuple[str, str] | None = None,
    ) -> None:
        """Queue a request answered now when its id is in the sample (any thread; never blocks on
        I/O; ``start_ns``: when it arrived, ``time.monotonic_ns()``; ``failure``: its error kind
        and message). The compiled ``HandOver`` does the same, and calls this where a version has
        no queue yet for its settings (the sample is by request id: the same request is in it)."""
        rate = stream.config.sample_rate
        if rate < 1.0 and not sampled(request_id, rate):
            return
        rows = 1  # unbatched: a request is a row
        if stream.batched:
            for values in (inputs or outputs or {}).values():
                rows = int(values.shape[0]) if values.ndim else 1
                break
        if not stream.input_columns:  # keep: outputs; hold nothing the log will not write
            inputs = None
        if not stream.output_columns:
            outputs = None
        row_nbytes = stream.row_nbytes
        nbytes = rows * row_nbytes if row_nbytes is not None else nbytes_of(inputs) + nbytes_of(outputs)
        now = time.monotonic_ns()
        record = LoggedRequest(
            request_id, time.time_ns(), route, failure, now - start_ns, rows, inputs, outputs, nbytes
        )
        self.offer(stream, record)

    def wake_writer(self) -> None:
        """The compiled hand-over's :meth:`_wake` (it has let go of the lock)."""
        with self._cond:
            self._wake()

    def count_dropped(self, stream: LogStream, rows: int) -> None:
        self.metrics.inc(LOG_DROPPED, stream.labels, rows)

    def offer(self, stream: LogStream, request: LoggedRequest) -> None:
        """Queue one request's rows (any thread; never blocks on I/O). On every logged request's
        path where the hand-over is not compiled, so its checks are written out here rather than
        called."""
        with self._lock:
            waiting = self._waiting.get(stream.key)
            if waiting is None or waiting.stream is not stream:  # new, or loaded again with new settings
                waiting = self._waiting[stream.key] = _Waiting(stream, *self._held(waiting))
            rows = waiting.rows + request.rows
            nbytes = waiting.nbytes + request.nbytes
            full = self._stopping or rows > waiting.max_rows or nbytes > waiting.max_bytes
            if not full:
                was_full = waiting.rows >= waiting.flush_rows or waiting.nbytes >= waiting.flush_bytes
                waiting.keep(request)
                waiting.rows = rows
                waiting.nbytes = nbytes
                if len(waiting.pending) == 1:  # the first: its flush_s starts now
                    waiting.since = time.monotonic()
                    self._wake()
                elif not was_full and (rows >= waiting.flush_rows or nbytes >= waiting.flush_bytes):
                    self._wake()  # once, as it fills, not per row
        if full:
            self.metrics.inc(LOG_DROPPED, stream.labels, request.rows)

    @staticmethod
    def _held(waiting: _Waiting | None) -> tuple[Pending, int, int, float]:
        """What ``waiting`` holds, to wait on under new settings (nothing when None)."""
        if waiting is None:
            return Pending(), 0, 0, 0.0
        return waiting.pending, waiting.rows, waiting.nbytes, waiting.since

    def _wake(self) -> None:
        """The writer thread looks at the queue again (started on the first row; holding the lock)."""
        self._start()
        self._cond.notify()

    def next_seq(self) -> int:
        """A number for the next file this process writes (unique with :attr:`writer`)."""
        return next(self._seq)

    def flush(self) -> None:
        """Write everything waiting now, in the calling thread (blocks on I/O), and wait (up to
        ``FLUSH_WAIT_S``) for what the writer thread is writing: then every request offered before
        the call is in a file, unless its write failed. A failed batch goes back to the queue for
        the writer thread."""
        batches = self._take(everything=True)
        failed = [b for b in batches if not self._write(b, final=False)]
        if failed:
            self._put_back(failed)
        with self._written:
            self._written.wait_for(lambda: not self._writing, FLUSH_WAIT_S)

    def close(self) -> None:
        """Write everything waiting and stop the thread (blocks: call it off the event loop)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        for batch in self._take(everything=True):  # offered after the thread's last look
            self._write(batch, final=True)

    def _start(self) -> None:
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            with self._cond:
                self._stopping = True  # from now on rows are dropped and counted, not held
            log.critical("the prediction log's writer thread died: no more log files are written", exc_info=True)
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    waits = [w.due(now) for w in self._waiting.values() if w.pending]
                    pause = self._retry_at - now  # after a failed write, nothing is tried before it
                    if waits and min(waits) <= 0 and pause <= 0:
                        break
                    self._cond.wait(max(min(waits), pause) if waits else None)
                stopping = self._stopping
            batches = self._take(everything=stopping, writing=True)
            try:
                failed = [b for b in batches if not self._write(b, final=stopping, scratch=self._scratch)]
                if failed and not stopping:
                    self._put_back(failed)
                    self._retry_at = time.monotonic() + RETRY_S
            finally:
                with self._written:
                    self._writing = False
                    self._written.notify_all()
            if stopping:
                return

    def _take(self, everything: bool, writing: bool = False) -> list[_Waiting]:
        """The batches due (all with ``everything``); ``writing``: the writer thread takes them,
        and :meth:`flush` waits until it has written them."""
        now = time.monotonic()
        with self._cond:
            due = [w for w in self._waiting.values() if w.pending and (everything or w.due(now) <= 0)]
            for w in due:
                assert w.blocks is not None
                w.runs = {name: blocks.take_runs() for name, blocks in w.blocks.items()}
                self._waiting[w.stream.key] = _Waiting(w.stream, blocks=w.blocks)
            if writing:
                self._writing = True
        return due

    def _put_back(self, batches: list[_Waiting]) -> None:
        """Failed batches go back in front of what came since, as far as the queue bound allows."""
        for batch in batches:
            with self._cond:
                newer = self._waiting[batch.stream.key]
                older = batch.pending
                kept = 0
                for n, size in zip(older.rows, older.nbytes):
                    if newer.rows + n > newer.max_rows or newer.nbytes + size > newer.max_bytes:
                        break
                    kept += 1
                    newer.rows += n
                    newer.nbytes += size
                newer.pending = older.select(slice(0, kept)) + newer.pending
                newer.since = batch.since if kept else newer.since
                lost = sum(older.rows[kept:])
            if lost:
                self.metrics.inc(LOG_DROPPED, batch.stream.labels, lost)

    def _write(self, batch: _Waiting, final: bool, scratch: columns.Scratch | None = None) -> bool:
        """Write one version's waiting rows (a file per hour they span); False: the destination
        failed, retry. ``final``: no retry follows, so rows not written are counted as dropped.
        Rows that cannot become a table (a bug, never the destination) are dropped at once."""
        stream = batch.stream
        times = batch.pending.times_ns
        by_hour: dict[int, list[int]] = {}
        if min(times) // HOUR_NS == max(times) // HOUR_NS:  # the usual case: one hour, no Python step a row
            by_hour[times[0] // HOUR_NS] = list(range(len(times)))
        else:
            for i, t in enumerate(times):  # the hour as a number: formatting each time cost 4 us a row
                by_hour.setdefault(t // HOUR_NS, []).append(i)
        try:
            fs, root = open_destination(str(stream.config.destination))
        except Exception:
            return self._failed(batch, final)
        whole = batch.pending
        config = stream.config
        done: list[int] = []
        for hour_number, which in by_hour.items():
            date, hour = partition_of(hour_number * 3600.0)
            part = whole if len(by_hour) == 1 else whole.select(which)
            rows = sum(part.rows)
            try:
                table = build_table(stream, part, scratch, batch.runs if part is whole else None)
            except Exception:
                log.exception(
                    "the prediction log of %s v%s dropped %d rows it could not convert", *stream.key[1:], rows
                )
                self.metrics.inc(LOG_DROPPED, stream.labels, rows)
                done += which
                continue
            folder = f"{root}/model={stream.model}/version={stream.version}/date={date}/hour={hour}"
            try:
                write_atomically(
                    fs, folder, file_name(self.writer, self.next_seq()), table, config.compression, config.zstd_level
                )
            except Exception:
                self._forget(batch, done)
                return self._failed(batch, final)
            self.metrics.inc(LOG_ROWS, stream.labels, rows)
            done += which
        self._forget(batch, done)
        return True

    @staticmethod
    def _forget(batch: _Waiting, done: list[int]) -> None:
        """Drop the requests at ``done`` (written, or impossible to write) from ``batch``."""
        if not done:
            return
        batch.runs = {}  # (the blocks are free for new rows once the rows' views are gone too)
        if len(done) == len(batch.pending):
            batch.pending, batch.rows, batch.nbytes = Pending(), 0, 0
            return
        gone = set(done)
        batch.rows -= sum(batch.pending.rows[i] for i in gone)
        batch.nbytes -= sum(batch.pending.nbytes[i] for i in gone)
        batch.pending = batch.pending.select([i for i in range(len(batch.pending)) if i not in gone])

    def _failed(self, batch: _Waiting, final: bool) -> bool:
        """Log a failed write (at most once a minute while it keeps failing, and the last one)."""
        stream = batch.stream
        now = time.monotonic()
        if not final and now - self._failure_logged < FAILURE_LOG_S:
            return False
        self._failure_logged = now
        log.exception(
            "the prediction log of %s v%s could not write %d rows to %s%s",
            stream.model,
            stream.version,
            batch.rows,
            stream.config.destination,
            " (dropped: the server is stopping)" if final else " (retrying)",
        )
        if final:
            self.metrics.inc(LOG_DROPPED, stream.labels, batch.rows)
        return False


def row_numbers(counts: Array) -> Array:
    """0..n-1 for each request of n rows, one after the other."""
    starts = np.cumsum(counts) - counts
    numbers: Array = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)).astype(np.int32)
    return numbers


def readable(request_id: str) -> str:
    """``request_id`` as a column holds it: a V2 id may hold any JSON string, lone surrogates included."""
    return request_id if request_id.isascii() else request_id.encode("utf-8", "backslashreplace").decode("utf-8")


def build_table(
    stream: LogStream,
    pending: Pending,
    scratch: columns.Scratch | None = None,
    runs: dict[str, list[Array] | None] | None = None,
) -> pa.Table:
    """The log rows of ``pending``'s requests: one per row of each request. The writer thread
    holds the GIL while it runs, and the serving loop waits for it, so the usual case (a row a
    request, every request answered, ASCII ids) takes paths without a Python step per row.
    ``scratch``: memory reused for the tensors' columns (the table is valid until its next use).
    ``runs``: inputs whose rows lie in these arrays, in order, become columns of them as chunks,
    without a copy (used where they hold as many rows as the requests)."""
    if scratch is not None:
        scratch.start()
    counts = np.asarray(pending.rows, dtype=np.int64)
    n = int(counts.sum())
    single = n == len(counts)  # one row a request: nothing to repeat
    failures = pending.failures
    answered = failures.count(None) == len(failures)

    def repeated(values: list[Any]) -> Array | list[Any]:
        return values if single else np.repeat(np.asarray(values, dtype=object), counts)

    def repeated_numbers(values: list[int], dtype: Any) -> Array:
        return np.repeat(np.asarray(values, dtype=dtype), counts)

    ids = pending.request_ids
    meta = {
        REQUEST_ID: pa.array(repeated(ids if all(map(str.isascii, ids)) else [readable(r) for r in ids]), pa.string()),
        ROW: pa.array(np.zeros(n, np.int32) if single else row_numbers(counts), pa.int32()),
        TIME: pa.array(repeated_numbers(pending.times_ns, np.int64) // 1000).cast(pa.timestamp("us", tz="UTC")),
        ROUTE: pa.array(repeated(pending.routes), pa.string()),
        STATUS: pa.repeat(pa.scalar(OK), n) if answered else
        pa.array(repeated([OK if f is None else f[0] for f in failures]), pa.string()),
        ERROR: pa.nulls(n, pa.string()) if answered else
        pa.array(repeated([None if f is None else f[1] for f in failures]), pa.string()),
        LATENCY_MS: pa.array(repeated_numbers(pending.latencies_ns, np.float64) / 1e6),
    }  # fmt: skip
    cols: dict[str, pa.Array] = {name: meta[name] for name in META_SCHEMA.names}
    rows = pending.rows
    n_requests = len(pending)
    for spec in stream.inputs:
        name = stream.input_columns.get(spec.name)
        if name is None:
            continue
        chunks = (runs or {}).get(spec.name)
        if chunks is not None and sum(map(len, chunks)) == n:
            cols[name] = columns.chunked_column(spec, chunks)
        else:
            cols[name] = columns.column(
                spec, tensors(pending.inputs.get(spec.name), n_requests, stream.batched), rows, scratch
            )
    for spec in stream.outputs:
        name = stream.output_columns.get(spec.name)
        if name is not None:
            cols[name] = columns.column(
                spec, tensors(pending.outputs.get(spec.name), n_requests, stream.batched), rows, scratch
            )
    return pa.table(cols)


def tensors(arrays: list[Array | None] | None, requests: int, batched: bool) -> list[Array | None]:
    """One tensor's arrays, a batch of rows per request (None where a request lacks it; ``arrays``
    None: every request does)."""
    if arrays is None:
        return [None] * requests
    if batched:
        return arrays
    return [None if v is None else np.asarray(v)[np.newaxis] for v in arrays]
