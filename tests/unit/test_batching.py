"""The batcher with real coroutines and a real worker thread; ordering is forced with
events, never with sleeps or timing asserts."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.batching import DynamicBatcher, concat_inputs, split_outputs
from serving.errors import DeadlineExceededError, InvalidInputError, ModelExecutionError, QueueFullError
from serving.worker_threads import WorkerThreads

Arrays = dict[str, np.ndarray[Any, Any]]


class GatedModel:
    """Doubles ``x``; the first call blocks until ``release`` is set. Records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, inputs: Arrays) -> Arrays:
        self.batches.append(int(inputs["x"].shape[0]))
        self.started.set()
        self.release.wait(5)
        return {"y": inputs["x"] * 2}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    def on_batch(self, rows: int, queue_ns: Any, input_ns: int, infer_ns: int, output_ns: int, ok: bool) -> None:
        self.calls.append((rows, len(queue_ns), ok))


@pytest.fixture
async def workers() -> Any:
    workers = WorkerThreads(1, "test-model")
    yield workers
    workers.stop()
    assert await workers.ended(5)


def x(rows: int, value: float = 1.0, width: int = 3) -> Arrays:
    return {"x": np.full((rows, width), value, np.float32)}


async def wait_for(event: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait, 5)


async def test_requests_waiting_behind_a_batch_run_together_and_split_back(workers: Any) -> None:
    model, rec = GatedModel(), Recorder()
    b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0, max_queue_size=16, workers=workers, observer=rec)
    first = asyncio.ensure_future(b.submit(x(1, 0)))
    await wait_for(model.started)
    rest = [asyncio.ensure_future(b.submit(x(rows, value))) for rows, value in [(1, 1), (3, 2), (2, 3)]]
    await asyncio.sleep(0)
    model.release.set()
    results = await asyncio.gather(first, *rest)
    assert model.batches == [1, 6]
    assert [r["y"].shape[0] for r in results] == [1, 1, 3, 2]
    for r, value in zip(results, [0, 1, 2, 3]):
        np.testing.assert_array_equal(r["y"], np.full_like(r["y"], value * 2))
    assert rec.calls == [(1, 1, True), (6, 3, True)]


async def test_max_batch_size_caps_rows_per_execution(workers: Any) -> None:
    model = GatedModel()
    b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0, max_queue_size=16, workers=workers)
    first = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(model.started)
    rest = [asyncio.ensure_future(b.submit(x(3))) for _ in range(3)]
    await asyncio.sleep(0)
    model.release.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [1, 3, 3, 3]
    assert max(model.batches) <= 4


async def test_full_batch_flushes_without_waiting_for_the_delay(workers: Any) -> None:
    model = GatedModel()
    model.release.set()
    # A one-hour delay: only a full batch can make this test finish.
    b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=3600, max_queue_size=16, workers=workers)
    results = await asyncio.wait_for(asyncio.gather(*[b.submit(x(1)) for _ in range(4)]), 10)
    assert model.batches == [4]
    assert len(results) == 4


async def test_incompatible_shapes_do_not_share_a_batch(workers: Any) -> None:
    model = GatedModel()
    b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0, max_queue_size=16, workers=workers)
    first = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(model.started)
    rest = [asyncio.ensure_future(b.submit(x(1, width=w))) for w in (3, 5, 3, 5)]
    await asyncio.sleep(0)
    model.release.set()
    results = await asyncio.gather(first, *rest)
    assert model.batches == [1, 2, 2]
    assert [r["y"].shape for r in results] == [(1, 3), (1, 3), (1, 5), (1, 3), (1, 5)]


async def test_queue_full_is_rejected_at_once(workers: Any) -> None:
    model = GatedModel()
    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=2, workers=workers)
    running = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(model.started)
    queued = [asyncio.ensure_future(b.submit(x(1))) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="full"):
        await b.submit(x(1))
    model.release.set()
    await asyncio.gather(running, *queued)
    assert b.queue_depth == 0


async def test_a_request_larger_than_max_batch_size_is_invalid(workers: Any) -> None:
    b = DynamicBatcher(GatedModel(), max_batch_size=2, max_queue_delay_s=0, max_queue_size=2, workers=workers)
    with pytest.raises(InvalidInputError, match="exceeds the model's max_batch_size 2"):
        await b.submit(x(3))


