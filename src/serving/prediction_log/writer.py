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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from serving.prediction_log import columns
from serving.prediction_log.files import file_name, open_destination, partition_of, write_atomically, writer_name
from serving.prediction_log.records import (
    ERROR,
    LATENCY_MS,
    META_SCHEMA,
    REQUEST_ID,
    ROUTE,
    ROW,
    STATUS,
    TIME,
    LoggedRequest,
    LogStream,
)
from serving.telemetry.metrics import LOG_DROPPED, LOG_ROWS, Metrics

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]

RETRY_S = 1.0
"""Pause after a failed write before the next try."""
FAILURE_LOG_S = 60.0
"""While writes keep failing, one log line per this many seconds."""


@dataclass
class _Waiting:
    stream: LogStream
    requests: list[LoggedRequest] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0

    def fits(self, request: LoggedRequest) -> bool:
        """Whether ``request`` fits in the version's queue bound (rows and bytes)."""
        config = self.stream.config
        return self.rows + request.rows <= config.queue_rows and self.nbytes + request.nbytes <= config.queue_mb * 1e6

    def full_enough(self) -> bool:
        """``flush_rows`` rows wait, or a quarter of the queue's bytes (large tensors fill the bound
        long before the rows do)."""
        config = self.stream.config
        return self.rows >= config.flush_rows or self.nbytes >= config.queue_mb * 1e6 / 4

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
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failure_logged = -FAILURE_LOG_S
        self._retry_at = 0.0

    def offer(self, stream: LogStream, request: LoggedRequest) -> None:
        """Queue one request's rows (any thread; never blocks on I/O)."""
        with self._cond:
            waiting = self._waiting.get(stream.key)
            if waiting is None:
                waiting = self._waiting[stream.key] = _Waiting(stream)
            waiting.stream = stream
            if self._stopping or not waiting.fits(request):
                full = True
            else:
                full = False
                first = not waiting.requests
                if first:
                    waiting.since = time.monotonic()
                was_due = not first and waiting.full_enough()
                waiting.requests.append(request)
                waiting.rows += request.rows
                waiting.nbytes += request.nbytes
                if first or (not was_due and waiting.full_enough()):  # wake it once, not per row
                    self._start()
                    self._cond.notify()
        if full:
            self.metrics.inc(LOG_DROPPED, stream.labels, request.rows)

    def next_seq(self) -> int:
        """A number for the next file this process writes (unique with :attr:`writer`)."""
        return next(self._seq)

    def flush(self) -> None:
        """Write everything waiting now, in the calling thread (blocks on I/O); a failed batch
        goes back to the queue for the writer thread."""
        batches = self._take(everything=True)
        failed = [b for b in batches if not self._write(b, final=False)]
        if failed:
            self._put_back(failed)

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
                    waits = [w.due(now) for w in self._waiting.values() if w.requests]
                    pause = self._retry_at - now  # after a failed write, nothing is tried before it
                    if waits and min(waits) <= 0 and pause <= 0:
                        break
                    self._cond.wait(max(min(waits), pause) if waits else None)
                stopping = self._stopping
            batches = self._take(everything=stopping)
            failed = [b for b in batches if not self._write(b, final=stopping)]
            if stopping:
                return
            if failed:
                self._put_back(failed)
                self._retry_at = time.monotonic() + RETRY_S

    def _take(self, everything: bool) -> list[_Waiting]:
        now = time.monotonic()
        with self._cond:
            due = [w for w in self._waiting.values() if w.requests and (everything or w.due(now) <= 0)]
            for w in due:
                self._waiting[w.stream.key] = _Waiting(w.stream)
        return due

    def _put_back(self, batches: list[_Waiting]) -> None:
        """Failed batches go back in front of what came since, as far as the queue bound allows."""
        for batch in batches:
            with self._cond:
                newer = self._waiting[batch.stream.key]
                kept: list[LoggedRequest] = []
                for r in batch.requests:
                    if not newer.fits(r):
                        break
                    kept.append(r)
                    newer.rows += r.rows
                    newer.nbytes += r.nbytes
                newer.requests[:0] = kept
                newer.since = batch.since if kept else newer.since
                lost = sum(r.rows for r in batch.requests[len(kept) :])
            if lost:
                self.metrics.inc(LOG_DROPPED, batch.stream.labels, lost)

    def _write(self, batch: _Waiting, final: bool) -> bool:
        """Write one version's waiting rows (a file per hour they span); False: the destination
        failed, retry. ``final``: no retry follows, so rows not written are counted as dropped.
        Rows that cannot become a table (a bug, never the destination) are dropped at once."""
        stream = batch.stream
        by_hour: dict[int, list[LoggedRequest]] = {}
        for r in batch.requests:  # the hour as a number: formatting each request's time cost 4 us a row
            by_hour.setdefault(int(r.time_s // 3600), []).append(r)
        try:
            fs, root = open_destination(str(stream.config.destination))
        except Exception:
            return self._failed(batch, final)
        for hour_number, requests in by_hour.items():
            date, hour = partition_of(hour_number * 3600)
            rows = sum(r.rows for r in requests)
            try:
                table = build_table(stream, requests)
            except Exception:
                log.exception(
                    "the prediction log of %s v%s dropped %d rows it could not convert", *stream.key[1:], rows
                )
                self.metrics.inc(LOG_DROPPED, stream.labels, rows)
                self._forget(batch, requests)
                continue
            folder = f"{root}/model={stream.model}/version={stream.version}/date={date}/hour={hour}"
            try:
                write_atomically(fs, folder, file_name(self.writer, self.next_seq()), table, stream.config.compression)
            except Exception:
                return self._failed(batch, final)
            self.metrics.inc(LOG_ROWS, stream.labels, rows)
            self._forget(batch, requests)
        return True

    @staticmethod
    def _forget(batch: _Waiting, done: list[LoggedRequest]) -> None:
        gone = {id(r) for r in done}
        batch.requests = [r for r in batch.requests if id(r) not in gone]
        batch.rows -= sum(r.rows for r in done)
        batch.nbytes -= sum(r.nbytes for r in done)

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


def build_table(stream: LogStream, requests: list[LoggedRequest]) -> pa.Table:
    """The log rows of ``requests``: one per row of each request."""
    counts = np.fromiter((r.rows for r in requests), dtype=np.int64, count=len(requests))
    meta = {
        REQUEST_ID: pa.array(np.repeat(np.array([r.request_id for r in requests], dtype=object), counts), pa.string()),
        ROW: pa.array(row_numbers(counts), pa.int32()),
        TIME: pa.array(np.repeat(np.array([int(r.time_s * 1e6) for r in requests], dtype=np.int64), counts)).cast(
            pa.timestamp("us", tz="UTC")
        ),
        ROUTE: pa.array(np.repeat(np.array([r.route for r in requests], dtype=object), counts), pa.string()),
        STATUS: pa.array(np.repeat(np.array([r.status for r in requests], dtype=object), counts), pa.string()),
        ERROR: pa.array(np.repeat(np.array([r.error for r in requests], dtype=object), counts), pa.string()),
        LATENCY_MS: pa.array(np.repeat(np.array([r.latency_ms for r in requests], dtype=np.float64), counts)),
    }
    cols: dict[str, pa.Array] = {name: meta[name] for name in META_SCHEMA.names}
    rows = counts.tolist()

    def part(arrays: dict[str, Array] | None, name: str) -> Array | None:
        values = (arrays or {}).get(name)
        return values if values is None or stream.batched else np.asarray(values)[np.newaxis]

    for spec in stream.inputs:
        name = stream.input_columns.get(spec.name)
        if name is not None:
            cols[name] = columns.column(spec, [part(r.inputs, spec.name) for r in requests], rows)
    for spec in stream.outputs:
        name = stream.output_columns.get(spec.name)
        if name is not None:
            cols[name] = columns.column(spec, [part(r.outputs, spec.name) for r in requests], rows)
    return pa.table(cols)
