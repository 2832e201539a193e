"""Loaded model versions and their readiness: (name, version) -> ModelVersion."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batching import DynamicBatcher
from serving.config.model import ModelConfig
from serving.errors import FileReadError, ModelNotFoundError, ModelNotReadyError, ServingError
from serving.lifecycle.drift import DriftMonitor
from serving.lifecycle.lineage import Lineage, verify_artifact
from serving.lifecycle.routing import ModelRouting, choose, resolve_alias
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


WORKER_STOP_S = 5.0
"""How long closing a version waits for its worker thread to finish what it runs."""


def _nothing() -> None:
    """Queued behind a worker's work: its completion says the thread is free."""


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
    directory: Path | None = None
    """The version folder (its lineage.yaml is checked at load)."""
    lineage: Lineage | None = None
    drift: DriftMonitor | None = None
    """Watches live inputs against the version's training profile (when it has one)."""
    active: int = 0
    """Requests submitted to this version and not answered yet (an unload waits for them)."""
    retry: bool = False
    """Its load failed in a way that may pass (a file that could not be read): the repository
    watch tries again, backing off."""
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
        if self.directory is not None:
            self.lineage = verify_artifact(self.directory, self.config.platform.artifact)
        self.loaded.open()

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
            interrupt=self.loaded.interrupt,
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

    def submit_off_loop(self, work: Callable[[], None]) -> bool:
        """Queue ``work`` on this version's worker thread (shadow copies: never on the event
        loop); False when the version is not serving."""
        if self._executor is None or self.state is not VersionState.READY:
            return False
        try:
            self._executor.submit(self._while_serving, work)
        except RuntimeError:  # shut down
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
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()
        self.state = VersionState.UNAVAILABLE
        self.reason = "unloaded"
        if report:
            self.metrics.set(READY, self.labels, 0)
        if self.batcher is not None:
            await self.batcher.close()
        if await self._stop_worker():
            self.loaded.unload()

    async def _stop_worker(self) -> bool:
        """Stop the worker thread without ever blocking the event loop on it: an execution still
        running there (its requests were already answered by the batcher's close) is interrupted
        where the runtime can be, and waited for up to ``WORKER_STOP_S``. False when the thread is
        still stuck (a hang): it is abandoned, and the model it uses is left to the garbage
        collector rather than freed under it."""
        executor, self._executor = self._executor, None
        if executor is None:
            return True
        try:
            idle = asyncio.wrap_future(executor.submit(_nothing))  # runs once the thread is free
        except RuntimeError:  # already shut down (a reload abandoned it)
            return True
        executor.shutdown(wait=False)
        interrupt = self.loaded.interrupt
        if interrupt is not None:
            interrupt()
        try:
            await asyncio.wait_for(idle, WORKER_STOP_S)
        except TimeoutError:
            log.error(
                "model %s version %d: its worker thread is still running after %gs (a hung model?); abandoned",
                self.name,
                self.version,
                WORKER_STOP_S,
            )
            return False
        return True


