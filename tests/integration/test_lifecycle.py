"""Start-up failures are clear; stopping the server leaves no process behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from models import add_model
from server_process import ServerProcess

pytestmark = pytest.mark.integration


def serving_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "serving")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_typo_in_model_yaml_fails_at_start_naming_file_and_key(tmp_path: Path) -> None:
    add_model(tmp_path, versions=(1,), max_bach_size=4)
    result = serving_cli("serve", "--repository", str(tmp_path))
    assert result.returncode == 2
    assert str(tmp_path / "add" / "model.yaml") in result.stderr
    assert "max_bach_size: unknown key" in result.stderr


def test_missing_repository_fails_at_start(tmp_path: Path) -> None:
    result = serving_cli("serve", "--repository", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_sigint_stops_every_process_the_server_started(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    server = ServerProcess(repo, tmp_path / "server.log")
    server.start()
    started = server.descendants()
    names = {p.name() for p in started}
    assert any("raylet" in n for n in names), names
    assert any("haproxy" in n for n in names), names
    assert server.stop() == 0, server.log()
    deadline = time.monotonic() + 30
    alive = started
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    assert not alive, [(p.pid, p.name()) for p in alive]
