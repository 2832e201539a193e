"""A model version's worker threads: the event loop hands them runs through one queue, and each
answer comes back with one ``call_soon_threadsafe``.

Why not ``loop.run_in_executor``: it chains a ``concurrent.futures`` future to an asyncio one in
both directions (a lock, a condition and two callbacks a run). Measured under uvloop, one empty run
at a time (``bench/handoff.py``): the executor's hand-off costs the event loop thread 41-48 us of
CPU and 77-86 us of wall time a run; this one 20-30 and 49-75 us. The event loop is what a replica
runs out of first, and a batch-1 request or a pipeline's set of rows pays one or more hand-offs.

What it keeps of an executor: a run whose future is cancelled before a thread takes it never runs;
``stop`` takes no more work and lets the threads end once what is queued has run; and
:meth:`ended` waits, without blocking the loop, until every thread has. Its threads are daemons:
one stuck in a model that hung (abandoned by a reload) does not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Run:
    """One piece of work; ``future`` (on ``loop``) gets its outcome, or None: nobody waits for it."""

    __slots__ = ("args", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        self.fn, self.args, self.loop, self.future = fn, args, loop, future

    def __call__(self) -> None:
        future, loop = self.future, self.loop
        if future is None or loop is None:
            try:
                self.fn(*self.args)
            except BaseException:  # the thread goes on serving
                log.exception("work queued on a worker thread failed")
            return
        if future.cancelled():  # cancelled before it started: it never runs
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # the caller's to handle, as an executor does
            _answer(loop, future, None, exc)
        else:
            _answer(loop, future, result, None)


def _answer(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, result, exc)
    except RuntimeError:  # the loop is closed: nobody is left to answer
        pass


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """(On the loop) a future cancelled meanwhile, by a timeout or a close, drops the late outcome."""
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class WorkerThreads:
    """``count`` threads serving one queue of work, named ``name_0``, ``name_1``, ..."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError("count must be an integer >= 1")
        self.count = count
        self._queue: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
        self._stopped = False
        self._lock = threading.Lock()
        self._alive = count
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        for i in range(count):
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True).start()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on a free thread; its result or exception on the returned future (of
        ``loop``). Cancelling the future before a thread takes the run keeps it from running.

        Raises:
            RuntimeError: the threads are stopped.
        """
        self._refuse_if_stopped()  # (before a future is made that nothing would settle)
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Run(fn, args, loop, future))
        return future

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` on a free thread, answered to nobody (its exception is logged).

        Raises:
            RuntimeError: the threads are stopped.
        """
        self._refuse_if_stopped()
        self._queue.put(_Run(fn, args, None, None))

    def _refuse_if_stopped(self) -> None:
        if self._stopped:
            raise RuntimeError("the worker threads are stopped")

    def stop(self) -> None:
        """Take no more work; each thread ends once the work queued before this has run."""
        if self._stopped:
            return
        self._stopped = True
        for _ in range(self.count):
            self._queue.put(None)

    async def ended(self, timeout_s: float) -> bool:
        """After :meth:`stop`: wait until every thread has ended, at most ``timeout_s``; False when
        one still runs (stuck in a model that hung), which is then left to itself."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self._alive:
                return True
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
        return True

    def _serve(self) -> None:
        try:
            while (run := self._queue.get()) is not None:
                run()
        finally:
            self._thread_ended()

    def _thread_ended(self) -> None:
        with self._lock:
            self._alive -= 1
            if self._alive:
                return
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            _answer(loop, future, None, None)
