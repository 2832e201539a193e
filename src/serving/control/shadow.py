"""Shadow traffic: a version that gets a copy of live requests; its answers are compared with
the primary's and dropped. The client never waits for it: the copy is sent after the primary
answered, on a task of its own, and runs on the shadow version's worker thread, never on the
event loop (a batcher may run fast batches inline, which would delay the primary's next
requests: measured 38 -> 77 us p50 in-process). At most ``MAX_PENDING`` copies are
outstanding (more are dropped and counted)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.errors import ServingError
from serving.telemetry.metrics import (
    SHADOW_AGREEMENTS,
    SHADOW_MAX_ABS_DIFF,
    SHADOW_REQUESTS,
    SHADOW_ROWS,
    SHADOW_SECONDS,
    Metrics,
)

if TYPE_CHECKING:
    from serving.registry.lane import ModelVersion

log = logging.getLogger(__name__)

MAX_PENDING = 64
Arrays = dict[str, np.ndarray[Any, Any]]
AnswerSink = Callable[["ModelVersion", str, int, Arrays, Arrays], None]
"""Called with (shadow version, request id, start in monotonic ns, inputs, answer) for each answer."""


def compare(primary: Arrays, shadow: Arrays) -> tuple[int, int, float]:
    """(rows compared, rows that agree, largest absolute difference).

    Agreement is judged on the first output both answers share with the same shape: the
    argmax of each row for a score matrix, equality for labels and single values. The
    difference is the largest over every numeric output of equal shape (0 when none).
    """
    shared = [n for n in primary if n in shadow and primary[n].shape == shadow[n].shape]
    if not shared:
        return 0, 0, float("nan")
    first_p, first_s = primary[shared[0]], shadow[shared[0]]
    rows = int(first_p.shape[0]) if first_p.ndim else 1
    if first_p.ndim >= 2 and first_p.shape[-1] > 1 and first_p.dtype.kind in "fiu":
        agree = int(np.sum(np.argmax(first_p.reshape(rows, -1), 1) == np.argmax(first_s.reshape(rows, -1), 1)))
    else:
        same = np.asarray(first_p == first_s).reshape(rows, -1) if rows else np.zeros((0, 1), bool)
        agree = int(np.sum(np.all(same, axis=1)))
    diff = 0.0
    for n in shared:
        a, b = primary[n], shadow[n]
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu" and a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return rows, agree, diff


class ShadowRunner:
    """Sends copies to shadow versions and records how their answers compare. A copy is run,
    compared and recorded entirely on the shadow version's worker thread: the event loop only
    hands it over (no task, no wake-up when it ends). Unloading the shadow version waits for its
    queued copies (its worker thread is joined)."""

    def __init__(self, metrics: Metrics, on_answer: AnswerSink | None = None) -> None:
        self.metrics = metrics
        self._on_answer = on_answer
        self._pending = 0
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        """Copies to shadow pipelines (their steps run on the loop, through the steps' batchers)."""

    def send(self, shadow: ModelVersion, arrays: Arrays, primary: Arrays, request_id: str = "") -> None:
        labels = shadow.labels
        with self._lock:
            full = self._pending >= MAX_PENDING
            if not full:
                self._pending += 1
        if not full and shadow.pipeline is not None:
            task = asyncio.get_running_loop().create_task(self._run_pipeline(shadow, arrays, primary, request_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if full or not shadow.submit_off_loop(lambda: self._run(shadow, arrays, primary, request_id)):
            if not full:
                self._done()
            self.metrics.inc(SHADOW_REQUESTS, {**labels, "outcome": "dropped"})

    async def _run_pipeline(self, shadow: ModelVersion, arrays: Arrays, primary: Arrays, request_id: str) -> None:
        assert shadow.pipeline is not None
        start = time.monotonic_ns()
        try:
            answer = await shadow.pipeline.run(arrays, None)
        except ServingError:
            self.metrics.inc(SHADOW_REQUESTS, {**shadow.labels, "outcome": "failed"})
            return
        except Exception:
            log.exception("shadow copy to pipeline %s v%d failed unexpectedly", shadow.name, shadow.version)
            self.metrics.inc(SHADOW_REQUESTS, {**shadow.labels, "outcome": "failed"})
            return
        finally:
            self._done()
        self._record(shadow, request_id, arrays, primary, answer, start)

    async def close(self) -> None:
        """Cancel the copies to shadow pipelines still running (each releases its slot)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self, shadow: ModelVersion, arrays: Arrays, primary: Arrays, request_id: str) -> None:
        labels = shadow.labels
        start = time.monotonic_ns()
        try:
            answer = shadow.instance.predict(arrays)
        except ServingError:
            self.metrics.inc(SHADOW_REQUESTS, {**labels, "outcome": "failed"})
            return
        except Exception:
            log.exception("shadow copy to %s v%d failed unexpectedly", shadow.name, shadow.version)
            self.metrics.inc(SHADOW_REQUESTS, {**labels, "outcome": "failed"})
            return
        finally:
            self._done()
        self._record(shadow, request_id, arrays, primary, answer, start)

    def _record(
        self, shadow: ModelVersion, request_id: str, arrays: Arrays, primary: Arrays, answer: Arrays, start_ns: int
    ) -> None:
        labels = shadow.labels
        self.metrics.observe(SHADOW_SECONDS, labels, (time.monotonic_ns() - start_ns) / 1e9)
        if self._on_answer is not None:
            try:
                self._on_answer(shadow, request_id, start_ns, arrays, answer)
            except Exception:  # the log never costs the comparison
                log.exception("the prediction log of shadow %s v%d failed", shadow.name, shadow.version)
        rows, agree, diff = compare(primary, answer)
        self.metrics.inc(SHADOW_REQUESTS, {**labels, "outcome": "compared"})
        self.metrics.inc(SHADOW_ROWS, labels, rows)
        self.metrics.inc(SHADOW_AGREEMENTS, labels, agree)
        if diff == diff:  # not NaN
            self.metrics.observe(SHADOW_MAX_ABS_DIFF, labels, diff)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
