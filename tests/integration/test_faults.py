"""Faults: a replica process killed with SIGKILL under load from both protocols. Serve notices
(health check / actor death) and starts a new replica (standalone: the supervisor restarts the
worker); requests fail only while nothing serves
the dead replica's connections, no request hangs past its client deadline, and the number of
failures and the time to full recovery are reported."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from load_clients import SIZE, Load, log_count, new_connection_request, wait_until
from models import slow_model
from server_process import MODES, ServerProcess, mode_args

pytestmark = pytest.mark.integration


def replica_pids(server: ServerProcess) -> list[int]:
    """The processes that serve: Serve's replicas, or the standalone supervisor's workers."""
    serving = "ServeReplica" if server.mode == "ray" else "serving.standalone.worker_process"
    pids = []
    for p in server.descendants():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and serving in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return pids


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_replica_is_replaced_and_the_other_serves_meanwhile(tmp_path: Path, mode: str) -> None:
    repo = tmp_path / "repo"
    slow_model(repo, size=SIZE, repeats=10, max_batch_size=1, max_queue_size=256)
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args(mode, 2))
    server.start()
    try:
        pids = replica_pids(server)
        assert len(pids) == 2
        load = Load()
        for _ in range(2):
            load.grpc(server)
            load.http_keepalive(server)
        time.sleep(2)
        before = dict(load.outcomes)
        killed_at = time.monotonic()
        psutil.Process(pids[0]).send_signal(signal.SIGKILL)
        # Serve replaces the dead replica; until then the survivor takes the reconnecting clients.
        wait_until(lambda: len(set(replica_pids(server)) - {pids[0]}) == 2, 120, "a replacement replica", server)
        recovered = time.monotonic() - killed_at
        statuses = [new_connection_request(server) for _ in range(20)]
        time.sleep(1)
        load.stop()
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert statuses == [200] * 20
    failed = load.outcomes["failed"]
    total = load.outcomes["ok"] + failed
    window = max(load.last_failure - killed_at, 0.0) if failed else 0.0
    # Clients fail only while they reconnect: HTTP at once to the surviving replica (same ports);
    # a gRPC channel whose first reconnect raced the dying listener backs off (grpc's 1 s, x1.6) and
    # fails calls fast meanwhile. Bounded: every failure is a connection error, none a hang
    # (client deadline 30 s), and the failures stop within 30 s of the kill.
    # (IncompleteRead: the answer was being written when the process died)
    connection = ("UNAVAILABLE", "Connection", "RemoteDisconnected", "Stream removed", "IncompleteRead")
    assert all(any(c in kind for c in connection) for kind in load.kinds), load.kinds
    assert window < 30, (window, dict(load.outcomes))
    assert load.outcomes["ok"] > before.get("ok", 0)
    print(
        f"{mode}: replica SIGKILL under load: {failed} of {total} requests failed "
        f"({load.outcomes['failed http']} HTTP, {load.outcomes['failed grpc']} gRPC), the last "
        f"{window:.1f} s after the kill; replacement replica running after {recovered:.1f} s"
    )


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_under_load_finishes_what_is_in_flight_and_refuses_the_rest(tmp_path: Path, mode: str) -> None:
    repo = tmp_path / "repo"
    slow_model(repo, size=SIZE, repeats=30, max_batch_size=1, max_queue_size=256)
    server = ServerProcess(repo, tmp_path / "server.log", env={"SERVING_DRAIN_SECONDS": "5"}, args=mode_args(mode))
    server.start()
    load = Load()
    grpc_connections = 2
    try:
        for _ in range(grpc_connections):
            load.grpc(server)
            load.http_keepalive(server)
        time.sleep(2)
        served_before = load.outcomes["ok"]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(90)
        load.stop()
    finally:
        server.stop()
    assert code == 0, server.log()
    assert "servers stopped after" in server.log_path.read_text()
    # After the signal: answers for what was sent, then refused connections; no request that
    # reached a server is cut off (no 5xx, no connection dropped mid-answer).
    refused = ("ConnectionRefusedError", "failed to connect", "Connection refused", "connection attempt timed out")
    unexpected = [e for e in load.kinds if not any(r in e for r in refused)]
    print(f"{mode}: SIGTERM under load: {dict(load.outcomes)}; after the signal: {load.errors[:3]}")
    assert load.outcomes["ok"] > served_before
    # grpc core cancels a call that reaches the server in the instant its shutdown begins, before
    # the application has taken it (README: rolling updates): at most one per gRPC client
    # connection, as in test_replicas. Seen: 2 with 1,867 answers on a loaded run (the old bound,
    # one per 2,000 answers, failed it), 0-2 in others; none reached our handlers.
    cancelled = load.kinds.get("grpc: [StatusCode.CANCELLED] CANCELLED", 0)
    assert [e for e in unexpected if "CANCELLED" not in e] == [], unexpected
    assert cancelled <= grpc_connections, load.kinds


def test_a_killed_supervisor_takes_its_workers_with_it(tmp_path: Path) -> None:
    """Standalone --workers 2: the supervisor SIGKILLed (no chance to stop anything), its workers
    get the parent-death signal, drain and exit: none is left holding the ports."""
    repo = tmp_path / "repo"
    slow_model(repo, size=SIZE, repeats=1, max_batch_size=1, max_queue_size=256)
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args("standalone", 2))
    server.start()
    workers = [psutil.Process(pid) for pid in replica_pids(server)]
    assert len(workers) == 2
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    _, alive = psutil.wait_procs(workers, timeout=30)
    for process in alive:  # a failure: end them, by PID, before reporting it
        process.kill()
    assert not alive, server.log()
    assert log_count(server, "servers stopped after") == 2, server.log()  # each drained (they log to its file)
    with pytest.raises(ConnectionRefusedError):  # nothing holds the HTTP port any more
        socket.create_connection(("127.0.0.1", server.http_port), timeout=5).close()


def test_a_serve_controller_that_stops_answering_does_not_keep_the_server_from_stopping(tmp_path: Path) -> None:
    """Serve's controller frozen (SIGSTOP: alive, never answering): SIGTERM still stops `serving
    serve`, once the wait for Serve's answer (the drain, Serve's 5 s and ``STOP_MARGIN_S``) is
    over, with status 1 (its replicas may not have drained): it kills the frozen controller, which
    ends its own call into Ray, so Ray's shutdown stops the local Ray's processes in order (the
    raylet its agents) rather than the process exiting during it: none of them is left, frozen or
    not."""
    repo = tmp_path / "repo"
    slow_model(repo, size=8, repeats=1, max_batch_size=1, max_queue_size=8)
    server = ServerProcess(repo, tmp_path / "server.log", env={"SERVING_DRAIN_SECONDS": "0"})
    server.start()
    try:
        controllers = [p for p in server.descendants() if "ServeController" in " ".join(p.cmdline())]
        assert len(controllers) == 1, [p.cmdline() for p in server.descendants()]
        ray_processes = server.descendants()
        controllers[0].send_signal(signal.SIGSTOP)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(90)  # a hang detector: the bound is 35 s
    finally:
        server.stop()
    assert code == 1, server.log()
    assert "Serve did not confirm the application's end within 35s: its controller is killed" in server.log()
    assert "did not end within" not in server.log()  # the kill answered the call waiting on Serve
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert alive == [], [p.pid for p in alive]
