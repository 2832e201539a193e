"""The pipeline's coalescer alone: while a run is in progress, the requests of one loop turn run as
one set of rows, each keeping its own rows, deadline and cancellation; a request with no run in
progress runs at once, alone (a real pipeline through it: tests/unit/test_model_kinds.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from serving.errors import DeadlineExceededError, ModelExecutionError, ModelNotReadyError
from serving.pipeline.coalesce import Coalescer
from serving.rows import ROW_ERRORS

Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]


class Steps:
    """Stands for the pipeline's steps: records each run's rows, answers x * 10, optionally slowly."""

    def __init__(self, seconds: float = 0.0, fail: Exception | None = None) -> None:
        self.runs: list[tuple[int, float | None]] = []
        self.seconds = seconds
        self.fail = fail
        self.cancelled = 0

    async def __call__(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        x = inputs["x"]
        self.runs.append((len(x), deadline_s))
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        errors = np.array(["bad" if v == 13 else None for v in x[:, 0]], dtype=np.object_)
        return {"y": x * 10, **({ROW_ERRORS: errors} if (x == 13).any() else {})}


def rows(*values: float, dtype: Any = np.float32) -> Arrays:
    return {"x": np.array(values, dtype=dtype).reshape(-1, 1)}


def beside_a_run(together: Coalescer, values: range) -> tuple[asyncio.Future[Arrays], list[asyncio.Future[Arrays]]]:
    """A request of 0 that runs alone (nothing ran before it), then requests of ``values`` in the
    same turn, which join a group beside it."""
    alone = asyncio.ensure_future(together.submit(rows(0), None))
    return alone, [asyncio.ensure_future(together.submit(rows(v), None)) for v in values]


async def test_a_lone_request_runs_at_once_and_alone() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=64)
    for v in range(3):
        assert (await together.submit(rows(v), None))["y"][0, 0] == v * 10
    assert steps.runs == [(1, None)] * 3


async def test_requests_of_one_turn_run_once_beside_the_run_in_progress_and_each_gets_its_own_rows() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=64)
    answers = await asyncio.gather(*(together.submit(rows(v, v + 0.5), None) for v in range(8)))
    assert steps.runs == [(2, None), (14, None)]  # the first alone (nothing ran), then the other seven
    for v, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], rows(v * 10, (v + 0.5) * 10)["x"])


async def test_a_group_holds_at_most_max_rows_and_a_large_request_runs_alone() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=4)
    await asyncio.gather(*(together.submit(rows(v), None) for v in range(6)), together.submit(rows(1, 2, 3, 4), None))
    assert sorted(n for n, _ in steps.runs) == [1, 1, 4, 4]  # the first alone, 4 + 1, the large one alone


async def test_requests_that_cannot_share_rows_run_apart() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=64)
    wide = {"x": np.ones((1, 2), dtype=np.float32)}
    await asyncio.gather(
        together.submit(rows(0), None),
        together.submit(rows(1), None),
        together.submit(rows(2, dtype=np.float64), None),
        together.submit(wide, None),
        together.submit(rows(3), None),
    )
    assert [n for n, _ in steps.runs] == [1, 2, 1, 1]  # alone; then float32 [1] x 2, float64, [2]


async def test_a_row_error_stays_with_its_own_request() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=64)
    _, first, failing, last = await asyncio.gather(*(together.submit(rows(v), None) for v in (0, 1, 13, 3)))
    assert list(failing[ROW_ERRORS]) == ["bad"]
    assert list(first[ROW_ERRORS]) == [None] and list(last[ROW_ERRORS]) == [None]
    assert [n for n, _ in steps.runs] == [1, 3]


async def test_each_request_keeps_its_own_deadline_and_the_group_runs_to_the_latest() -> None:
    steps = Steps(seconds=0.3)
    together = Coalescer(steps, max_rows=64)
    now = time.monotonic()
    _, early, late, unbounded = await asyncio.gather(
        together.submit(rows(0), None), together.submit(rows(1), now + 0.05), together.submit(rows(2), now + 60),
        together.submit(rows(3), None), return_exceptions=True,
    )  # fmt: skip
    assert isinstance(early, DeadlineExceededError)
    assert isinstance(late, dict) and isinstance(unbounded, dict)
    assert steps.runs[1] == (3, None)  # a member without a deadline: the group has none
    now = time.monotonic()
    await asyncio.gather(*(together.submit(rows(v), now + 30 * v) for v in (1, 1, 2)))
    assert steps.runs[-1] == (2, now + 60)


async def test_a_failure_of_the_whole_run_fails_every_request_of_the_group() -> None:
    steps = Steps(fail=ModelExecutionError("step 'a' failed"))
    together = Coalescer(steps, max_rows=64)
    answers = await asyncio.gather(*(together.submit(rows(v), None) for v in range(4)), return_exceptions=True)
    assert all(isinstance(a, ModelExecutionError) and "step 'a'" in a.message for a in answers)
    assert [n for n, _ in steps.runs] == [1, 3]


async def test_one_cancelled_request_leaves_the_group_running_and_the_last_one_stops_it() -> None:
    steps = Steps(seconds=0.2)
    together = Coalescer(steps, max_rows=64)
    alone, calls = beside_a_run(together, range(1, 4))
    await asyncio.sleep(0.05)
    calls[0].cancel()
    assert (await calls[1])["y"][0, 0] == 20 and (await calls[2])["y"][0, 0] == 30
    assert calls[0].cancelled() and steps.cancelled == 0
    await alone

    alone, calls = beside_a_run(together, range(1, 3))
    await asyncio.sleep(0.05)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)
    assert steps.cancelled == 1  # nobody waits for the group's rows any more: the steps let them go
    await alone


async def test_a_request_cancelled_before_its_group_starts_runs_nothing() -> None:
    steps = Steps()
    together = Coalescer(steps, max_rows=64)
    alone, (call,) = beside_a_run(together, range(1, 2))
    await asyncio.sleep(0)  # it is queued in a group that starts on the next turn
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    await alone
    late = await together.submit(rows(2), None)  # a later request is not stuck behind the stopped group
    assert late["y"][0, 0] == 20
    assert steps.runs == [(1, None), (1, None)]


async def test_close_answers_the_grouped_requests_in_progress_unavailable() -> None:
    steps = Steps(seconds=30)
    together = Coalescer(steps, max_rows=64)
    alone, calls = beside_a_run(together, range(1, 3))
    await asyncio.sleep(0.05)
    await together.close()
    alone.cancel()  # a request alone runs in its own task: its caller's cancellation stops it
    for call in calls:
        with pytest.raises(ModelNotReadyError, match="stopped"):
            await call
    await asyncio.gather(alone, return_exceptions=True)


class GatedSteps:
    """Stands for the pipeline's steps: each run holds until its gate opens; answers x * 10."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        self.runs.append(len(inputs["x"]))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return {"y": inputs["x"] * 10}


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_while_groups_at_once_run_later_requests_wait_and_then_run_as_one_group() -> None:
    from serving.pipeline.coalesce import GROUPS_AT_ONCE

    steps = GatedSteps()
    together = Coalescer(steps, max_rows=64)
    calls = [asyncio.ensure_future(together.submit(rows(0), None))]  # alone: nothing ran
    for v in range(1, GROUPS_AT_ONCE + 1):  # one group per turn, each started
        calls.append(asyncio.ensure_future(together.submit(rows(v), None)))
        await turns()
    assert steps.runs == [1] * (GROUPS_AT_ONCE + 1)
    for v in range(GROUPS_AT_ONCE + 1, GROUPS_AT_ONCE + 4):  # three more turns: they wait, together
        calls.append(asyncio.ensure_future(together.submit(rows(v), None)))
        await turns()
    assert steps.runs == [1] * (GROUPS_AT_ONCE + 1)
    steps.gates[1].set()  # the first group ends: the waiting one starts with every request that came
    await turns()
    assert steps.runs == [1] * (GROUPS_AT_ONCE + 1) + [3]
    for gate in steps.gates:
        gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert [a["y"][0, 0] for a in answers] == [v * 10 for v in range(GROUPS_AT_ONCE + 4)]


