"""Requests to one pipeline that arrive together run through its steps together.

Each step batches in its own model's batcher, but a request that goes through the steps alone
pays every step's queueing (a future, a wake-up, a concatenation and a split) for itself. The
requests that reach a pipeline while a run is in progress are stacked here and go through the
steps as one set of rows: each step sees one request for all of them. Nothing waits for company:
while no run is in progress a request runs at once, alone (a lone caller pays nothing here); a
group starts on the loop's next turn (the requests of that turn join it), or, while
``GROUPS_AT_ONCE`` groups run, as soon as one of them ends, taking every request that came
meanwhile. Its rows would wait in the steps' queues anyway, and a set of rows costs the event
loop the same Python for a few requests as for many (measured over gRPC at 64 clients: the
branching pipeline of ``bench/image_pipeline.py``, 1.08-1.24x in three runs with 2 groups at
once against any number).

Each request keeps its own deadline and cancellation. A group stops once none of its requests
waits for it any more; a step that fails as a whole fails every request of the group, as it
fails every request of one batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving.batching import Arrays, batch_key, concat_inputs, split_outputs
from serving.errors import DeadlineExceededError, ModelNotReadyError

GROUPS_AT_ONCE = 2
"""Groups of one pipeline running at once: one in the first steps while another finishes, so
that steps on different resources still overlap; the requests that come meanwhile wait here."""

RunRows = Callable[[Arrays, "float | None"], Awaitable[Arrays]]
"""Runs rows through the pipeline's steps until a deadline (``time.monotonic()``, None: none)."""


@dataclass(slots=True, eq=False)
class _Member:
    inputs: Arrays
    rows: int
    deadline_s: float | None
    future: asyncio.Future[Arrays]


@dataclass(slots=True, eq=False)
class _Group:
    members: list[_Member] = field(default_factory=list)
    rows: int = 0
    closed: bool = False
    """Started (or stopped): no request joins it any more."""
    task: asyncio.Task[None] | None = None
    """Its run, once started (None: waiting for a running group to end)."""

    def waited_for(self) -> bool:
        return any(not m.future.done() for m in self.members)


class Coalescer:
    """Stacks the requests that come while runs are in progress, up to ``max_rows`` rows, into one run."""

    def __init__(self, run: RunRows, max_rows: int) -> None:
        self._run = run
        self._max_rows = max_rows
        self._open: dict[tuple[object, ...], _Group] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._busy = 0
        """Runs in progress (a request alone and the groups): while none is, a request runs at once."""
        self._waiting: collections.deque[tuple[tuple[object, ...], _Group]] = collections.deque()
        """Groups not started yet, oldest first (with their key)."""

    async def submit(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        """The pipeline's outputs for ``inputs`` (rows first), run with the requests that come with it.

        Raises:
            DeadlineExceededError: ``deadline_s`` passed before the answer.
            ServingError: the pipeline failed as a whole (each step's own errors).
        """
        rows = len(next(iter(inputs.values())))
        if rows >= self._max_rows or not self._busy:  # alone: it runs at once, in its own task
            self._busy += 1
            try:
                return await self._run(inputs, deadline_s)
            finally:
                self._busy -= 1
        loop = asyncio.get_running_loop()
        key = batch_key(inputs)
        group = self._open.get(key)
        if group is None or group.closed or group.rows + rows > self._max_rows:
            group = self._open[key] = _Group()
            self._waiting.append((key, group))
        member = _Member(inputs, rows, deadline_s, loop.create_future())
        group.members.append(member)
        group.rows += rows
        if group.task is None:
            self._start_waiting(loop)
        timer = None if deadline_s is None else loop.call_later(deadline_s - time.monotonic(), _expire, member)
        try:
            return await member.future
        finally:
            if timer is not None:
                timer.cancel()
            if group.task is not None and not group.task.done() and not group.waited_for():
                group.closed = True
                group.task.cancel()  # nobody waits for these rows any more: the steps let them go

    async def _run_group(self, group: _Group) -> None:
        group.closed = True
        members = [m for m in group.members if not m.future.done()]
        if not members:
            return
        try:
            deadlines = [m.deadline_s for m in members]
            latest = None if None in deadlines else max(d for d in deadlines if d is not None)
            outputs = await self._run(concat_inputs([m.inputs for m in members]), latest)
            answers = split_outputs(outputs, [m.rows for m in members])
        except Exception as exc:
            for m in members:
                if not m.future.done():
                    m.future.set_exception(exc)
            return
        for m, out in zip(members, answers, strict=True):
            if not m.future.done():
                m.future.set_result(out)

    def _start_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the waiting groups, oldest first, while fewer than ``GROUPS_AT_ONCE`` run; one
        that nobody waits for any more is dropped."""
        while self._waiting and len(self._running) < GROUPS_AT_ONCE:
            key, group = self._waiting.popleft()
            if not group.waited_for():
                self._close(key, group)
                continue
            # It runs from the loop's next turn, once the requests of this one have joined; in a
            # context of its own, as it belongs to no one request (its logs, its spans).
            task = group.task = loop.create_task(self._run_group(group), context=contextvars.Context())
            self._running.add(task)
            self._busy += 1
            task.add_done_callback(functools.partial(self._ended, key, group))

    def _close(self, key: tuple[object, ...], group: _Group) -> None:
        group.closed = True
        if self._open.get(key) is group:
            del self._open[key]

    def _ended(self, key: tuple[object, ...], group: _Group, task: asyncio.Task[None]) -> None:
        """A run ended, however (stopped before or while it ran included): every request is
        answered, and the oldest waiting group starts."""
        self._running.discard(task)
        self._busy -= 1
        self._close(key, group)
        for m in group.members:
            if not m.future.done():
                m.future.set_exception(ModelNotReadyError("the pipeline's run was stopped"))
        self._start_waiting(task.get_loop())

    async def close(self) -> None:
        """Stop the grouped runs in progress and answer the waiting groups' requests UNAVAILABLE;
        a request running alone belongs to its caller's task."""
        waiting, self._waiting = self._waiting, collections.deque()
        for key, group in waiting:
            self._close(key, group)
            for m in group.members:
                if not m.future.done():
                    m.future.set_exception(ModelNotReadyError("the pipeline was unloaded"))
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _expire(member: _Member) -> None:
    if not member.future.done():
        member.future.set_exception(DeadlineExceededError("deadline exceeded while the pipeline ran"))
