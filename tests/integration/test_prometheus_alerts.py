"""A real Prometheus (Debian's `prometheus`) scrapes the running server and evaluates
configs/prometheus/alerts.yml; errors and overload make the matching alerts fire, then resolve.

The rules are the shipped ones with their durations scaled down (``for:`` to 2 s, rate
windows to 15 s) so a test can watch them change state.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_process import alerts, get, running_prometheus, wait_for

from server_process import ServerProcess

pytestmark = pytest.mark.integration

BROKEN = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4}]}).encode()
SLOW = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [1.0] * 1024}]}).encode()


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(server.metrics_port, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


class Traffic:
    """Sends ``body`` to ``path`` from a background thread until stopped."""

    def __init__(self, server: ServerProcess, path: str, body: bytes, burst: int) -> None:
        self.url = f"http://{server.http_url}{path}"
        self.body, self.burst = body, burst
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with ThreadPoolExecutor(self.burst) as pool:
            while not self._stop.is_set():
                self.codes += pool.map(lambda _: post(self.url, self.body), range(self.burst))
                self._stop.wait(0.3)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.codes


@pytest.mark.both_modes
def test_prometheus_scrapes_the_server(prometheus: str, server: ServerProcess) -> None:
    def up() -> bool:
        doc = get(f"{prometheus}/api/v1/query?query=up%7Bjob%3D%22serving%22%7D") or {}
        result = doc.get("data", {}).get("result", [])
        return bool(result) and result[0]["value"][1] == "1"

    wait_for(up, 30, "Prometheus never scraped the server")


def test_errors_and_overload_fire_their_alerts_then_resolve(prometheus: str, server: ServerProcess) -> None:
    errors = Traffic(server, "/v2/models/broken/infer", BROKEN, burst=1)
    overload = Traffic(server, "/v2/models/slow/infer", SLOW, burst=12)
    seen: dict[tuple[str, str], set[str]] = {}
    wanted = [("ServingErrorRatioHigh", "broken"), ("ServingOverloaded", "slow")]

    def firing() -> bool:
        for key, state in alerts(prometheus).items():
            seen.setdefault(key, set()).add(state)
        return all("firing" in seen.get(k, set()) for k in wanted)

    try:
        wait_for(firing, 90, "alerts did not fire")
    finally:
        codes = errors.stop(), overload.stop()
    assert set(codes[0]) == {500}
    assert 503 in codes[1]
    for key in wanted:
        assert seen[key] >= {"pending", "firing"} or seen[key] == {"firing"}, seen
    assert ("ServingErrorRatioHigh", "slow") not in seen  # overload is not a server error
    wait_for(lambda: not set(wanted) & set(alerts(prometheus)), 90, "alerts did not resolve")
