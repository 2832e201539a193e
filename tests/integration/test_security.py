"""API keys end to end: `serving keys create`, then `serving serve --api-keys` answering unmodified
tritonclient (HTTP and gRPC) only with a key, per model; and no open server on a non-loopback
address unless asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from models import add_model
from server_process import MODES, ServerProcess, free_port, mode_args

pytestmark = pytest.mark.integration
SERVING = [sys.executable, "-m", "serving.cli"]


def create_key(path: Path, name: str, *extra: str) -> str:
    proc = subprocess.run(
        [*SERVING, "keys", "create", name, "--file", str(path), *extra], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("mode", MODES)
def test_keys_over_tritonclient_http_and_grpc(tmp_path: Path, mode: str) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "add", versions=(1,))
    add_model(repo, "other", versions=(1,))
    keys = tmp_path / "keys.yaml"
    full, narrow = create_key(keys, "full"), create_key(keys, "narrow", "--models", "add")
    listing = subprocess.run(
        [*SERVING, "keys", "list", "--file", str(keys)], capture_output=True, text=True, timeout=60
    )
    assert "full" in listing.stdout and "narrow" in listing.stdout and full not in listing.stdout
    server = ServerProcess(repo, tmp_path / "server.log", args=("--api-keys", str(keys), *mode_args(mode)))
    server.start()
    try:
        assert f"access: API keys from {keys}" in server.log_path.read_text()
        x = np.ones((1, 4), np.float32)
        for key, model, ok in (
            (full, "other", True),
            (narrow, "add", True),
            (narrow, "other", False),
            (None, "add", False),
        ):
            headers = {"authorization": f"Bearer {key}"} if key else {}  # gRPC metadata keys are lowercase
            http = thttp.InferenceServerClient(server.http_url)
            inp = thttp.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
            ginp = tgrpc.InferInput("x", [1, 4], "FP32")
            ginp.set_data_from_numpy(x)
            if ok:
                np.testing.assert_array_equal(http.infer(model, [inp], headers=dict(headers)).as_numpy("y"), x + 1)
                np.testing.assert_array_equal(
                    grpc_client.infer(model, [ginp], headers=dict(headers)).as_numpy("y"), x + 1
                )
            else:
                with pytest.raises(InferenceServerException) as http_err:
                    http.infer(model, [inp], headers=dict(headers))
                with pytest.raises(InferenceServerException) as grpc_err:
                    grpc_client.infer(model, [ginp], headers=dict(headers))
                want = ("401", "UNAUTHENTICATED") if key is None else ("403", "PERMISSION_DENIED")
                assert want[0] in str(http_err.value.status()) and want[1] in str(grpc_err.value.status())
            http.close()
            grpc_client.close()
        assert thttp.InferenceServerClient(server.http_url).is_server_ready()  # health stays open
    finally:
        assert server.stop() == 0, server.log()
    assert full not in server.log_path.read_text() and narrow not in server.log_path.read_text()


@pytest.mark.parametrize("mode", MODES)
def test_an_open_server_binds_loopback_only_unless_insecure(tmp_path: Path, mode: str) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "add", versions=(1,))
    cmd = [*SERVING, "serve", *mode_args(mode), "--repository", str(repo), "--host", "0.0.0.0", "--http-port", str(free_port()),
           "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "without API keys" in proc.stderr and "--insecure" in proc.stderr
    assert "Started a local Ray" not in proc.stderr + proc.stdout


MARKER = "PAYLOAD-MARKER-" + "q" * 2000


def test_protected_health_keeps_replicas_healthy_and_no_payload_reaches_the_logs(tmp_path: Path) -> None:
    """With ``protect_health`` health needs a key, while Serve's checks of each replica (its own
    probe token) keep passing; hostile requests carrying a long marker in every field a client
    controls get 4xx, and the logs quote at most a short prefix of it."""
    import json
    import time
    import urllib.error
    import urllib.request

    repo = tmp_path / "repo"
    add_model(repo, "add", versions=(1,))
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, "ops", "--admin")
    auth = {"authorization": f"Bearer {key}"}
    server = ServerProcess(
        repo, tmp_path / "server.log", args=("--api-keys", str(keys)), env={"SERVING_PROTECT_HEALTH": "true"},
        ready_headers=auth,
    )  # fmt: skip
    server.start()

    def status(path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
        req = urllib.request.Request(f"http://{server.http_url}{path}", data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        assert status("/v2/health/ready") == 401 and status("/v2/health/ready", headers=auth) == 200
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|Unauthenticated"):
            tgrpc.InferenceServerClient(server.grpc_url).is_server_live()
        assert tgrpc.InferenceServerClient(server.grpc_url).is_server_live(headers=auth)
        hostile = [
            (f"/v2/models/{MARKER}/infer", b"{}"),
            (
                "/v2/models/add/infer",
                json.dumps(
                    {"inputs": [{"name": MARKER, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
                ).encode(),
            ),
            (
                "/v2/models/add/infer",
                json.dumps(
                    {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": [MARKER] * 4}]}
                ).encode(),
            ),
            ("/v2/models/add/infer", ('{"inputs": [' + MARKER).encode()),
            ("/v2/models/add/infer", json.dumps({"inputs": [], "parameters": {"timeout": MARKER}}).encode()),
            ("/v2/admin/models/add/promote", json.dumps({"version": 1, "alias": MARKER}).encode()),
        ]
        for path, body in hostile:
            got = status(path, body, {**auth, "Content-Type": "application/json"})
            assert 400 <= got < 500, (path[:40], got)
        assert status("/v2/models/add/infer", b"{}", {"authorization": f"Bearer {MARKER}"}) == 401
        time.sleep(12)  # two of Serve's health checks (every 5 s) over the protected ports
        assert server.log_path.read_text().count("replica pid") == 1, server.log()  # never replaced
        assert status("/v2/health/ready", headers=auth) == 200
    finally:
        assert server.stop() == 0, server.log()
    log = server.log_path.read_text()
    assert MARKER[:80] not in log, [line[:200] for line in log.splitlines() if "PAYLOAD-MARKER" in line]
    assert key not in log