class ModelRegistry:
    """Every model version the server knows, loaded or not, and how requests pick one."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics: Metrics = metrics or NullMetrics()
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._newest_first: dict[str, tuple[ModelVersion, ...]] = {}  # read on every request
        self._entries: dict[str, ModelEntry] = {}
        self.routing: dict[str, ModelRouting] = {}
        """Operator-set routing per model (``lifecycle``); a model without one routes to its newest ready version."""
        self._rng = random.Random()

    def new_version(self, entry: ModelEntry, version: int) -> ModelVersion:
        """A version of ``entry``, not loaded yet."""
        directory = entry.version_dir(version)
        return ModelVersion(
            LoadedModel(entry.name, version, entry.config, create_model(entry.config, directory)),
            metrics=self.metrics,
            make_model=functools.partial(create_model, entry.config, directory),
            directory=directory,
        )

    def load_entries(self, entries: list[ModelEntry]) -> None:
        """Load the selected versions of each entry; a failure marks only that version."""
        for entry in entries:
            self._entries[entry.name] = entry
            for v in entry.selected:
                mv = self.new_version(entry, v)
                try:
                    mv.load()
                    log.info(
                        "model %s version %d ready in %.2fs on %s",
                        entry.name,
                        v,
                        mv.load_seconds,
                        mv.loaded.model.device,
                    )
                except Exception as exc:  # one version's failure, whatever it is, never stops the others
                    self._failed(mv, exc)
                self.put(mv)

    async def load_version(self, entry: ModelEntry, version: int) -> ModelVersion:
        """Load (or reload) one version while the others keep serving: the slow part on a worker
        thread; it is served only once warm. A failure leaves the version UNAVAILABLE with the
        reason, and a version already serving under that number keeps serving."""
        self._entries[entry.name] = entry
        mv = self.new_version(entry, version)
        start = time.monotonic()
        try:
            await asyncio.to_thread(mv.open)
            mv.start(time.monotonic() - start)
        except Exception as exc:  # ServingError, or an OSError from a runtime reading the artifact
            self._failed(mv, exc)
            old = self._models.get(entry.name, {}).get(version)
            if old is None or old.state is not VersionState.READY:
                self.put(mv)
            else:
                mv.loaded.unload()  # the serving instance stays; what the failed one opened is released now
            return mv
        old = self._models.get(entry.name, {}).get(version)
        self.put(mv)
        log.info("model %s version %d loaded in %.2fs", entry.name, version, mv.load_seconds)
        if old is not None:
            await self._retire(old, report=False)
        return mv

    async def unload_version(self, name: str, version: int, drain_s: float = 30.0) -> None:
        """Stop serving one version: no new request is routed to it, those it holds are answered,
        then it is closed. It stays in the index as UNAVAILABLE ("unloaded")."""
        mv = self._models.get(name, {}).get(version)
        if mv is None or mv.reason == "unloaded":
            return
        placeholder = ModelVersion(mv.loaded, VersionState.UNAVAILABLE, "unloaded", metrics=self.metrics)
        self.put(placeholder)
        await self._retire(mv, drain_s)
        self.metrics.forget(name, str(version))
        log.info("model %s version %d unloaded", name, version)

    async def _retire(self, mv: ModelVersion, drain_s: float = 30.0, report: bool = True) -> None:
        await mv.drain(drain_s)
        await mv.close(report)

    def _failed(self, mv: ModelVersion, exc: Exception) -> None:
        """Mark a version that could not be loaded: unavailable, with the reason (no traceback
        for our own errors; an unexpected one's goes to the log)."""
        if isinstance(exc, ServingError):
            reason = exc.message
        elif isinstance(exc, OSError):
            reason = f"cannot read {exc.filename or 'a file'}: {exc.strerror or exc}"
        else:
            reason = f"unexpected error while loading: {type(exc).__name__}: {exc}"
        mv.state, mv.reason = VersionState.UNAVAILABLE, reason
        mv.retry = isinstance(exc, FileReadError) or not isinstance(exc, ServingError)  # OSError included
        self.metrics.set(READY, mv.labels, 0)
        log.error(
            "model %s version %d failed to load: %s%s",
            mv.name,
            mv.version,
            reason,
            " (tried again later)" if mv.retry else "",
            exc_info=None if isinstance(exc, ServingError | OSError) else exc,
        )

    def put(self, mv: ModelVersion) -> None:
        versions = self._models.setdefault(mv.name, {})
        versions[mv.version] = mv
        self._newest_first[mv.name] = tuple(versions[v] for v in sorted(versions, reverse=True))

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

    def get(self, name: str, version: str = "", header: Callable[[str], str | None] | None = None) -> ModelVersion:
        """The version a request gets: the number or alias it names, else the model's traffic
        split (sticky by a header when set), else the newest ready version.

        An alias whose target is not ready on this replica yet (still loading) answers from its
        previous target; a weighted version not ready here is left out of the draw.

        Raises:
            ModelNotFoundError: unknown model, version or alias.
            ModelNotReadyError: the version exists but is not ready.
        """
        versions = self.versions(name)
        if version:
            if not version.isdigit():
                return self._by_alias(name, version, versions)
            for mv in versions:
                if mv.version == int(version):
                    if mv.state is not VersionState.READY:
                        raise ModelNotReadyError(
                            f"model {name!r} version {version} is not ready: {mv.reason or mv.state.value}"
                        )
                    return mv
            served = ", ".join(str(mv.version) for mv in versions)
            raise ModelNotFoundError(f"model {name!r} has no version {version} (served: {served})")
        routing = self.routing.get(name)
        if routing is not None and routing.weights:
            ready = {mv.version: mv for mv in versions if mv.state is VersionState.READY}
            key = header(routing.sticky_header) if header is not None and routing.sticky_header else None
            chosen = choose(routing.weights, ready, key, self._rng)
            if chosen is not None:
                return ready[chosen]
        for mv in versions:
            if mv.state is VersionState.READY:
                return mv
        raise ModelNotReadyError(f"model {name!r} has no ready version")

    def _by_alias(self, name: str, alias: str, versions: tuple[ModelVersion, ...]) -> ModelVersion:
        target, earlier = resolve_alias(self.routing.get(name), name, alias)
        ready = {mv.version: mv for mv in versions if mv.state is VersionState.READY}
        for v in (target, *earlier):
            if v in ready:
                return ready[v]
        raise ModelNotReadyError(f"model {name!r} alias {alias!r} points at version {target}, which is not ready")

    def shadow_of(self, name: str, primary: ModelVersion) -> ModelVersion | None:
        """The ready shadow version of a model, unless it is the one that answered."""
        routing = self.routing.get(name)
        if routing is None or routing.shadow is None or routing.shadow == primary.version:
            return None
        mv = self._models.get(name, {}).get(routing.shadow)
        return mv if mv is not None and mv.state is VersionState.READY else None

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self.versions(name)]

    def entry(self, name: str) -> ModelEntry:
        self.versions(name)
        return self._entries[name]

    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._entries)

    async def close(self) -> None:
        for mv in self.all_versions():
            await mv.close()