async def test_wrong_output_rows_fail_only_that_batch(workers: Any) -> None:
    calls = []

    def model(inputs: Arrays) -> Arrays:
        calls.append(inputs["x"].shape[0])
        if len(calls) == 1:
            return {"y": inputs["x"][:1]}
        return {"y": inputs["x"]}

    rec = Recorder()
    b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=3600, max_queue_size=8, workers=workers, observer=rec)
    failed = await asyncio.gather(*[b.submit(x(1)) for _ in range(4)], return_exceptions=True)
    assert all(isinstance(e, ModelExecutionError) and "expected 4 rows" in e.message for e in failed)
    ok = await asyncio.gather(*[b.submit(x(1)) for _ in range(4)])
    assert len(ok) == 4
    assert [c[2] for c in rec.calls] == [False, True]


async def test_unbatched_model_gets_each_request_alone(workers: Any) -> None:
    seen = []

    def model(inputs: Arrays) -> Arrays:
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"]}

    b = DynamicBatcher(model, max_batch_size=0, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    await asyncio.gather(*[b.submit({"x": np.zeros((5,), np.float32)}) for _ in range(3)])
    assert seen == [(5,), (5,), (5,)]


async def test_model_exception_becomes_model_execution_error(workers: Any) -> None:
    def model(inputs: Arrays) -> Arrays:
        raise RuntimeError("boom")

    b = DynamicBatcher(model, max_batch_size=2, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    with pytest.raises(ModelExecutionError, match="boom"):
        await b.submit(x(1))


def test_parameters_are_validated_at_construction(workers: Any) -> None:
    for kwargs in ({"max_batch_size": -1}, {"max_queue_delay_s": -0.1}, {"max_queue_size": 0}):
        args: dict[str, Any] = {"max_batch_size": 1, "max_queue_delay_s": 0, "max_queue_size": 1, **kwargs}
        with pytest.raises(ValueError):
            DynamicBatcher(lambda a: a, workers=workers, **args)


def test_concat_and_split_are_inverse() -> None:
    parts = [x(1, 1), x(2, 2), x(3, 3)]
    merged = concat_inputs(parts)
    assert merged["x"].shape == (6, 3)
    back = split_outputs(merged, [1, 2, 3])
    for a, b in zip(parts, back):
        np.testing.assert_array_equal(a["x"], b["x"])


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=20))
def test_split_gives_each_request_its_own_rows_as_views_of_the_batch(rows: list[int]) -> None:
    total = sum(rows)
    outputs = {
        "y": np.arange(total * 6, dtype=np.float32).reshape(total, 2, 3),
        "label": np.array([str(i).encode() for i in range(total)], dtype=np.object_).reshape(total, 1),
    }
    parts = split_outputs(outputs, rows)
    assert len(parts) == len(rows)
    start = 0
    for n, part in zip(rows, parts, strict=True):
        for name, arr in outputs.items():
            np.testing.assert_array_equal(part[name], arr[start : start + n])
            assert part[name].base is arr or part[name].base is arr.base  # a view, no copy
        start += n


def test_split_refuses_an_output_without_one_row_per_input_row() -> None:
    with pytest.raises(ModelExecutionError, match="expected 3 rows"):
        split_outputs({"y": np.zeros((2, 1))}, [1, 2])
    with pytest.raises(ModelExecutionError):
        split_outputs({"y": np.float32(1.0)}, [1])


async def test_fast_batches_run_inline_and_slow_ones_on_the_worker(workers: Any) -> None:
    threads: list[str] = []
    slow = threading.Event()

    def model(inputs: Arrays) -> Arrays:
        threads.append(threading.current_thread().name)
        if slow.is_set():
            time.sleep(0.01)  # 10 ms, above the 5 ms inline bound
        return {"y": inputs["x"]}

    b = DynamicBatcher(
        model, max_batch_size=4, max_queue_delay_s=0, max_queue_size=8, workers=workers, inline_below_s=0.005
    )
    for _ in range(3):
        await b.submit(x(1))
    loop_thread = threading.current_thread().name
    assert threads[0] != loop_thread  # nothing measured yet: the worker runs it
    assert threads[1:] == [loop_thread, loop_thread]  # fast: inline
    slow.set()
    for _ in range(12):
        await b.submit(x(1))
    assert threads[-1] != loop_thread  # slow executions moved it back to the worker


def fast_batcher(model: Any, workers: Any, **kw: Any) -> DynamicBatcher:
    """Up to 8 rows a batch, no delay, inline once measured below 1 s (every run here)."""
    return DynamicBatcher(
        model, max_batch_size=8, max_queue_delay_s=0, max_queue_size=8, workers=workers, inline_below_s=1.0, **kw
    )


