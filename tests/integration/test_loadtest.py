"""The Locust scenarios, headless and bounded, against the session's server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from server_process import ServerProcess

pytestmark = pytest.mark.integration

RUNNER = Path(__file__).parents[2] / "loadtests" / "run.py"
USERS = 3


def stats(server: ServerProcess, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]["inference_stats"]
    return int(s["success"]["count"]), int(s["fail"]["count"])


def run(server: ServerProcess, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, str(RUNNER), "--host", f"http://{server.http_url}", "--grpc-host", server.grpc_url,
        "--model", "identity", "--duration", "4", "--users", str(USERS), "--max-requests", "3000",
        "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150)


def counted(out: Path) -> dict[str, tuple[int, int]]:
    rows = (out / "summary.md").read_text().splitlines()
    table = [r.split("|")[1:-1] for r in rows if r.startswith("| ") and not r.startswith("| protocol")]
    return {cells[0].strip(): (int(cells[1]), int(cells[2])) for cells in table}


def test_report_files_and_counts_match_the_server(server: ServerProcess, tmp_path: Path) -> None:
    before = stats(server, "identity")
    slo = tmp_path / "slo.yaml"
    slo.write_text("p99_ms: 60000\nerror_ratio: 0.0\nmin_rps: 1\n")
    result = run(server, tmp_path / "report", "--shape", "step", "--slo-file", str(slo))
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "report"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    for png in ("throughput.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_protocol = counted(out)
    assert set(per_protocol) == {"http-json", "http-binary", "grpc"}
    assert all(n > 0 and failed == 0 for n, failed in per_protocol.values()), per_protocol
    after = stats(server, "identity")
    sent = sum(n for n, _ in per_protocol.values())
    served = after[0] - before[0]
    # Locust counts a request when its answer arrives; a user stopped at the deadline may
    # have one request in flight that the server answered but Locust never recorded.
    assert sent <= served <= sent + USERS, (sent, served)
    assert after[1] == before[1]
    assert "SLO" in (out / "summary.md").read_text() and "PASS" in result.stdout


def test_an_impossible_slo_fails_the_command(server: ServerProcess, tmp_path: Path) -> None:
    result = run(server, tmp_path / "strict", "--protocols", "grpc", "--slo-p99-ms", "0.001", "--slo-min-rps", "1e9")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "p99" in result.stdout and "req/s" in result.stdout
