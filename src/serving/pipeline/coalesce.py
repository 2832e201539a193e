"""Requests to one pipeline that arrive together run through its steps together.

Each step batches in its own model's batcher, but a request that goes through the steps alone
pays every step's queueing (a future, a wake-up, a concatenation and a split) for itself. The
requests that reach a pipeline in the same turn of the event loop (a front end hands the loop
every call it has taken at once; the callers that one step batch answers all come back in the
next turn) are stacked here and go through the steps as one set of rows: each step sees one
request for all of them. Nothing waits for company: a group closes when the loop next turns,
and while no run is in progress a request runs at once, alone (a lone caller pays nothing here).

Each request keeps its own deadline and cancellation. A group stops once none of its requests
waits for it any more; a step that fails as a whole fails every request of the group, as it
fails every request of one batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving.batching import Arrays, batch_key, concat_inputs, split_outputs
from serving.errors import DeadlineExceededError, ModelNotReadyError

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
    task: asyncio.Task[None] = field(init=False)

    def waited_for(self) -> bool:
        return any(not m.future.done() for m in self.members)


class Coalescer:
    """Stacks the requests of one event-loop turn, up to ``max_rows`` rows, into one run."""

    def __init__(self, run: RunRows, max_rows: int) -> None:
        self._run = run
        self._max_rows = max_rows
        self._open: dict[tuple[object, ...], _Group] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._busy = 0
        """Runs in progress (a request alone and the groups): while none is, a request runs at once."""

    async def submit(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        """The pipeline's outputs for ``inputs`` (rows first), run with the requests of this turn.

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
            # The run starts in the loop's next turn, once the requests of this one have joined;
            # in a context of its own, as it belongs to no one request (its logs, its spans).
            group.task = loop.create_task(self._run_group(group), context=contextvars.Context())
            self._running.add(group.task)
            self._busy += 1
            group.task.add_done_callback(lambda _: self._ended(key, group))
        member = _Member(inputs, rows, deadline_s, loop.create_future())
        group.members.append(member)
        group.rows += rows
        timer = None if deadline_s is None else loop.call_later(deadline_s - time.monotonic(), _expire, member)
        try:
            return await member.future
        finally:
            if timer is not None:
                timer.cancel()
            if not group.task.done() and not group.waited_for():
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

    def _ended(self, key: tuple[object, ...], group: _Group) -> None:
        """A run ended, however (stopped before or while it ran included): every request is answered."""
        self._running.discard(group.task)
        self._busy -= 1
        group.closed = True
        if self._open.get(key) is group:
            del self._open[key]
        for m in group.members:
            if not m.future.done():
                m.future.set_exception(ModelNotReadyError("the pipeline's run was stopped"))

    async def close(self) -> None:
        """Stop the grouped runs in progress (their requests are answered UNAVAILABLE); a request
        running alone belongs to its caller's task."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _expire(member: _Member) -> None:
    if not member.future.done():
        member.future.set_exception(DeadlineExceededError("deadline exceeded while the pipeline ran"))
