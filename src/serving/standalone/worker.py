"""One standalone server process: the replica's data plane, with no Ray.

It loads the repository, listens on the HTTP and gRPC ports (SO_REUSEPORT, as replicas do) and
follows the lifecycle state and the repository folder, exactly as a Ray Serve replica does
(``LocalInferenceService`` and ``ReplicaServers`` are the same objects). On its own it also
serves ``/metrics``; under a supervisor it publishes its snapshot to a folder instead.

Signals: SIGTERM and SIGINT drain and stop. SIGHUP reads the settings and the repository again
and builds a new generation (service and servers) beside the running one; once the new one
listens, the old one drains as a stopping replica does, so no request is dropped. A reload that
fails (a bad settings file, a model that does not load) leaves the running generation serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config.server import ServerSettings
from serving.errors import ConfigError
from serving.protocol.servers import GIL_SWITCH_INTERVAL_S, ReplicaServers, describe, servers_for
from serving.service.local import LocalInferenceService
from serving.standalone.live_files import LiveFiles
from serving.standalone.metrics_totals import MetricsTotals
from serving.standalone.prometheus_endpoint import MetricsEndpoint
from serving.standalone.settings_source import SettingsSource, fixed_changes
from serving.telemetry import logs, tracing
from serving.telemetry.metrics import AggregatedMetrics

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """What one reading of the settings and the repository built."""

    settings: ServerSettings
    service: LocalInferenceService
    servers: ReplicaServers
    metrics: AggregatedMetrics


class Worker:
    """Serves until SIGTERM/SIGINT (or :meth:`request_stop`); :meth:`run` returns once all is released."""

    def __init__(self, source: SettingsSource, name: str = "worker-0", live_folder: Path | None = None) -> None:
        self.source = source
        self.name = name
        self.live_folder = live_folder
        self.totals = MetricsTotals()
        self.generations: list[Generation] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._node = socket.gethostname()
        self._files: LiveFiles | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self, settings: ServerSettings, on_ready: Callable[[Generation], None]) -> None:
        """Serve ``settings`` (read from ``source``): call ``on_ready`` once listening.

        Raises:
            ConfigError: the repository is invalid, or a port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        logs.configure(settings.log_format)
        tracing.configure_from_env()
        endpoint: MetricsEndpoint | None = None
        files: LiveFiles | None = None
        try:
            if self.live_folder is None:
                endpoint = _metrics_endpoint(settings, lambda: [(self.name, self.totals.snapshot())])
            else:
                files = self._files = LiveFiles(self.live_folder, self.name, self.snapshot)
            generation = await self._open(settings)
            on_ready(generation)
            await self._serve()
        finally:
            try:
                for generation in list(self.generations):
                    await self._close(generation)
            finally:
                if files is not None:
                    files.close()
                if endpoint is not None:
                    endpoint.close()
                tracing.shutdown()
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        """Wait for a stop, reloading on each SIGHUP meanwhile (a stop cancels a reload under way)."""
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            try:
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                reload.cancel()
            if self._stop.is_set():
                return
            self._reload.clear()
            reloading = asyncio.ensure_future(self._reload_once())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({reloading, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not reloading.done():
                    reloading.cancel()
                await asyncio.gather(reloading, return_exceptions=True)

    async def _reload_once(self) -> None:
        began = time.monotonic()
        log.info("SIGHUP: reading the settings and the repository again")
        running = self.generations[-1]
        try:
            settings = await asyncio.to_thread(self.source.load)  # files: off the serving loop
            changed = fixed_changes(running.settings, settings)
            if changed:
                raise ConfigError(f"{', '.join(changed)} changed: restart the server to apply")
            await self._open(settings)
        except Exception as exc:  # the running generation keeps serving
            message = exc.message if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.error("reload failed, still serving the settings and models loaded before: %s", message)
            return
        await self._close(running)
        log.info("reload done in %.1fs", time.monotonic() - began)

    async def _open(self, settings: ServerSettings) -> Generation:
        """Load the repository (in a thread: a running generation keeps serving) and listen.

        Raises:
            ConfigError: the repository is invalid, or a port cannot be bound.
        """
        metrics = self.totals.open()
        try:
            service = await _load(settings, metrics)
        except BaseException:
            self.totals.retire(metrics)
            raise
        servers = servers_for(service, settings, self._read_live)
        generation = Generation(settings, service, servers, metrics)
        self.generations.append(generation)
        try:
            addresses = await servers.start()
        except BaseException as exc:
            await self._close(generation)
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot listen on {settings.host}: {exc}") from None
            raise
        service.start_watch(settings.watch_repository)
        log.info("%s (pid %d) serving %s", self.name, os.getpid(), describe(addresses, settings.host))
        return generation

    async def _close(self, generation: Generation) -> None:
        """Drain and stop one generation; every part is released even if another fails."""
        try:
            await generation.servers.stop()
        finally:
            try:
                await generation.service.close()
            finally:
                self.generations.remove(generation)
                self.totals.retire(generation.metrics)

    def snapshot(self) -> dict[str, Any]:
        """This worker's totals and recent errors (``telemetry.live``), over its generations."""
        errors = [e for g in self.generations for e in g.service.live_snapshot()["errors"]]
        return {
            "time": time.time(),
            "metrics": self.totals.snapshot(),
            "errors": errors,
            "replica": self.name,
            "node": self._node,
            "pid": os.getpid(),
        }

    async def _read_live(self) -> list[dict[str, Any]]:
        if self._files is None:
            return [self.snapshot()]
        return await asyncio.to_thread(self._files.read_all)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (uvicorn[standard] brings it), as Ray runs a replica's loop, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(worker: Worker, settings: ServerSettings, on_ready: Callable[[Generation], None]) -> None:
    """Run ``worker`` on a loop of its own until it stops (the process's main thread: signals).

    Raises:
        ConfigError: the repository is invalid, or a port cannot be bound.
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(worker.run(settings, on_ready))


async def _load(settings: ServerSettings, metrics: AggregatedMetrics) -> LocalInferenceService:
    """``LocalInferenceService.from_repository`` in a thread. Cancelled, it waits for the load
    to end and closes what it built (the thread cannot be interrupted)."""
    loading = asyncio.ensure_future(
        asyncio.to_thread(
            LocalInferenceService.from_repository,
            settings.repository,
            settings.server_name,
            metrics,
            settings.state_dir,
            settings.drain_seconds,
            settings.prediction_log,
        )
    )
    try:
        return await asyncio.shield(loading)
    except asyncio.CancelledError:
        service = await asyncio.gather(loading, return_exceptions=True)
        if isinstance(service[0], LocalInferenceService):
            await service[0].close()
        raise


def _metrics_endpoint(
    settings: ServerSettings, snapshots: Callable[[], list[tuple[str, dict[str, Any]]]]
) -> MetricsEndpoint:
    """Raises: ConfigError: the metrics port cannot be bound."""
    try:
        return MetricsEndpoint(settings.host, settings.metrics_port, snapshots)
    except OSError as exc:
        raise ConfigError(f"cannot listen for metrics on {settings.host}:{settings.metrics_port}: {exc}") from None
