"""The worker threads a model version's batches run on: what they keep of an executor (a run
cancelled before it starts never runs, a stop lets queued work finish, ``ended`` never blocks the
loop), and that no outcome or failure is lost."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from serving.worker_threads import WorkerThreads


async def test_a_run_answers_its_result_or_its_exception_on_the_loop() -> None:
    workers = WorkerThreads(2, "test")
    loop = asyncio.get_running_loop()
    assert await workers.run(loop, lambda a, b: a + b, 2, 3) == 5
    names = await workers.run(loop, lambda: threading.current_thread().name)
    assert names.startswith("test_")

    def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await workers.run(loop, fails)
    workers.stop()
    assert await workers.ended(5)


async def test_a_run_cancelled_before_a_thread_takes_it_never_runs() -> None:
    workers = WorkerThreads(1, "test")
    loop = asyncio.get_running_loop()
    gate, ran = threading.Event(), threading.Event()
    busy = workers.run(loop, gate.wait, 5)  # holds the only thread
    queued = workers.run(loop, ran.set)
    queued.cancel()
    gate.set()
    assert await busy is True
    assert await workers.run(loop, lambda: "after") == "after"  # the cancelled one was passed over
    assert not ran.is_set()
    workers.stop()
    assert await workers.ended(5)


async def test_an_outcome_that_comes_after_its_future_was_cancelled_is_dropped() -> None:
    workers = WorkerThreads(1, "test")
    loop = asyncio.get_running_loop()
    gate = threading.Event()

    def slow_failure() -> None:
        gate.wait(5)
        raise RuntimeError("too late")

    running = workers.run(loop, slow_failure)
    await asyncio.sleep(0.05)  # the thread has taken it
    running.cancel()
    gate.set()
    assert await workers.run(loop, lambda: 1) == 1  # the late outcome was settled (dropped) before this
    assert running.cancelled()
    workers.stop()
    assert await workers.ended(5)


async def test_stop_refuses_new_work_and_lets_what_is_queued_run() -> None:
    workers = WorkerThreads(2, "test")
    loop = asyncio.get_running_loop()
    done: list[int] = []
    gate = threading.Event()
    first = workers.run(loop, gate.wait, 5)
    workers.call(done.append, 1)
    workers.call(done.append, 2)
    workers.stop()
    workers.stop()  # twice is once
    with pytest.raises(RuntimeError, match="stopped"):
        workers.run(loop, done.append, 3)
    with pytest.raises(RuntimeError, match="stopped"):
        workers.call(done.append, 3)
    gate.set()
    assert await workers.ended(5)
    assert await first is True
    assert sorted(done) == [1, 2]


async def test_ended_gives_up_on_a_stuck_thread_without_blocking_the_loop() -> None:
    workers = WorkerThreads(1, "test")
    gate = threading.Event()
    workers.call(gate.wait, 10)
    workers.stop()
    waiting = asyncio.ensure_future(workers.ended(0.3))
    await asyncio.sleep(0.05)  # the loop goes on with other work meanwhile
    assert not waiting.done()
    assert not await waiting
    gate.set()
    assert await workers.ended(5)


async def test_work_answered_to_nobody_that_fails_is_logged_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = WorkerThreads(1, "test")

    def broken() -> None:
        raise ValueError("shadow copy failed")

    with caplog.at_level(logging.ERROR):
        workers.call(broken)
        assert await workers.run(asyncio.get_running_loop(), lambda: "still serving") == "still serving"
    assert "shadow copy failed" in caplog.text
    workers.stop()
    assert await workers.ended(5)


def test_threads_are_daemons_and_count_at_least_one() -> None:
    with pytest.raises(ValueError, match="count"):
        WorkerThreads(0, "test")
    workers = WorkerThreads(2, "daemon-check")
    mine = [t for t in threading.enumerate() if t.name.startswith("daemon-check_")]
    assert len(mine) == 2 and all(t.daemon for t in mine)
    workers.stop()
    for t in mine:
        t.join(5)
        assert not t.is_alive()
