"""One served version's lane: its loaded model, state, batcher, worker thread and statistics;
loading, draining and closing it without blocking the event loop. A version whose execution
hangs is reloaded by :mod:`serving.registry.hang`."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batching import DynamicBatcher
from serving.config.model import ModelConfig
from serving.lifecycle.drift import DriftMonitor
from serving.lifecycle.lineage import Lineage, verify_artifact
from serving.model_instance import ModelInstance
from serving.registry.hang import HangRecovery
from serving.registry.steps import PipelineRunner
from serving.runtime import Model
from serving.telemetry.metrics import (
    BATCH_SIZE,
    COMPUTE_SECONDS,
    DEADLINE_DROPPED,
    LOAD_SECONDS,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    QUEUE_SECONDS,
    READY,
    Metrics,
    NullMetrics,
)
from serving.types import BatchStat, ModelStats
from serving.worker_threads import WorkerThreads

log = logging.getLogger(__name__)


WORKER_STOP_S = 5.0
"""How long closing a version waits for its worker thread to finish what it runs."""


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One served version: its loaded model plus the serving lane (state, batcher, statistics)."""

    instance: ModelInstance
    state: VersionState = VersionState.LOADING
    reason: str = ""
    load_seconds: float = 0.0
    batcher: DynamicBatcher | None = None
    metrics: Metrics = field(default_factory=NullMetrics)
    make_model: Callable[[], Model] | None = None
    """A fresh instance of the artifact's runtime (reloading a version that hung)."""
    directory: Path | None = None
    """The version folder (its lineage.yaml is checked at load)."""
    lineage: Lineage | None = None
    drift: DriftMonitor | None = None
    """Watches live inputs against the version's training profile (when it has one)."""
    pipeline: PipelineRunner | None = None
    """A pipeline version's runner (it has no batcher or worker of its own)."""
    active: int = 0
    """Requests submitted to this version and not answered yet (an unload waits for them)."""
    retry: bool = False
    """Its load failed in a way that may pass (a file that could not be read): the repository
    watch tries again, backing off."""
    stats: ModelStats = field(init=False)
    labels: dict[str, str] = field(init=False)
    _workers: WorkerThreads | None = None
    _hang: HangRecovery = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ModelStats(self.name, str(self.version))
        self.labels = {"model": self.name, "version": str(self.version)}
        self._hang = HangRecovery(self)

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def version(self) -> int:
        return self.instance.version

    @property
    def config(self) -> ModelConfig:
        return self.instance.config

    def on_batch(self, rows: int, queue_ns: Any, input_ns: int, infer_ns: int, output_ns: int, ok: bool) -> None:
        s = self.stats
        m = self.metrics
        for q in queue_ns:
            s.queue.add(q)
            m.observe(QUEUE_SECONDS, self.labels, q / 1e9)
        if self.batcher is not None:
            m.set(QUEUE_DEPTH, self.labels, self.batcher.queue_depth)
        if not ok:
            return
        m.observe(COMPUTE_SECONDS, self.labels, (input_ns + infer_ns + output_ns) / 1e9)
        m.observe(BATCH_SIZE, self.labels, rows)
        s.execution_count += 1
        s.inference_count += rows
        s.compute_input.add(input_ns, len(queue_ns))
        s.compute_infer.add(infer_ns, len(queue_ns))
        s.compute_output.add(output_ns, len(queue_ns))
        b = s.batch_stats.get(rows)
        if b is None:
            b = s.batch_stats[rows] = BatchStat(rows)
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def on_deadline_dropped(self, queued_ns: int) -> None:
        self.stats.deadline_dropped += 1
        self.stats.queue.add(queued_ns)
        self.metrics.inc(DEADLINE_DROPPED, self.labels)

    def load(self) -> None:
        """Check the artifact against its lineage, open the model and start its batcher (online serving).

        Raises:
            ConfigError: lineage that is invalid or does not match the artifact.
            ModelNotReadyError: the artifact cannot be loaded.
        """
        start = time.monotonic()
        self.open()
        self.start(time.monotonic() - start)

    def open(self) -> None:
        """The slow part of :meth:`load` (hashing, loading, warm-up): may run on a worker thread."""
        if self.directory is not None and self.pipeline is None:
            artifact = self.config.platform.artifact_in(self.directory)
            self.lineage = verify_artifact(self.directory, artifact.name if artifact else None, self.config.extra_files)
        self.instance.open()
        if self.pipeline is not None:
            self.pipeline.check()

    def start(self, load_seconds: float) -> None:
        """Start serving an opened model (on the event loop's thread)."""
        profile = self.lineage.profile if self.lineage is not None else None
        if profile is not None and self.config.drift.enabled:
            self.drift = DriftMonitor(profile.input, profile.features, self.config.drift)
        self._start_lane()
        self.load_seconds = load_seconds
        self.state = VersionState.READY
        self.metrics.set(LOAD_SECONDS, self.labels, self.load_seconds)
        self.metrics.set(QUEUE_CAPACITY, self.labels, self.config.dynamic_batching.max_queue_size)
        self.metrics.set(QUEUE_DEPTH, self.labels, 0)
        self.metrics.set(READY, self.labels, 1)

    def _start_lane(self) -> None:
        """A worker thread and a batcher for ``self.instance`` (none for a pipeline: its steps batch)."""
        if self.pipeline is not None:
            return
        threads = self.config.instance.count
        self._workers = WorkerThreads(threads, f"{self.name}-v{self.version}")
        batching = self.config.dynamic_batching
        self.batcher = DynamicBatcher(
            self.instance.predict,
            max_batch_size=self.instance.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_ms / 1000.0,
            adaptive_delay=batching.adaptive,
            max_queue_size=batching.max_queue_size,
            workers=self._workers,
            observer=self,
            inline_below_s=self.config.instance.inline_below_ms / 1000.0,
            trace_attributes={"serving.model": self.name, "serving.version": str(self.version)},
            execution_timeout_s=self.config.instance.execution_timeout_s,
            interrupt=self.instance.interrupt,
            threads=threads,
        )

    def on_hung(self, seconds: float) -> None:
        """A batch ran past ``execution_timeout_s`` (the batcher's observer call): the version is
        unavailable until a fresh instance is loaded and warmed (:mod:`serving.registry.hang`)."""
        self.state = VersionState.UNAVAILABLE
        self.reason = f"an execution exceeded execution_timeout_s={seconds:g}; reloading"
        self.metrics.set(READY, self.labels, 0)
        log.error("model %s version %d hung (execution over %gs): reloading it", self.name, self.version, seconds)
        self._hang.reload()

    async def abandon_lane(self) -> None:
        """Close the batcher (what it holds is answered) and leave the worker thread, stuck in the
        model, to finish on its own: abandoned, not joined."""
        old_batcher, old_workers = self.batcher, self._workers
        if old_batcher is not None:
            await old_batcher.close()
        if old_workers is not None:
            old_workers.stop()

    def serve(self, fresh: ModelInstance) -> None:
        """Serve ``fresh``, an opened instance of this version, on a new worker thread and batcher."""
        self.instance = fresh
        self._start_lane()
        self.state, self.reason = VersionState.READY, ""
        self.metrics.set(READY, self.labels, 1)

    def submit_off_loop(self, work: Callable[[], None]) -> bool:
        """Queue ``work`` on this version's worker thread (shadow copies: never on the event
        loop); False when the version is not serving."""
        if self._workers is None or self.state is not VersionState.READY:
            return False
        try:
            self._workers.call(self._while_serving, work)
        except RuntimeError:  # stopped
            return False
        return True

    def _while_serving(self, work: Callable[[], None]) -> None:
        """Queued work runs only while the version serves: a close skips what is still queued."""
        if self.state is VersionState.READY:
            work()

    async def drain(self, timeout_s: float) -> None:
        """Wait until the requests already given to this version are answered (at most ``timeout_s``)."""
        until = time.monotonic() + timeout_s
        while self.active and time.monotonic() < until:
            await asyncio.sleep(0.01)

    async def close(self, report: bool = True) -> None:
        """Stop serving; ``report=False`` for an instance being replaced (a reload), whose
        successor already reports the version's readiness."""
        self._hang.cancel()
        self.state = VersionState.UNAVAILABLE
        self.reason = "unloaded"
        if report:
            self.metrics.set(READY, self.labels, 0)
        if self.batcher is not None:
            await self.batcher.close()
        if self.pipeline is not None:
            await self.pipeline.close()
        if await self._stop_worker():
            self.instance.unload()

    async def _stop_worker(self) -> bool:
        """Stop the worker threads without ever blocking the event loop on them: executions still
        running there (their requests were already answered by the batcher's close) are interrupted
        where the runtime can be, and waited for up to ``WORKER_STOP_S``. False when a thread is
        still stuck (a hang): the threads are abandoned, and the model they use is left to the
        garbage collector rather than freed under them."""
        workers, self._workers = self._workers, None
        if workers is None:
            return True
        workers.stop()  # each thread ends once what is queued has run (shadow work skips itself)
        interrupt = self.instance.interrupt
        if interrupt is not None:
            interrupt()
        if await workers.ended(WORKER_STOP_S):
            return True
        log.error(
            "model %s version %d: its worker thread is still running after %gs (a hung model?); abandoned",
            self.name,
            self.version,
            WORKER_STOP_S,
        )
        return False