async def test_rows_already_together_run_in_the_callers_task_when_the_batcher_is_idle(workers: Any) -> None:
    """A pipeline's set of rows (``rows_together``) on an idle batcher whose runs go inline runs
    at once in the caller's own task, and is reported as a batch like any other; a lone request
    without it still goes through the batcher's task."""
    tasks: list[asyncio.Task[Any] | None] = []

    def model(inputs: Arrays) -> Arrays:
        try:
            tasks.append(asyncio.current_task())
        except RuntimeError:  # no loop in this thread: a worker thread
            tasks.append(None)
        return {"y": inputs["x"] * 2}

    rec = Recorder()
    b = fast_batcher(model, workers, observer=rec)
    await b.submit(x(1))  # measured on the worker first: nothing runs inline before that
    await b.submit(x(1))
    assert tasks[-1] is not None and tasks[-1] is not asyncio.current_task()  # the batcher's task
    got = await b.submit(x(3, 2.0), rows_together=True)
    assert tasks[-1] is asyncio.current_task()
    np.testing.assert_array_equal(got["y"], np.full((3, 3), 4.0, np.float32))
    assert rec.calls[-1] == (3, 1, True)


async def test_rows_together_queue_like_any_request_when_others_wait(workers: Any) -> None:
    """With a request already queued, a set of rows joins the queue and runs in the same batch,
    in order, rather than running ahead of it."""
    model = GatedModel()
    model.release.set()
    b = fast_batcher(model, workers)
    await b.submit(x(1))
    await b.submit(x(1))  # now measured fast: runs inline
    # Both start in this turn of the loop, in this order: the first is queued when the second comes.
    queued = asyncio.ensure_future(b.submit(x(1, 1.0)))
    together = asyncio.ensure_future(b.submit(x(2, 3.0), rows_together=True))
    first, second = await asyncio.gather(queued, together)
    assert model.batches[-1] == 3
    np.testing.assert_array_equal(first["y"], np.full((1, 3), 2.0, np.float32))
    np.testing.assert_array_equal(second["y"], np.full((2, 3), 6.0, np.float32))


async def test_rows_together_run_at_once_still_fail_and_expire_as_a_batch_does(workers: Any) -> None:
    fail = threading.Event()
    clock: list[float] = []

    def model(inputs: Arrays) -> Arrays:
        if fail.is_set():
            raise RuntimeError("broken model")
        if clock:
            time.sleep(clock[0])
        return {"y": inputs["x"]}

    b = fast_batcher(model, workers)
    await b.submit(x(1))
    fail.set()
    with pytest.raises(ModelExecutionError, match="broken model"):
        await b.submit(x(2), rows_together=True)
    fail.clear()
    clock.append(0.05)  # the run outlasts the deadline; inline, no timer can fire meanwhile
    with pytest.raises(DeadlineExceededError):
        await b.submit(x(2), deadline_s=time.monotonic() + 0.01, rows_together=True)
    assert (await b.submit(x(2), rows_together=True))["y"].shape == (2, 3)  # and it serves on


async def test_a_batch_far_larger_than_recent_ones_runs_on_the_worker(workers: Any) -> None:
    """Fast 1-row batches run inline; a batch with 4,000 rows is estimated 4,000 times slower and
    goes to the worker (where an execution timeout can bound it), not onto the event loop."""
    threads: list[str] = []

    def model(inputs: Arrays) -> Arrays:
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"]}

    b = DynamicBatcher(
        model, max_batch_size=4096, max_queue_delay_s=0, max_queue_size=8, workers=workers, inline_below_s=0.005
    )
    for _ in range(3):
        await b.submit(x(1))
    loop_thread = threading.current_thread().name
    assert threads[-1] == loop_thread  # fast and small: inline
    await b.submit(x(4000))
    assert threads[-1] != loop_thread


def inline_batcher(model: Any, workers: Any, **kw: Any) -> DynamicBatcher:
    """Batches of 1 row at once, inline below 5 ms, under a 5 s execution timeout."""
    return DynamicBatcher(
        model,
        max_batch_size=4,
        max_queue_delay_s=0,
        max_queue_size=8,
        workers=workers,
        inline_below_s=0.005,
        execution_timeout_s=5.0,
        **kw,
    )


async def test_a_model_that_cannot_be_interrupted_never_runs_inline_under_an_execution_timeout(
    workers: Any,
) -> None:
    """Inline, a hang would freeze the event loop past any timeout: such a model stays on the worker."""
    threads: list[str] = []

    def model(inputs: Arrays) -> Arrays:
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"]}

    b = inline_batcher(model, workers)
    for _ in range(5):
        await b.submit(x(1))
    loop_thread = threading.current_thread().name
    assert len(threads) == 5 and loop_thread not in threads


