"""Dynamic batching: a bounded queue per model version that stacks requests.

Concurrent requests to one model version wait up to ``max_queue_delay_s`` for others;
their inputs are concatenated along the batch dimension (a request may itself carry
several rows) up to ``max_batch_size`` rows, run as one model execution in a worker
thread, and the outputs are split back. Only requests whose non-batch dimensions agree
share a batch (variable dimensions are never padded silently). After each execution the
output row count is checked against the input row count, as Ray's ``@serve.batch`` does.

Why not ``@serve.batch``: it counts requests, not rows, its queue is unbounded and belongs
to the decorated function rather than to a model version, and it would tie this core
module to Ray. This batcher is ~150 lines, bounded, and instrumented.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from serving.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotReadyError,
    QueueFullError,
    ServingError,
)
from serving.telemetry import tracing
from serving.worker_threads import WorkerThreads

log = logging.getLogger(__name__)

PROBE_EVERY = 16
"""Adaptive delay: after a wait that found no company, every PROBE_EVERY-th batch waits again."""

STACK_ON_LOOP_BYTES = 1 << 20
"""A batch's inputs up to this size are stacked on the event loop's thread as the batch is handed
to a worker thread. numpy drops the GIL for a large copy, and a worker thread then waits to take it
back while the loop runs: 680 us a 128-row batch of [64, 784] FP32 requests (400 KB), for a copy of
~40 us. Larger batches are stacked on the worker thread, so that a copy holds the loop ~0.2 ms at most."""

Arrays = dict[str, np.ndarray[Any, Any]]


class BatchObserver(Protocol):
    """Receives the timings of each execution (statistics, metrics)."""

    def on_batch(
        self, rows: int, queue_ns: Sequence[int], input_ns: int, infer_ns: int, output_ns: int, ok: bool
    ) -> None: ...

    def on_deadline_dropped(self, queued_ns: int) -> None: ...

    def on_hung(self, seconds: float) -> None: ...


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Arrays]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    trace: Any = None
    deadline_s: float | None = None
    taken: bool = False
    """In a batch (running or about to): no longer in the queue."""
    counted: bool = True
    """Counted in the queue's live requests and rows (until taken, answered early or cancelled)."""


class _Computed(NamedTuple):
    results: list[Arrays]
    """Each request's outputs."""
    timings: tuple[int, int, int]
    """Nanoseconds stacking the inputs, running the model, splitting the outputs."""
    started_ns: int
    """When the batch's queueing ended (``time.monotonic_ns()``): the run's start less the
    stacking's time, stacked as it was handed over, so queue, stacking, run and split add up."""


@dataclass(slots=True)
class _Handed:
    """A batch's run queued on the worker threads."""

    running: asyncio.Future[_Computed]
    started: list[float]
    """When a thread began it (``time.monotonic()``), once it has."""
    handed_at: float = field(default_factory=time.monotonic)


def batch_key(inputs: Arrays) -> tuple[Any, ...]:
    """What must agree between requests that share a batch: names, dtypes, trailing dims."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


def concat_inputs(items: Sequence[Arrays]) -> Arrays:
    """Stack the requests' inputs along axis 0."""
    if len(items) == 1:
        return items[0]
    return {name: np.concatenate([it[name] for it in items], axis=0) for name in items[0]}


def split_outputs(outputs: Arrays, rows: Sequence[int]) -> list[Arrays]:
    """Split each output along axis 0 by the requests' row counts.

    Raises:
        ModelExecutionError: an output's first dimension is not the batch's row count.
    """
    total = sum(rows)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ModelExecutionError(
                f"model output {name!r} has shape {list(arr.shape)}, expected {total} rows for a batch of {total}"
            )
    if len(rows) == 1:
        return [outputs]
    # Plain slices (views): np.split costs ~4x as much per part (38 against 11 us for 18 parts of two outputs).
    answers = []
    start = 0
    for n in rows:
        end = start + n
        answers.append({name: arr[start:end] for name, arr in outputs.items()})
        start = end
    return answers