async def test_close_answers_the_waiting_groups_unavailable_and_a_cancelled_one_never_runs() -> None:
    from serving.pipeline.coalesce import GROUPS_AT_ONCE

    steps = GatedSteps()
    together = Coalescer(steps, max_rows=64)
    alone = asyncio.ensure_future(together.submit(rows(0), None))
    running = []
    for v in range(1, GROUPS_AT_ONCE + 1):
        running.append(asyncio.ensure_future(together.submit(rows(v), None)))
        await turns()
    given_up = asyncio.ensure_future(together.submit(rows(7), None))
    await turns()
    given_up.cancel()  # its group waits; nobody waits for it any more
    await asyncio.gather(given_up, return_exceptions=True)
    steps.gates[1].set()
    await turns()
    assert len(steps.runs) == GROUPS_AT_ONCE + 1  # the abandoned group was dropped, not run
    waiting = asyncio.ensure_future(together.submit(rows(8), None))
    await turns()
    assert len(steps.runs) == GROUPS_AT_ONCE + 2  # a slot was free: it started at once
    late = [asyncio.ensure_future(together.submit(rows(9), None))]
    await turns()
    await together.close()
    for call in [*running[1:], waiting, *late]:
        with pytest.raises(ModelNotReadyError):
            await asyncio.wait_for(call, 5)
    assert (await asyncio.wait_for(running[0], 5))["y"][0, 0] == 10
    steps.gates[0].set()
    assert (await asyncio.wait_for(alone, 5))["y"][0, 0] == 0
