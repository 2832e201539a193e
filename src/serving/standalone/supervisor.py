"""``serving serve --standalone --workers N``: N worker processes on the same ports, kept alive.

Each worker is ``python -m serving.standalone.worker`` (a process of its own: its own GIL and
event loop) listening on the shared HTTP and gRPC ports with SO_REUSEPORT, so the kernel spreads
connections over them. The supervisor imports no framework and serves no request: it starts the
workers and waits until each one listens, restarts one that dies (at once; after a quick
succession of deaths, with a growing pause), forwards SIGHUP (each worker reloads in process),
and serves ``/metrics`` from the snapshots the workers publish to a folder it owns.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config.server import ServerSettings
from serving.errors import StartupError
from serving.repository import scan_repository
from serving.standalone.live_files import read_snapshots
from serving.standalone.prometheus_endpoint import MetricsEndpoint
from serving.standalone.settings_source import SettingsSource

log = logging.getLogger(__name__)

WATCH_EVERY_S = 0.2
QUICK_DEATH_S = 10.0
"""A worker that dies sooner than this after its start is restarted after a pause, doubling
from RESTART_PAUSE_S up to MAX_RESTART_PAUSE_S (a model that crashes its process on load does
not make the supervisor spin)."""
RESTART_PAUSE_S = 0.5
MAX_RESTART_PAUSE_S = 30.0
STOP_GRACE_S = 10.0
"""Beyond ``drain_seconds``: how long a worker told to stop has before it is killed."""


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    ready_pipe: int | None
    started: float
    ready: bool = False
    pause_s: float = 0.0
    """The pause before this worker was started (it doubles while workers die quickly)."""
    restart_at: float | None = None
    """Once it has died: when its replacement starts."""


class Supervisor:
    def __init__(self, source: SettingsSource, settings: ServerSettings) -> None:
        self.source = source
        self.settings = settings
        self.live_folder = Path(tempfile.mkdtemp(prefix="serving-workers-"))
        self.workers: list[WorkerProcess] = []
        self.restarts = 0
        self._endpoint: MetricsEndpoint | None = None

    def run(self, stop: threading.Event, reload: threading.Event, on_ready: Callable[[], None]) -> None:
        """Start the workers, call ``on_ready`` once all listen, and keep them alive until ``stop``.

        Raises:
            ConfigError: the repository or a model.yaml is invalid (checked here, before any worker starts).
            StartupError: a worker exited before it listened (its reason is in its log lines).
        """
        scan_repository(self.settings.repository)
        try:
            self._endpoint = MetricsEndpoint(self.settings.host, self.settings.metrics_port, self.metrics_snapshots)
            self.workers = [self._spawn(f"worker-{i}") for i in range(self.settings.workers)]
            self._wait_ready(stop)
            if stop.is_set():
                return
            on_ready()
            while not stop.wait(WATCH_EVERY_S):
                if reload.is_set():
                    reload.clear()
                    self._signal_all(signal.SIGHUP)
                self._watch()
        finally:
            self._stop_all()
            if self._endpoint is not None:
                self._endpoint.close()
            shutil.rmtree(self.live_folder, ignore_errors=True)

    def metrics_snapshots(self) -> list[tuple[str, dict[str, Any]]]:
        return [(str(doc.get("replica", "")), doc.get("metrics", {})) for doc in read_snapshots(self.live_folder)]

    def _spawn(self, name: str, pause_s: float = 0.0) -> WorkerProcess:
        read, write = os.pipe()
        try:
            args = [name, self.source.to_json(), str(self.live_folder), str(write)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "serving.standalone.worker_process", *args], pass_fds=(write,)
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        log.info("started %s (pid %d)", name, proc.pid)
        return WorkerProcess(name, proc, read, time.monotonic(), pause_s=pause_s)

    def _wait_ready(self, stop: threading.Event) -> None:
        while not stop.is_set() and not all(w.ready for w in self.workers):
            for worker in self.workers:
                if worker.proc.poll() is not None and not worker.ready:
                    raise StartupError(f"{worker.name} exited with {worker.proc.returncode} before it listened")
            self._read_ready(WATCH_EVERY_S)

    def _read_ready(self, timeout_s: float) -> None:
        pipes = {w.ready_pipe: w for w in self.workers if w.ready_pipe is not None}
        if not pipes:
            time.sleep(timeout_s)
            return
        readable, _, _ = select.select(list(pipes), [], [], timeout_s)
        for fd in readable:
            worker = pipes[fd]
            worker.ready = os.read(fd, 64).startswith(b"ready")
            os.close(fd)
            worker.ready_pipe = None
            if worker.ready:
                log.info("%s (pid %d) listens", worker.name, worker.proc.pid)

    def _watch(self) -> None:
        """Restart the workers that died."""
        self._read_ready(0)
        for index, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None:
                continue
            if worker.ready_pipe is not None:
                os.close(worker.ready_pipe)
                worker.ready_pipe = None
            lived = time.monotonic() - worker.started
            pause = min(max(worker.pause_s * 2, RESTART_PAUSE_S), MAX_RESTART_PAUSE_S) if lived < QUICK_DEATH_S else 0.0
            if worker.restart_at is None:
                log.warning(
                    "%s (pid %d) exited with %s after %.1fs; restarting", worker.name, worker.proc.pid, code, lived
                )
                worker.restart_at = time.monotonic() + pause
            if time.monotonic() >= worker.restart_at:
                self.workers[index] = self._spawn(worker.name, pause)
                self.restarts += 1

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(sig)

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then kill those still there after the drain's budget."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_seconds + STOP_GRACE_S
        for worker in self.workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in time; killing it", worker.name, worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
            if worker.ready_pipe is not None:
                os.close(worker.ready_pipe)
                worker.ready_pipe = None
