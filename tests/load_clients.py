"""Clients that keep a server busy over HTTP and gRPC and count every outcome (replica, rollout
and fault tests)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as tgrpc

from server_process import ServerProcess

SIZE = 256


def body_of(width: int, name: str = "x") -> bytes:
    """A V2 JSON request of one row of ``width`` FP32 values for input ``name``."""
    return b'{"inputs":[{"name":"%s","datatype":"FP32","shape":[1,%d],"data":[%s]}]}' % (
        name.encode(),
        width,
        b",".join([b"0.5"] * width),
    )


BODY = body_of(SIZE)


def log_count(server: ServerProcess, text: str) -> int:
    return server.log_path.read_text(errors="replace").count(text)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{server.log()}")
        time.sleep(0.25)


RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class Backoff:
    """What the README tells clients to do after a failed call: wait before the next one, doubling
    from 50 ms up to 1 s while calls keep failing (a tight retry loop against a channel in grpc's
    reconnect back-off only counts failures the server never sees)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._delay = 0.0

    def failed(self) -> None:
        self._delay = min(max(2 * self._delay, RETRY_FIRST_S), RETRY_MAX_S)
        self._stop.wait(self._delay)

    def succeeded(self) -> None:
        self._delay = 0.0


class Load:
    """Client threads sending until stopped; every outcome is counted. After a failure a client
    backs off before its next call, as real clients do (``Backoff``)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.kinds: Counter[str] = Counter()  # every distinct failure (first 160 characters), counted
        self.last_failure = 0.0  # time.monotonic() of the last failure
        self.versions: Counter[str] = Counter()  # the model_version of each answer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _record(self, ok: bool, what: str, version: str = "") -> None:
        with self._lock:
            self.outcomes["ok" if ok else "failed"] += 1
            if version:
                self.versions[version] += 1
            if not ok:
                self.outcomes[f"failed {what.split(':')[0]}"] += 1
                self.kinds[what[:160]] += 1
                self.last_failure = time.monotonic()
                if len(self.errors) < 20:
                    self.errors.append(what)

    def grpc(self, server: ServerProcess, model: str = "slow", version: str = "", width: int = SIZE) -> None:
        def run() -> None:
            client = tgrpc.InferenceServerClient(server.grpc_url)
            inp = tgrpc.InferInput("x", [1, width], "FP32")
            inp.set_data_from_numpy(np.full((1, width), 0.5, np.float32))
            deadline = time.monotonic() + 120
            backoff = Backoff(self._stop)
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    result = client.infer(model, [inp], model_version=version, client_timeout=30)
                    self._record(True, "grpc", result.get_response().model_version)
                    backoff.succeeded()
                except Exception as exc:  # every failure is counted, none expected
                    self._record(False, f"grpc: {exc}")
                    backoff.failed()
            client.close()

        self._start(run)

    def http_keepalive(self, server: ServerProcess, model: str = "slow", version: str = "", width: int = SIZE) -> None:
        """One persistent connection (http.client reopens it after a Connection: close)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        body = body_of(width)

        def run() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
            deadline = time.monotonic() + 120
            backoff = Backoff(self._stop)
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.request("POST", path, body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    raw = response.read()
                    answered = json.loads(raw).get("model_version", "") if response.status == 200 else ""
                    self._record(response.status == 200, f"http: status {response.status}", answered)
                    backoff.succeeded() if response.status == 200 else backoff.failed()
                except Exception as exc:
                    self._record(False, f"http: {exc!r}")
                    conn.close()
                    backoff.failed()
            conn.close()

        self._start(run)

    def _start(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def new_connection_request(server: ServerProcess) -> int:
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/slow/infer", data=BODY, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(r.status)