async def test_an_inline_batch_that_overruns_is_cut_short_and_answered_from_the_worker(workers: Any) -> None:
    """A fast model turns slow inline: the watchdog interrupts it and the worker runs the batch
    again, so the loop is freed and the request still gets its real answer."""
    threads: list[str] = []
    slow = threading.Event()
    interrupted = threading.Event()

    def model(inputs: Arrays) -> Arrays:
        on_loop = threading.current_thread() is threading.main_thread()
        threads.append("loop" if on_loop else "worker")
        if slow.is_set() and on_loop:
            if not interrupted.wait(30):  # hangs until interrupted, as onnxruntime's terminate does
                raise AssertionError("never interrupted")
            raise RuntimeError("terminated")
        return {"y": inputs["x"] * 2}

    b = inline_batcher(model, workers, interrupt=interrupted.set)
    for _ in range(3):
        await b.submit(x(1))
    assert threads == ["worker", "loop", "loop"]
    slow.set()
    out = await b.submit(x(1, value=4.0))
    np.testing.assert_array_equal(out["y"], x(1, value=8.0)["x"])
    assert threads[3:] == ["loop", "worker"] and interrupted.is_set()


class CutInlineThenGated:
    """Doubles ``x``, recording where each run ran and its rows. While ``slow`` is set, a run on
    the loop hangs until interrupted (as onnxruntime's terminate does) and a run on a worker
    thread waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.slow, self.interrupted = threading.Event(), threading.Event()
        self.on_worker, self.release = threading.Event(), threading.Event()

    def __call__(self, inputs: Arrays) -> Arrays:
        on_loop = threading.current_thread() is threading.main_thread()
        self.calls.append(("loop" if on_loop else "worker", len(inputs["x"])))
        if self.slow.is_set():
            if on_loop:
                if not self.interrupted.wait(30):
                    raise AssertionError("never interrupted")
                raise RuntimeError("terminated")
            self.on_worker.set()
            self.release.wait(30)
        return {"y": inputs["x"] * 2}

    async def batcher_with_a_set_gone_to_the_worker(
        self, workers: Any
    ) -> tuple[DynamicBatcher, asyncio.Future[Arrays]]:
        """A batcher whose runs go inline, and a set of 2 rows run at once, cut short inline,
        now waiting on the worker thread for ``release``."""
        b = inline_batcher(self, workers, interrupt=self.interrupted.set)
        for _ in range(3):
            await b.submit(x(1))
        assert self.calls[-1] == ("loop", 1)
        self.slow.set()
        together = asyncio.ensure_future(b.submit(x(2, 4.0), rows_together=True))
        await wait_for(self.on_worker)
        assert self.calls[-2:] == [("loop", 2), ("worker", 2)]
        return b, together


async def test_a_set_run_at_once_and_cut_short_holds_the_batcher_until_its_worker_run_ends(workers: Any) -> None:
    """A set of rows run at once in its caller's task overruns inline: it goes on on the worker
    thread, and a request queued meanwhile stays queued until that run ends, as it would behind
    a batch of the batcher's own task cut short; then both are answered."""
    model = CutInlineThenGated()
    b, together = await model.batcher_with_a_set_gone_to_the_worker(workers)
    other = asyncio.ensure_future(b.submit(x(1, 1.0)))
    for _ in range(5):
        await asyncio.sleep(0)
    # still in the queue (where its deadline could drop it unrun), not taken beside the set
    assert len(model.calls) == 5 and not other.done() and b.queue_depth == 1
    model.slow.clear()
    model.release.set()
    first, second = await asyncio.gather(together, other)
    np.testing.assert_array_equal(first["y"], x(2, 8.0)["x"])
    np.testing.assert_array_equal(second["y"], x(1, 2.0)["x"])
    assert model.calls[-1][1] == 1