class Watchdog:
    """Interrupts inline executions that run past ``INLINE_OVERRUN_S``.

    An inline batch runs on the event loop's thread, so nothing on the loop can stop it; this
    one daemon thread per process can. A batcher publishes when its inline run started (one
    attribute write, no lock: the request path pays nothing more); the thread looks at the
    batchers it watches every ``PERIOD_S`` while inline runs happened in the last second, and
    sleeps otherwise.
    """

    PERIOD_S = 0.02
    """Measured on the 2-core VM: waking every 5 ms cost the event loop 7-15 % of its in-process
    throughput (GIL hand-offs at every epoll); every 20 ms bounds an inline run to ~40 ms."""
    IDLE_S = 1.0

    def __init__(self) -> None:
        self._watched: weakref.WeakSet[DynamicBatcher] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.parked = True
        self._thread: threading.Thread | None = None

    def watch(self, batcher: DynamicBatcher) -> None:
        with self._lock:
            self._watched.add(batcher)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="serving-watchdog", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """An inline run starts while the thread sleeps (called at most once a second under load)."""
        self.parked = False
        self._wake.set()

    def _run(self) -> None:
        quiet_since = time.monotonic()
        while True:
            self._wake.wait()
            time.sleep(self.PERIOD_S)
            now = time.monotonic()
            with self._lock:
                watched = list(self._watched)
            busy = False
            for batcher in watched:
                started = batcher.inline_since
                if started is None:
                    continue
                busy = True
                if now - started > INLINE_OVERRUN_S:
                    batcher.cut_inline(started)
            if busy or any(b.inline_recently(now - self.IDLE_S) for b in watched):
                quiet_since = now
            elif now - quiet_since > self.IDLE_S:
                self._wake.clear()
                self.parked = True
                # an inline run starting right now either saw parked=False (and is seen by the
                # scan after this one) or sees parked=True and wakes us
                if any(b.inline_since is not None for b in watched):
                    self.wake()


WATCHDOG = Watchdog()

INLINE_OVERRUN_S = 0.02
"""An inline batch running longer is cut short by the watchdog (which looks every PERIOD_S): the
event loop is held ~40 ms at most."""


