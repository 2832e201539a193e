"""Loaded model versions and their readiness: (name, version) -> ModelVersion."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from serving.batching import DynamicBatcher
from serving.config import ModelConfig
from serving.errors import ModelNotFoundError, ModelNotReadyError, ServingError
from serving.loaded_model import LoadedModel
from serving.repository import ModelEntry
from serving.runtime import Model, create_model
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

log = logging.getLogger(__name__)


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One served version: its loaded model plus the serving lane (state, batcher, statistics)."""

    loaded: LoadedModel
    state: VersionState = VersionState.LOADING
    reason: str = ""
    load_seconds: float = 0.0
    batcher: DynamicBatcher | None = None
    metrics: Metrics = field(default_factory=NullMetrics)
    make_model: Callable[[], Model] | None = None
    """A fresh instance of the artifact's runtime (reloading a version that hung)."""
    stats: ModelStats = field(init=False)
    labels: dict[str, str] = field(init=False)
    _executor: ThreadPoolExecutor | None = None
    _reloading: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.stats = ModelStats(self.name, str(self.version))
        self.labels = {"model": self.name, "version": str(self.version)}

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> int:
        return self.loaded.version

    @property
    def config(self) -> ModelConfig:
        return self.loaded.config

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
        """Open the model and start its batcher (online serving)."""
        start = time.monotonic()
        self.loaded.open()
        self._start_lane()
        self.load_seconds = time.monotonic() - start
        self.state = VersionState.READY
        self.metrics.set(LOAD_SECONDS, self.labels, self.load_seconds)
        self.metrics.set(QUEUE_CAPACITY, self.labels, self.config.dynamic_batching.max_queue_size)
        self.metrics.set(QUEUE_DEPTH, self.labels, 0)
        self.metrics.set(READY, self.labels, 1)

    def _start_lane(self) -> None:
        """A worker thread and a batcher for ``self.loaded``."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-v{self.version}")
        batching = self.config.dynamic_batching
        self.batcher = DynamicBatcher(
            self.loaded.predict,
            max_batch_size=self.loaded.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_ms / 1000.0,
            adaptive_delay=batching.adaptive,
            max_queue_size=batching.max_queue_size,
            executor=self._executor,
            observer=self,
            inline_below_s=self.config.instance.inline_below_ms / 1000.0,
            trace_attributes={"serving.model": self.name, "serving.version": str(self.version)},
            execution_timeout_s=self.config.instance.execution_timeout_s,
        )

    def on_hung(self, seconds: float) -> None:
        """A batch ran past ``execution_timeout_s``: the version is unavailable until a fresh
        instance of the model, on a fresh worker thread, is loaded and warmed."""
        self.state = VersionState.UNAVAILABLE
        self.reason = f"an execution exceeded execution_timeout_s={seconds:g}; reloading"
        self.metrics.set(READY, self.labels, 0)
        log.error("model %s version %d hung (execution over %gs): reloading it", self.name, self.version, seconds)
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())
            self._reloading.add_done_callback(self._reload_ended)

    async def _reload(self) -> None:
        old_batcher, old_executor = self.batcher, self._executor
        if old_batcher is not None:
            await old_batcher.close()
        if old_executor is not None:
            old_executor.shutdown(wait=False)  # its thread is stuck in the model: abandoned, not joined
        if self.make_model is None:
            raise ModelNotReadyError("no way to make a fresh instance of this model")
        fresh = LoadedModel(self.name, self.version, self.config, self.make_model())
        await asyncio.to_thread(fresh.open)
        self.loaded = fresh
        self._start_lane()
        self.state, self.reason = VersionState.READY, ""
        self.metrics.set(READY, self.labels, 1)
        log.info("model %s version %d reloaded after a hang", self.name, self.version)

    def _reload_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.reason = f"reload after a hang failed: {exc}"
            log.error("model %s version %d could not be reloaded: %r", self.name, self.version, exc)

    async def close(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()
        self.state = VersionState.UNAVAILABLE
        self.reason = "unloaded"
        self.metrics.set(READY, self.labels, 0)
        if self.batcher is not None:
            await self.batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.loaded.unload()


class ModelRegistry:
    """Every model version the server knows, loaded or not."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics: Metrics = metrics or NullMetrics()
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._newest_first: dict[str, tuple[ModelVersion, ...]] = {}  # read on every request
        self._entries: dict[str, ModelEntry] = {}

    def load_entries(self, entries: list[ModelEntry]) -> None:
        """Load the selected versions of each entry; a failure marks only that version."""
        for entry in entries:
            self._entries[entry.name] = entry
            versions = self._models.setdefault(entry.name, {})
            for v in entry.selected:
                model = create_model(entry.config, entry.version_dir(v))
                mv = ModelVersion(
                    LoadedModel(entry.name, v, entry.config, model),
                    metrics=self.metrics,
                    make_model=functools.partial(create_model, entry.config, entry.version_dir(v)),
                )
                versions[v] = mv
                try:
                    mv.load()
                    log.info("model %s version %d ready in %.2fs on %s", entry.name, v, mv.load_seconds, model.device)
                except ServingError as exc:
                    mv.state, mv.reason = VersionState.UNAVAILABLE, exc.message
                    self.metrics.set(READY, mv.labels, 0)
                    log.error("model %s version %d failed to load: %s", entry.name, v, exc.message)
            self._newest_first[entry.name] = tuple(versions[v] for v in sorted(versions, reverse=True))

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> tuple[ModelVersion, ...]:
        """All known versions of a model, newest first.

        Raises:
            ModelNotFoundError: unknown model.
        """
        try:
            return self._newest_first[name]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {name!r}") from None

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version asked for, or the newest ready one when ``version`` is empty.

        Raises:
            ModelNotFoundError: unknown model, or a version that is not served.
            ModelNotReadyError: the version exists but is not ready.
        """
        versions = self.versions(name)
        if version:
            if not version.isdigit():
                raise ModelNotFoundError(f"model {name!r} has no version {version!r} (versions are integers)")
            for mv in versions:
                if mv.version == int(version):
                    if mv.state is not VersionState.READY:
                        raise ModelNotReadyError(
                            f"model {name!r} version {version} is not ready: {mv.reason or mv.state.value}"
                        )
                    return mv
            served = ", ".join(str(mv.version) for mv in versions)
            raise ModelNotFoundError(f"model {name!r} has no version {version} (served: {served})")
        for mv in versions:
            if mv.state is VersionState.READY:
                return mv
        raise ModelNotReadyError(f"model {name!r} has no ready version")

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self.versions(name)]

    def entry(self, name: str) -> ModelEntry:
        self.versions(name)
        return self._entries[name]

    async def close(self) -> None:
        for mv in self.all_versions():
            await mv.close()
