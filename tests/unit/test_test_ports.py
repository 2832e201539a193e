"""The test servers' ports: each pytest-xdist worker picks from its own share, so a port one worker
frees is never taken by a server of another worker while the first one's clients still knock on it."""

from __future__ import annotations

import pytest

from server_process import TEST_PORTS, free_port, worker_ports


def test_workers_pick_from_disjoint_shares_of_the_test_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    shares = []
    for i in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{i}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        share = worker_ports()
        assert share.start >= TEST_PORTS.start and share.stop <= TEST_PORTS.stop and len(share) > 1000
        assert all(free_port() in share for _ in range(20))
        shares.append(set(share))
    assert not (shares[0] & shares[1]) and not (shares[1] & shares[2]) and not (shares[0] & shares[2])


def test_outside_xdist_every_test_port_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert worker_ports() == TEST_PORTS
