"""Faults: a replica process killed with SIGKILL under load from both protocols. Serve notices
(health check / actor death) and starts a new replica; requests fail only while nothing serves
the dead replica's connections, no request hangs past its client deadline, and the number of
failures and the time to full recovery are reported."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from load_clients import SIZE, Load, new_connection_request, wait_until
from models import slow_model
from server_process import ServerProcess

pytestmark = pytest.mark.integration


def replica_pids(server: ServerProcess) -> list[int]:
    pids = []
    for p in server.descendants():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "ServeReplica" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return pids


def test_a_killed_replica_is_replaced_and_the_other_serves_meanwhile(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    slow_model(repo, size=SIZE, repeats=10, max_batch_size=1, max_queue_size=256)
    server = ServerProcess(repo, tmp_path / "server.log", args=("--replicas", "2"))
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
    # Only requests in flight on the killed replica's connections can fail: each client thread
    # has one request in flight at a time, so at most one failure per client thread (4) plus the
    # reconnect attempts that raced the kill; nothing hangs (the client deadline is 30 s).
    assert failed <= 8, (dict(load.outcomes), load.errors)
    assert load.outcomes["ok"] > before.get("ok", 0)
    print(f"replica SIGKILL under load: {failed} of {total} requests failed ({load.errors[:4]}); "
          f"replacement replica running after {recovered:.1f} s")  # fmt: skip


def test_sigterm_under_load_finishes_what_is_in_flight_and_refuses_the_rest(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    slow_model(repo, size=SIZE, repeats=30, max_batch_size=1, max_queue_size=256)
    server = ServerProcess(repo, tmp_path / "server.log", env={"SERVING_DRAIN_SECONDS": "5"})
    server.start()
    load = Load()
    try:
        for _ in range(2):
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
    print(f"SIGTERM under load: {dict(load.outcomes)}; after the signal: {load.errors[:3]}")
    assert load.outcomes["ok"] > served_before
    # grpc core may cancel a call that reached the server in the instant its shutdown began,
    # before our code took it (README: rolling updates); seldom, and nothing else.
    cancelled = load.kinds.get("grpc: [StatusCode.CANCELLED] CANCELLED", 0)
    assert [e for e in unexpected if "CANCELLED" not in e] == [], unexpected
    assert cancelled <= max(1, load.outcomes["ok"] // 2000), load.kinds
