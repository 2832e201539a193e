"""Start ``serving serve`` as a real subprocess (its own local Ray) and stop it by PID."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MODES = ("ray", "standalone")
"""How a test server runs: on a local Ray (Ray Serve replicas), or without Ray (``--standalone``)."""
READY_TIMEOUT_S = 240
BANNER = "serving is ready:"
STOP_TIMEOUT_S = 90


# Outside the kernel's ephemeral range (32768-60999 by default), from which Ray's own processes and
# every outgoing connection take ports while a server starts, and outside Ray's worker ports
# (10002-19999): a port checked free here stays free until the replica binds it seconds later.
TEST_PORTS = range(20000, 32000)


def mode_args(mode: str, processes: int = 1) -> tuple[str, ...]:
    """``serving serve`` arguments for ``processes`` serving processes in ``mode``: Ray Serve
    replicas, or standalone workers under a supervisor."""
    if mode == "ray":
        return ("--replicas", str(processes)) if processes > 1 else ()
    return ("--standalone", *(("--workers", str(processes)) if processes > 1 else ()))


def worker_ports() -> range:
    """This pytest-xdist worker's own share of TEST_PORTS (all of them outside xdist). Two workers
    never pick the same port: a test whose clients still knock on a stopped server's port (a drain
    under load) cannot reach a server another worker has started on it since (seen once: an HTTP
    client of a draining server answered by another test's gRPC server, HTTP/2 frames as its status line)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count <= 1 or not worker.startswith("gw"):
        return TEST_PORTS
    share = len(TEST_PORTS) // count
    start = TEST_PORTS.start + int(worker[2:]) % count * share
    return range(start, start + share)


def free_port() -> int:
    ports = worker_ports()
    for _ in range(200):
        port = random.choice(ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


@dataclass
class ServerProcess:
    repository: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    args: tuple[str, ...] = ()
    """Extra `serving serve` arguments (e.g. --replicas, --address)."""
    proc: subprocess.Popen[bytes] | None = None
    ready_context: ssl.SSLContext | None = None
    """For a server with TLS: how the readiness check connects (https)."""
    ready_headers: dict[str, str] = field(default_factory=dict)
    """For a server whose health needs a key: the readiness check's headers."""
    metrics_every_second: bool = True
    """Ray's metrics agent gets new values every second instead of every ten, so tests read them
    soon; benchmarks set False and run with Ray's default, as ``serving serve`` does (the agent and
    the replica's pushes then cost ~0.03 of a core less, measured on the 2-core VM)."""

    @property
    def mode(self) -> str:
        return "standalone" if "--standalone" in self.args else "ray"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def start(self, wait: bool = True) -> None:
        """Start the server (on free ports unless set) and wait until it answers ready."""
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        chosen = sorted(ports)
        self.http_port = self.http_port or chosen[0]
        self.grpc_port = self.grpc_port or chosen[1]
        self.metrics_port = self.metrics_port or chosen[2]
        cmd = [
            str(Path(sys.executable).parent / "serving"),
            "serve",
            "--repository",
            str(self.repository),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.args,
        ]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **({"RAY_metrics_report_interval_ms": "1000"} if self.metrics_every_second else {}),
            **self.env,
        }
        env.pop("RAY_ADDRESS", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Ready: the banner is printed (every replica is up) and the HTTP port answers ready."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if BANNER in self.log_path.read_text(errors="replace"):
                try:
                    scheme = "https" if self.ready_context is not None else "http"
                    url = f"{scheme}://{self.http_url}/v2/health/ready"
                    request = urllib.request.Request(url, headers=self.ready_headers)
                    with urllib.request.urlopen(request, timeout=2, context=self.ready_context) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{self.log()}")

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def descendant_names(self) -> set[str]:
        """Names of the processes under the server now (short-lived workers may vanish meanwhile)."""
        names = set()
        for p in self.descendants():
            try:
                names.add(p.name())
            except psutil.NoSuchProcess:
                pass
        return names

    def stop(self) -> int | None:
        """SIGINT (as Ctrl-C), then wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        children = self.descendants()
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # It did not stop by itself: end it and everything it had started, by PID.
            for p in [*children, psutil.Process(self.proc.pid)]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait()
            raise