async def test_a_set_cancelled_while_it_goes_on_on_the_worker_leaves_nothing_behind(
    workers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller of a set run at once, cut short inline and gone on to the worker thread, is
    cancelled: the cancellation reaches it, no answer is left unretrieved, and the batcher serves
    the next request."""
    model = CutInlineThenGated()
    b, together = await model.batcher_with_a_set_gone_to_the_worker(workers)
    together.cancel()
    with pytest.raises(asyncio.CancelledError):
        await together
    model.slow.clear()
    model.release.set()
    out = await b.submit(x(1, 3.0))
    np.testing.assert_array_equal(out["y"], x(1, 6.0)["x"])
    del together
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_answered_requests_free_their_queue_slots_at_once(workers: Any) -> None:
    """Requests whose deadline passed (or whose caller gave up) while queued no longer count
    against max_queue_size: a burst of short deadlines cannot make new requests 503."""
    gate = threading.Event()

    def model(inputs: Arrays) -> Arrays:
        gate.wait(10)
        return {"y": inputs["x"]}

    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=4, workers=workers)
    running = asyncio.ensure_future(b.submit(x(1)))  # holds the worker
    await asyncio.sleep(0.05)
    for _ in range(3):  # 3 rounds of a full queue whose requests all expire
        expiring = [asyncio.ensure_future(b.submit(x(1), deadline_s=time.monotonic() + 0.02)) for _ in range(4)]
        done = await asyncio.gather(*expiring, return_exceptions=True)
        assert all(isinstance(e, DeadlineExceededError) for e in done)
        assert b.queue_depth == 0
    cancelled = [asyncio.ensure_future(b.submit(x(1))) for _ in range(4)]
    await asyncio.sleep(0.01)
    for c in cancelled:
        c.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    assert b.queue_depth == 0
    waiting = [asyncio.ensure_future(b.submit(x(1, value=float(i)))) for i in range(4)]  # the queue has room
    await asyncio.sleep(0.01)
    gate.set()
    await running
    outs = await asyncio.gather(*waiting)
    assert [float(o["y"][0, 0]) for o in outs] == [0.0, 1.0, 2.0, 3.0]
    await b.close()


class RaisingObserver:
    def on_batch(self, rows: int, queue_ns: Any, input_ns: int, infer_ns: int, output_ns: int, ok: bool) -> None:
        raise RuntimeError("observer broke")


async def test_a_raising_observer_neither_loses_answers_nor_kills_the_worker(workers: Any) -> None:
    b = DynamicBatcher(
        lambda a: {"y": a["x"] * 2},
        max_batch_size=4,
        max_queue_delay_s=0,
        max_queue_size=8,
        workers=workers,
        observer=RaisingObserver(),
    )
    first = await asyncio.wait_for(b.submit(x(1, 3.0)), 5)
    second = await asyncio.wait_for(b.submit(x(2, 4.0)), 5)  # the same worker serves on
    assert first["y"][0, 0] == 6.0 and second["y"].shape == (2, 3)
    await b.close()


async def test_close_in_mid_batch_answers_the_batch_and_the_queue_unavailable(workers: Any) -> None:
    from serving.errors import ModelNotReadyError

    model = GatedModel()
    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    running = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(model.started)  # the first batch is inside the model now
    queued = asyncio.ensure_future(b.submit(x(1)))
    await asyncio.sleep(0)
    await b.close()
    for fut in (running, queued):
        with pytest.raises(ModelNotReadyError):
            await asyncio.wait_for(fut, 5)
    with pytest.raises(ModelNotReadyError, match="unloaded"):
        await b.submit(x(1))
    model.release.set()


class Fatal(BaseException):
    """Not an Exception: escapes the batch's error handling and ends the worker task."""


async def test_a_base_exception_in_the_model_fails_its_batch_and_the_queue_is_served_on(
    workers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []
    gate = threading.Event()
    started = threading.Event()

    def model(a: Arrays) -> Arrays:
        calls.append(a["x"].shape[0])
        if len(calls) == 1:
            started.set()
            gate.wait(5)
            raise Fatal()
        return {"y": a["x"] * 2}

    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    running = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(started)
    queued = asyncio.ensure_future(b.submit(x(1, 2.0)))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(ModelExecutionError, match="without an answer"):
        await asyncio.wait_for(running, 5)
    assert (await asyncio.wait_for(queued, 5))["y"][0, 0] == 4.0
    assert (await asyncio.wait_for(b.submit(x(1, 3.0)), 5))["y"][0, 0] == 6.0
    assert "Fatal" in caplog.text
    await b.close()


async def test_a_dead_inline_run_ends_the_worker_task_and_fails_everything_queued(workers: Any) -> None:
    loop_thread = threading.get_ident()
    queued: list[asyncio.Future[Arrays]] = []

    def model(a: Arrays) -> Arrays:
        if threading.get_ident() == loop_thread and a["x"][0, 0] == 9.0:
            queued.append(asyncio.ensure_future(b.submit(x(1))))  # queued while the inline run is on
            raise Fatal()
        return {"y": a["x"] * 2}

    b = DynamicBatcher(
        model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers, inline_below_s=5.0
    )
    await b.submit(x(1))  # measured on the worker: later batches run inline
    with pytest.raises(ModelExecutionError, match="without an answer"):
        await asyncio.wait_for(b.submit(x(1, 9.0)), 5)
    with pytest.raises(ModelExecutionError, match="batch worker failed"):
        await asyncio.wait_for(queued[0], 5)
    assert (await asyncio.wait_for(b.submit(x(1, 3.0)), 5))["y"][0, 0] == 6.0  # a new worker task serves on
    await b.close()


async def test_two_threads_run_two_batches_at_once(workers: Any) -> None:
    pair = threading.Barrier(2)

    def model(a: Arrays) -> Arrays:
        pair.wait(5)  # broken (the batch fails) unless the other batch runs at the same time
        return {"y": a["x"] * 2}

    two = WorkerThreads(2, "test-model")
    b = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=two, threads=2)
    outs = await asyncio.wait_for(asyncio.gather(b.submit(x(1, 1.0)), b.submit(x(1, 2.0))), 10)
    assert [float(o["y"][0, 0]) for o in outs] == [2.0, 4.0]
    await b.close()
    two.stop()
    assert await two.ended(5)


async def test_each_batch_is_timed_from_its_own_start(workers: Any) -> None:
    """Each of the two batches runs 0.6 s, under the 1 s execution timeout; the second was
    queued 1.2 s before it ended, and must not be counted as overrunning."""
    calls: list[int] = []

    def model(a: Arrays) -> Arrays:
        calls.append(a["x"].shape[0])
        time.sleep(0.6)
        return {"y": a["x"] * 2}

    rec = HangRecorder()
    b = DynamicBatcher(
        model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers, observer=rec,
        execution_timeout_s=1.0,
    )  # fmt: skip
    outs = await asyncio.wait_for(asyncio.gather(b.submit(x(1, 1.0)), b.submit(x(1, 2.0))), 5)
    assert [float(o["y"][0, 0]) for o in outs] == [2.0, 4.0]
    assert rec.hangs == [] and calls == [1, 1]
    await b.close()


def adaptive_batcher(workers: Any, adaptive: bool = True) -> DynamicBatcher:
    return DynamicBatcher(
        lambda a: {"y": a["x"] * 2},
        max_batch_size=8,
        max_queue_delay_s=0.02,
        max_queue_size=16,
        workers=workers,
        adaptive_delay=adaptive,
    )


async def test_adaptive_delay_stops_waiting_for_a_lone_client_then_probes_again(workers: Any) -> None:
    from serving.batching import PROBE_EVERY

    b = adaptive_batcher(workers)
    assert b.waits
    await b.submit(x(1))  # waited, found nobody
    assert not b.waits
    for _ in range(PROBE_EVERY - 1):  # these run at once
        await b.submit(x(1))
    assert b.waits  # the next one tries waiting again
    await b.close()


async def test_adaptive_delay_keeps_waiting_while_it_finds_company(workers: Any) -> None:
    b = adaptive_batcher(workers)
    outs = await asyncio.gather(*(b.submit(x(1, float(i))) for i in range(3)))
    assert [o["y"][0, 0] for o in outs] == [0.0, 2.0, 4.0]
    assert b.waits
    await b.close()


async def test_a_fixed_delay_always_waits(workers: Any) -> None:
    b = adaptive_batcher(workers, adaptive=False)
    await b.submit(x(1))
    assert b.waits
    await b.close()


class DeadlineRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.dropped: list[int] = []

    def on_deadline_dropped(self, queued_ns: int) -> None:
        self.dropped.append(queued_ns)


async def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_without_running(workers: Any) -> None:
    from serving.errors import DeadlineExceededError

    model, rec = GatedModel(), DeadlineRecorder()
    b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0, max_queue_size=16, workers=workers, observer=rec)
    running = asyncio.ensure_future(b.submit(x(1, 1.0)))
    await wait_for(model.started)  # the model is busy: what comes next waits in the queue
    due = asyncio.ensure_future(b.submit(x(2, 5.0), deadline_s=time.monotonic() + 0.05))
    patient = asyncio.ensure_future(b.submit(x(1, 3.0)))
    with pytest.raises(DeadlineExceededError, match="in the queue; the model did not run it"):
        await asyncio.wait_for(due, 5)  # answered while the model is still busy
    assert not running.done()
    model.release.set()
    assert (await running)["y"][0, 0] == 2.0 and (await patient)["y"][0, 0] == 6.0
    assert model.batches == [1, 1]  # the dropped request's 2 rows never ran
    assert len(rec.dropped) == 1
    await b.close()