class DynamicBatcher:
    """One bounded batching queue and one lane of worker threads for one model version.

    Args:
        run: runs one batch (on one of ``workers``), returns every output by name.
        max_batch_size: most rows per execution; 0 means the model takes no batch
            dimension and every request runs alone.
        max_queue_delay_s: longest the oldest request waits for the batch to fill.
        max_queue_size: most requests waiting; more raise ``QueueFullError`` at once.
        workers: the threads ``run`` executes on (``threads`` of them; shadow copies may queue
            work there too).
        observer: told about every execution.
        adaptive_delay: wait for ``max_queue_delay_s`` only while waiting finds company. After a
            wait that gathered no other request, the next ``PROBE_EVERY - 1`` batches run at once,
            then waiting is tried again. Measured on the 2-core VM with grpc.aio (which hands the
            loop one new call per round trip, so without a window every request ran alone): a
            0.5 ms window took gRPC at concurrency 16 from ~3,400 to ~5,400 requests/s, while a
            fixed window made a lone client's p50 1.1 ms instead of 0.6 ms.
        inline_below_s: run a batch on the event loop itself, skipping the worker threads, while
            executions have recently taken less than this (0 disables). Handing a batch to
            a worker thread and back costs ~0.37 ms on a 2-core VM, 15x the 0.02 ms the
            digits model needs to run (bench/results/online.md); blocking the loop for less
            than this bound costs less than the hop it saves. An inline batch that runs past
            ``INLINE_OVERRUN_S`` is interrupted by the watchdog and run on the worker instead,
            so a model that hangs there never freezes the replica. A runtime that cannot be
            interrupted runs inline only when ``execution_timeout_s`` is None (no bound asked).
        execution_timeout_s: a batch running longer fails its requests (503) and the observer's
            ``on_hung`` is told (the owner replaces this batcher).
        interrupt: stops the model's execution in progress from another thread (onnxruntime's
            ``RunOptions.terminate``); called when a batch overruns, inline or on the worker.
        threads: batches run at once, each on its own worker thread (``instance.count``). Measured
            on the 2-core VM (bench/batch_share.py, ``[64, 784]`` requests over gRPC at concurrency
            16): the reference MLP as 2 threads of 1 onnxruntime thread each served 35,900-38,000
            rows/s against 31,900-34,000 as 1 thread of 2 (0.65-0.69 of the in-process limit
            against 0.59-0.61). Handing a full batch over behind busy threads, so that a thread
            would not wait for the event loop between batches, was tried and measured within the
            noise (34,000-36,700 without it against 35,900-38,000 with it): not kept.
    """

    def __init__(
        self,
        run: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        workers: WorkerThreads,
        observer: BatchObserver | None = None,
        adaptive_delay: bool = False,
        inline_below_s: float = 0.0,
        trace_attributes: dict[str, str] | None = None,
        execution_timeout_s: float | None = None,
        interrupt: Callable[[], None] | None = None,
        threads: int = 1,
    ) -> None:
        if max_batch_size < 0:
            raise ValueError("max_batch_size must be an integer >= 0")
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must be >= 0")
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be an integer >= 1")
        if threads < 1:
            raise ValueError("threads must be an integer >= 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self._workers = workers
        self._observer = observer
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        if execution_timeout_s is not None and interrupt is None:
            inline_below_s = 0.0  # an inline execution that hangs could not be stopped
        self._inline_below_ns = int(inline_below_s * 1e9)
        self._interrupt = interrupt
        self.inline_since: float | None = None
        """When the inline execution now running started (``time.monotonic()``), read by the watchdog."""
        self._inline_last = 0.0
        self._cuts = 0  # inline runs the watchdog interrupted
        self._live = 0  # queued requests not answered yet (what max_queue_size bounds)
        self._live_rows = 0
        self._recent_ns: float | None = None  # moving average of execution time
        self._recent_rows = 1.0  # moving average of rows per execution
        self._trace_attributes = trace_attributes or {}
        self._closed = False
        self._adaptive = adaptive_delay
        self._skip_waits = 0  # batches to run without waiting (adaptive)
        self._execution_timeout_s = execution_timeout_s
        self._threads = threads
        self._on_worker: set[asyncio.Task[None]] = set()
        """Batches handed to the worker threads and not answered yet: one per thread, and at most
        one full batch per thread queued behind them (:meth:`_thread_for_next`)."""
        self._run_now = 0
        """Sets of rows run at once in their caller's task (``rows_together``) and not ended: one
        cut short inline goes on on a worker thread, and the batcher's task waits for it, as it
        waits for a batch of its own cut short."""
        self._abort: ServingError | None = None
        """Why the other threads' batches are answered when one hangs (the version is reloaded)."""
        if self._inline_below_ns and interrupt is not None:
            WATCHDOG.watch(self)

    @property
    def waits(self) -> bool:
        """Whether the next batch waits up to ``max_queue_delay_s`` for company."""
        return self.max_batch_size > 0 and self.max_queue_delay_s > 0 and self._skip_waits == 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting (answered ones, by a deadline or a cancelled caller, no longer count)."""
        return self._live

    def admit(self) -> None:
        """Refuse now, before the request is even decoded, when the queue is full.

        Raises:
            QueueFullError: the queue already holds ``max_queue_size`` requests.
        """
        if self._live >= self.max_queue_size:
            raise QueueFullError(f"model queue is full ({self.max_queue_size} requests waiting); retry later")

    async def submit(self, inputs: Arrays, deadline_s: float | None = None, rows_together: bool = False) -> Arrays:
        """Queue one request and wait for its outputs, until ``deadline_s`` (``time.monotonic()``)
        at most: a request still queued then is dropped without running. ``rows_together``: its
        rows are already a batch (a pipeline's set): when nothing is queued or running and a run
        of its size goes inline, it runs at once in the caller's task, without waiting for the
        batcher's task to take it.

        Raises:
            QueueFullError: the queue already holds ``max_queue_size`` requests.
            InvalidInputError: the request alone has more rows than ``max_batch_size``.
            DeadlineExceededError: the deadline passed before the answer.
            ModelExecutionError: its batch failed.
        """
        rows = 1
        if self.max_batch_size:
            rows = next(iter(inputs.values())).shape[0]
            if rows > self.max_batch_size:
                raise InvalidInputError(
                    f"batch of {rows} rows exceeds the model's max_batch_size {self.max_batch_size}"
                )
        if self._closed:
            raise ModelNotReadyError("model version is being unloaded")
        self.admit()
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work())
            self._worker.add_done_callback(self._worker_ended)
        if deadline_s is not None and deadline_s <= time.monotonic():
            raise DeadlineExceededError("the request's deadline passed before it was queued")
        pending = _Pending(inputs, rows, batch_key(inputs) if self.max_batch_size else (), loop.create_future())
        pending.trace = tracing.current_span_context()
        pending.deadline_s = deadline_s
        if (
            rows_together
            and not (self._live or self._on_worker or self._run_now or self.waits)
            and self._runs_inline([pending])
        ):
            pending.taken, pending.counted = True, False
            self._run_now += 1
            try:
                await self._execute(loop, [pending], None)
            except BaseException:  # cancelled while it went on on a worker thread
                if pending.future.done() and not pending.future.cancelled():
                    pending.future.exception()  # retrieved: the cancellation goes up instead
                raise
            finally:
                self._run_now -= 1
                if self._queue and self._arrived is not None:
                    self._arrived.set()  # requests queued while it went on on a worker thread
            return pending.future.result()
        self._queue.append(pending)
        self._live += 1
        self._live_rows += rows
        assert self._arrived is not None
        self._arrived.set()
        timer = None if deadline_s is None else loop.call_later(deadline_s - time.monotonic(), self._expire, pending)
        try:
            return await pending.future
        finally:  # answered, expired or cancelled: a request still queued frees its slot now
            if timer is not None:
                timer.cancel()
            self._forget(pending)
            # Entries answered while queued stay in the deque until passed over; when they
            # outnumber the live ones it is rebuilt (never inside _take, which holds the deque).
            if len(self._queue) > 2 * self._live + 64:
                self._queue = collections.deque(p for p in self._queue if p.counted)

    def _forget(self, pending: _Pending) -> None:
        """``pending`` leaves the queue's count: taken into a batch, or answered while queued."""
        if not pending.counted:
            return
        pending.counted = False
        self._live -= 1
        self._live_rows -= pending.rows

    def _expire(self, pending: _Pending) -> None:
        """A request's deadline passed: answer it now. Still queued, it is dropped (``_take``
        skips answered requests) and counted; already in a running batch, its result is dropped."""
        if pending.future.done():
            return
        queued = not pending.taken
        waited_ns = time.monotonic_ns() - pending.enqueued_ns
        where = "in the queue; the model did not run it" if queued else "while its batch ran"
        pending.future.set_exception(DeadlineExceededError(f"deadline exceeded after {waited_ns / 1e6:.1f} ms {where}"))
        if queued:
            self._forget(pending)
            self._report_dropped(waited_ns)

    def _report_dropped(self, waited_ns: int) -> None:
        if self._observer is not None:
            try:
                self._observer.on_deadline_dropped(waited_ns)
            except Exception:
                log.exception("deadline observer failed")

    async def close(self) -> None:
        """Stop the worker. Requests still waiting, and a batch cut short, are answered
        UNAVAILABLE (503); later submits are refused the same way."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        running = list(self._on_worker)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._fail_queued(ModelNotReadyError("model version was unloaded"))

    def _fail_queued(self, error: ServingError) -> None:
        while self._queue:
            p = self._queue.popleft()
            self._forget(p)
            if not p.future.done():
                p.future.set_exception(error)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """The worker only ends by close() or by dying: either way nobody would serve the queue."""
        if task.cancelled():
            self._fail_queued(ModelNotReadyError("model version was unloaded"))
            return
        exc = task.exception()
        log.error("batch worker died: %r", exc, exc_info=exc)
        self._fail_queued(ModelExecutionError(f"batch worker failed: {exc}"))

    async def _work(self) -> None:
        arrived = self._arrived
        assert arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue or self._run_now or not self._thread_for_next():
                arrived.clear()
                await arrived.wait()  # set by an arrival, and by a worker thread's batch ending
                continue
            waited = self.waits
            if waited:
                await self._fill(arrived)
            elif self._skip_waits:
                self._skip_waits -= 1
            batch = self._take()
            if self._adaptive and waited and len(batch) == 1 and batch[0].rows < self.max_batch_size:
                self._skip_waits = PROBE_EVERY - 1  # waiting found nobody: stop paying for it
            if not batch:
                continue
            if not self._on_worker and self._runs_inline(batch):
                await self._execute(loop, batch, None)
            else:
                self._hand_to_worker(loop, batch)

    def _thread_for_next(self) -> bool:
        """Whether the next batch is taken now: a worker thread is free, or every thread is busy
        and a full batch is waiting, which then queues behind them (one per thread at most), so a
        thread that ends its batch starts that one at once instead of waiting for this loop to
        wake, take and hand it over. Only a full batch: one taken early could not grow."""
        busy = len(self._on_worker)
        if busy < self._threads:
            return True
        return 0 < self.max_batch_size <= self._live_rows and busy < 2 * self._threads

    def _runs_inline(self, batch: list[_Pending]) -> bool:
        """Inline when recent batches were fast, scaled up for a batch with more rows than they had
        (a batch 4,000x larger than the last ones must not run on the loop, past any timeout)."""
        rows = sum(p.rows for p in batch)
        return (
            self._recent_ns is not None and self._recent_ns * max(1.0, rows / self._recent_rows) < self._inline_below_ns
        )

    def _hand_to_worker(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Run ``batch`` on a free worker thread; the loop goes on serving the queue meanwhile."""
        task = loop.create_task(self._execute(loop, batch, self._queue_run(loop, batch)))
        self._on_worker.add(task)
        task.add_done_callback(self._worker_batch_ended)

    def _queue_run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> _Handed:
        """Queue ``batch`` on the worker threads. Threads already shut down (a version being
        replaced) give a run that failed, which ``_execute`` answers like any other failure."""
        started: list[float] = []
        try:
            stacked = self._stack(batch, STACK_ON_LOOP_BYTES)
            running = self._workers.run(loop, self._compute, *stacked, started)
        except RuntimeError as exc:  # the threads are stopped
            running = loop.create_future()
            running.set_exception(ModelNotReadyError(f"the model version's worker threads are stopped: {exc}"))
        except Exception as exc:  # stacking failed (memory): the batch's run failed
            running = loop.create_future()
            running.set_exception(exc)
        return _Handed(running, started)

    def _worker_batch_ended(self, task: asyncio.Task[None]) -> None:
        self._on_worker.discard(task)
        if self._arrived is not None:
            self._arrived.set()  # the loop may take the next batch
        if not task.cancelled() and task.exception() is not None:  # _execute settles every future itself
            log.error("a batch ended in an unexpected error", exc_info=task.exception())

    async def _fill(self, arrived: asyncio.Event) -> None:
        """Wait until the queue holds a full batch or the oldest request's delay is up."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].enqueued_ns / 1e9 + self.max_queue_delay_s
        while self._live_rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            arrived.clear()
            # A timer that sets the event is cheaper than asyncio.wait_for (no task per wait).
            timer = loop.call_later(remaining, arrived.set)
            await arrived.wait()
            timer.cancel()

    def _take(self) -> list[_Pending]:
        q = self._queue
        now = time.monotonic()
        while q and (q[0].future.done() or self._drop_expired(q[0], now)):
            self._forget(q.popleft())  # answered already (cancelled by its caller, or its deadline passed)
        if not q:
            return []
        first = q.popleft()
        first.taken = True
        self._forget(first)
        batch = [first]
        if not self.max_batch_size:
            return batch
        rows, skipped = first.rows, []
        while q and rows < self.max_batch_size:
            p = q.popleft()
            if p.future.done() or self._drop_expired(p, now):
                self._forget(p)
                continue
            if p.key != first.key or rows + p.rows > self.max_batch_size:
                skipped.append(p)
                if rows + p.rows > self.max_batch_size:
                    break
                continue
            p.taken = True
            self._forget(p)
            batch.append(p)
            rows += p.rows
        q.extendleft(reversed(skipped))
        return batch

    def _drop_expired(self, p: _Pending, now: float) -> bool:
        """Answer a queued request whose deadline has passed (its timer may not have fired yet)."""
        if p.deadline_s is None or p.deadline_s > now:
            return False
        self._expire(p)
        return True

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], handed: _Handed | None) -> None:
        """Run one batch and settle every future in it, whatever happens (the finally).
        ``handed``: its run, already queued on the worker threads; None: run it inline."""
        start = time.monotonic_ns()
        rows = [p.rows for p in batch]
        error: ServingError | None = None
        timings = (0, 0, 0)
        try:
            computed = self._compute_inline(batch) if handed is None else None
            if computed is None:  # on a worker thread (handed there, or cut short inline)
                computed = await self._await_worker(batch, handed or self._queue_run(loop, batch))
            results, timings, start = computed
            now = time.monotonic()
            for p, out in zip(batch, results):
                if p.future.done():
                    continue
                if p.deadline_s is not None and p.deadline_s < now:  # ran inline past it: no timer fired
                    p.future.set_exception(DeadlineExceededError("deadline exceeded while its batch ran"))
                else:
                    p.future.set_result(out)
            took = sum(timings)
            if self._recent_ns is None:
                self._recent_ns, self._recent_rows = float(took), float(sum(rows))
            else:
                self._recent_ns = 0.8 * self._recent_ns + 0.2 * took
                self._recent_rows = 0.8 * self._recent_rows + 0.2 * sum(rows)
        except asyncio.CancelledError:
            error = self._abort or ModelNotReadyError("model version was unloaded while the batch ran")
            raise
        except Exception as exc:
            if isinstance(exc, ServingError):
                error = exc
            else:  # the model's own exception: its traceback to the log, the cause kept
                log.error("model execution failed on a batch of %d rows", sum(rows), exc_info=exc)
                error = ModelExecutionError(f"model failed: {exc}")
                error.__cause__ = exc
        finally:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error or ModelExecutionError("batch ended without an answer"))
            self._report(batch, start, timings, sum(rows), error)

    def _compute_inline(self, batch: list[_Pending]) -> _Computed | None:
        """Run a batch on the loop's thread. With an interruptible runtime the watchdog cuts a
        run short after ``INLINE_OVERRUN_S`` (None: run it on the worker instead, where the
        execution timeout applies; outputs of a cut run are never used, so the re-run is safe)."""
        stacked = self._stack(batch, None)  # (inline: stacked where it runs)
        if self._interrupt is None:  # only without an execution timeout: nothing is bounded
            return self._compute(*stacked)
        cuts = self._cuts
        started = self.inline_since = time.monotonic()
        if WATCHDOG.parked:  # after publishing the start: a watchdog parking now sees one or the other
            WATCHDOG.wake()
        try:
            return self._compute(*stacked)
        except Exception:
            # Cut during this run: run it again on the worker. (Even if the cut meant the run before,
            # a race of microseconds; and a real model failure fails again there, and is reported.)
            if self._cuts == cuts:
                raise
        finally:
            self.inline_since = None
            self._inline_last = started
        self._recent_ns = None  # measured again on the worker before anything runs inline
        log.warning("an inline batch ran past %.0f ms: cut short, run on the worker thread", INLINE_OVERRUN_S * 1e3)
        return None

    def cut_inline(self, started: float) -> None:
        """(The watchdog's thread) interrupt the inline run that began at ``started``, if it still runs."""
        if self.inline_since == started and self._interrupt is not None:
            self._cuts += 1
            try:
                self._interrupt()
            except Exception:
                log.exception("interrupting an inline execution that overran failed")

    def inline_recently(self, since: float) -> bool:
        return self._inline_last >= since

    async def _await_worker(self, batch: list[_Pending], handed: _Handed) -> _Computed:
        """Wait for a batch's run on a worker thread, bounded by the execution timeout counted
        from when a thread began it, or from when it was handed over while no thread has (the
        threads may hold other work ahead of it, a shadow copy's: one that keeps it from
        starting for as long is a hang too). A full batch queued behind a running one
        (:meth:`_thread_for_next`) starts within the timeout unless the one ahead hangs.

        Raises:
            ModelNotReadyError: the execution overran; the version is being replaced.
        """
        running, limit = handed.running, self._execution_timeout_s
        try:
            if limit is None:
                return await running
            while True:
                began = handed.started[0] if handed.started else handed.handed_at
                remaining = began + limit - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await asyncio.wait_for(asyncio.shield(running), remaining)
                except TimeoutError:
                    continue
            self._stop_execution()
            self._hung(batch)
            raise self._overran()
        finally:
            if not running.done():
                # Cancelled (an unload, a hang elsewhere) or overran: a run still queued never starts;
                # the outcome of one stuck in the model is dropped whenever it ends.
                running.cancel()

    def _overran(self) -> ModelNotReadyError:
        return ModelNotReadyError(
            f"model execution exceeded execution_timeout_s={self._execution_timeout_s:g}; the version is being reloaded"
        )

    def _stop_execution(self) -> None:
        """Ask the runtime to stop the execution that overran (frees its worker thread)."""
        if self._interrupt is not None:
            try:
                self._interrupt()
            except Exception:
                log.exception("interrupting an execution that overran failed")

    def _hung(self, batch: list[_Pending]) -> None:
        """The worker thread is stuck in the model: nothing queued here will run. Refuse new
        requests, answer the queued ones, and let the owner replace this batcher."""
        self._closed = True
        self._abort = ModelNotReadyError("the model version hung and is being reloaded; retry")
        self._fail_queued(self._abort)
        for task in self._on_worker:  # the other threads' batches: the lane they run on is abandoned
            if task is not asyncio.current_task():
                task.cancel()
        if self._observer is not None:
            try:
                self._observer.on_hung(self._execution_timeout_s or 0.0)
            except Exception:
                log.exception("hang observer failed")

    def _report(
        self,
        batch: list[_Pending],
        start: int,
        timings: tuple[int, int, int],
        rows: int,
        error: ServingError | None,
    ) -> None:
        """Statistics and tracing of one batch; a failure here is logged and never reaches requests."""
        t_in, t_infer, t_out = timings
        queue_ns = [max(0, start - p.enqueued_ns) for p in batch]
        try:
            if error is not None:
                t_infer = time.monotonic_ns() - start
            if self._observer:
                self._observer.on_batch(rows, queue_ns, t_in, t_infer, t_out, error is None)
            if any(p.trace for p in batch):
                tracing.record_batch(
                    self._trace_attributes, [p.trace for p in batch], queue_ns, start, t_in, t_infer, t_out, rows,
                    None if error is None else error.message,
                )  # fmt: skip
        except Exception:
            log.exception("recording a batch's statistics failed")

    def _stack(self, batch: list[_Pending], up_to_bytes: int | None) -> tuple[list[Arrays], list[int], int]:
        """The batch's inputs, stacked into one set of arrays here when they hold at most
        ``up_to_bytes`` (None: left to :meth:`_compute`); its requests' row counts; and the
        nanoseconds stacking took here."""
        t0 = time.monotonic_ns()
        items = [p.inputs for p in batch]
        if (
            len(items) > 1
            and up_to_bytes is not None
            and sum(a.nbytes for it in items for a in it.values()) <= up_to_bytes
        ):
            items = [concat_inputs(items)]
        return items, [p.rows for p in batch], time.monotonic_ns() - t0

    def _compute(
        self, items: list[Arrays], rows: list[int], stacked_ns: int, started: list[float] | None = None
    ) -> _Computed:
        t0 = time.monotonic_ns()
        if started is not None:
            started.append(t0 / 1e9)  # (read by the event loop's thread: the timeout's start)
        merged = concat_inputs(items)  # (one set already, unless it was left to this thread)
        t1 = time.monotonic_ns()
        outputs = self._run(merged)
        t2 = time.monotonic_ns()
        results = split_outputs(outputs, rows) if self.max_batch_size else [outputs]
        t3 = time.monotonic_ns()
        return _Computed(results, (stacked_ns + t1 - t0, t2 - t1, t3 - t2), t0 - stacked_ns)