async def test_a_deadline_already_past_is_refused_at_once(workers: Any) -> None:
    from serving.errors import DeadlineExceededError

    b = DynamicBatcher(lambda a: a, max_batch_size=4, max_queue_delay_s=0, max_queue_size=4, workers=workers)
    with pytest.raises(DeadlineExceededError, match="before it was queued"):
        await b.submit(x(1), deadline_s=time.monotonic() - 1)
    assert b.queue_depth == 0
    await b.close()


async def test_a_deadline_passing_while_the_batch_runs_answers_only_that_request(workers: Any) -> None:
    from serving.errors import DeadlineExceededError

    model, rec = GatedModel(), DeadlineRecorder()
    b = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0, max_queue_size=16, workers=workers, observer=rec)
    in_batch = asyncio.ensure_future(b.submit(x(1, 1.0), deadline_s=time.monotonic() + 0.05))
    other = asyncio.ensure_future(b.submit(x(1, 4.0)))
    await wait_for(model.started)  # both are in the running batch, which waits for release
    with pytest.raises(DeadlineExceededError, match="while its batch ran"):
        await asyncio.wait_for(in_batch, 5)
    model.release.set()
    assert (await asyncio.wait_for(other, 5))["y"][0, 0] == 8.0
    assert model.batches == [2] and rec.dropped == []  # it did run: not counted as dropped
    await b.close()


class HangRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.hangs: list[float] = []

    def on_hung(self, seconds: float) -> None:
        self.hangs.append(seconds)


async def test_an_execution_past_its_timeout_fails_its_batch_and_the_queue_and_reports_the_hang(
    workers: Any,
) -> None:
    from serving.errors import ModelNotReadyError

    model, rec = GatedModel(), HangRecorder()
    b = DynamicBatcher(
        model, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers, observer=rec,
        execution_timeout_s=0.05,
    )  # fmt: skip
    running = asyncio.ensure_future(b.submit(x(1)))
    await wait_for(model.started)  # inside the model, which does not return until released
    queued = asyncio.ensure_future(b.submit(x(1)))
    with pytest.raises(ModelNotReadyError, match="execution_timeout_s=0.05"):
        await asyncio.wait_for(running, 5)
    with pytest.raises(ModelNotReadyError, match="hung"):
        await asyncio.wait_for(queued, 5)
    assert rec.hangs == [0.05]
    with pytest.raises(ModelNotReadyError):
        await b.submit(x(1))  # this batcher is done; its owner replaces it
    model.release.set()
    await b.close()


async def test_a_model_failure_keeps_its_cause_and_logs_its_traceback(
    workers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def model(inputs: Arrays) -> Arrays:
        raise ZeroDivisionError("the model's own bug")

    b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    with pytest.raises(ModelExecutionError, match="the model's own bug") as info:
        await b.submit(x(1))
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
    await b.close()


async def test_threads_must_be_at_least_one(workers: Any) -> None:
    with pytest.raises(ValueError, match="threads"):
        DynamicBatcher(lambda a: a, max_batch_size=1, max_queue_delay_s=0, max_queue_size=1, workers=workers, threads=0)


async def test_a_batch_kept_from_starting_past_the_timeout_by_other_work_is_a_hang(workers: Any) -> None:
    """Work queued on the same thread ahead of the batch (a shadow copy's) that never ends: the
    batch is answered 503 after the execution timeout, not left waiting."""
    from serving.errors import ModelNotReadyError

    gate = threading.Event()
    workers.call(gate.wait, 10)  # holds the only thread
    rec = HangRecorder()
    b = DynamicBatcher(
        lambda a: {"y": a["x"]}, max_batch_size=1, max_queue_delay_s=0, max_queue_size=8, workers=workers,
        observer=rec, execution_timeout_s=0.2,
    )  # fmt: skip
    try:
        with pytest.raises(ModelNotReadyError, match="execution_timeout_s=0.2"):
            await asyncio.wait_for(b.submit(x(1)), 5)
        assert rec.hangs == [0.2]
    finally:
        gate.set()
        await b.close()


async def test_a_batch_the_executor_refuses_is_answered_unavailable() -> None:
    """The worker threads are shut down (a version being replaced): the batch taken is answered,
    not left waiting, and the batcher goes on answering."""
    from serving.errors import ModelNotReadyError

    gone = WorkerThreads(1, "test-model")
    gone.stop()
    b = DynamicBatcher(lambda a: a, max_batch_size=4, max_queue_delay_s=0, max_queue_size=8, workers=gone)
    for _ in range(2):
        with pytest.raises(ModelNotReadyError, match="worker threads"):
            await asyncio.wait_for(b.submit(x(1)), 5)
    await b.close()


class CountingWorkers(WorkerThreads):
    """Real worker threads that count the runs handed to them."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads, "test-model")
        self.handed = 0

    def run(self, loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> Any:
        self.handed += 1
        return super().run(loop, fn, *args)


async def loop_turns(n: int = 50) -> None:
    """Let the batcher's task run (turns of the event loop, no time involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_full_batch_queues_behind_the_busy_thread_and_a_partial_one_waits_for_it() -> None:
    """While the only thread runs, a partial batch stays in the batcher's queue (it may still
    grow), a full one is handed to the thread's queue at once, and no more than one waits there."""
    model = GatedModel()
    counting = CountingWorkers(1)
    b = DynamicBatcher(model, max_batch_size=2, max_queue_delay_s=0, max_queue_size=8, workers=counting)
    first = asyncio.ensure_future(b.submit(x(2, 1.0)))
    await wait_for(model.started)
    second = asyncio.ensure_future(b.submit(x(1, 2.0)))
    await loop_turns()
    assert counting.handed == 1  # one row of two: it waits for company or for the thread
    third = asyncio.ensure_future(b.submit(x(1, 3.0)))
    await loop_turns()
    assert counting.handed == 2  # a full batch now: queued behind the running one
    fourth = asyncio.ensure_future(b.submit(x(2, 4.0)))
    await loop_turns()
    assert counting.handed == 2  # full too, but one already waits for the thread
    model.release.set()
    outs = await asyncio.wait_for(asyncio.gather(first, second, third, fourth), 5)
    assert [o["y"][:, 0].tolist() for o in outs] == [[2.0, 2.0], [4.0], [6.0], [8.0, 8.0]]
    assert model.batches == [2, 2, 2]
    await b.close()
    counting.stop()
    assert await counting.ended(5)


async def test_a_batch_that_cannot_be_stacked_fails_alone_and_the_queue_is_served_on(
    workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stacking happens on the loop's thread as the batch is handed over; if it raises (no memory),
    that batch is answered as a failed run and the next one runs."""
    import serving.batching

    real = serving.batching.concat_inputs
    failures = [MemoryError("no memory for the batch")]

    def concat_once_failing(items: Any) -> Arrays:
        if failures:
            raise failures.pop()
        return real(items)

    monkeypatch.setattr(serving.batching, "concat_inputs", concat_once_failing)
    b = DynamicBatcher(
        lambda a: {"y": a["x"] * 2}, max_batch_size=4, max_queue_delay_s=0, max_queue_size=8, workers=workers
    )
    with pytest.raises(ModelExecutionError, match="no memory for the batch"):
        await asyncio.wait_for(b.submit(x(1, 1.0)), 5)
    assert (await asyncio.wait_for(b.submit(x(1, 3.0)), 5))["y"][0, 0] == 6.0
    await b.close()


@pytest.mark.parametrize(("width", "stacked_on_loop"), [(3, True), (300_000, False)])
async def test_a_small_batch_is_stacked_on_the_loop_and_a_large_one_on_its_worker_thread(
    workers: Any, monkeypatch: pytest.MonkeyPatch, width: int, stacked_on_loop: bool
) -> None:
    """Up to STACK_ON_LOOP_BYTES the loop stacks the batch as it hands it over (the worker thread
    would wait for the GIL after numpy's copy); a larger batch is stacked on its worker thread,
    so that no copy holds the loop long."""
    import serving.batching

    real = serving.batching.concat_inputs
    stacked_by: list[bool] = []

    def spied(items: Any) -> Arrays:
        if len(items) > 1:
            stacked_by.append(threading.current_thread() is threading.main_thread())
        return real(items)

    monkeypatch.setattr(serving.batching, "concat_inputs", spied)
    assert (width * 4 * 2 <= serving.batching.STACK_ON_LOOP_BYTES) is stacked_on_loop
    model = GatedModel()
    b = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0, max_queue_size=8, workers=workers)
    first = asyncio.ensure_future(b.submit(x(1, 1.0, width)))
    await wait_for(model.started)
    pair = [asyncio.ensure_future(b.submit(x(1, v, width))) for v in (2.0, 3.0)]
    await loop_turns()
    model.release.set()
    outs = await asyncio.wait_for(asyncio.gather(first, *pair), 5)
    assert [float(o["y"][0, -1]) for o in outs] == [2.0, 4.0, 6.0]
    assert model.batches == [1, 2] and stacked_by == [stacked_on_loop]
    await b.close()
