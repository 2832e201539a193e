"""Ray Serve's proxy health routes on the replica's own HTTP port, checked with the exact probe
KubeRay gives a RayService's worker pods (``wget -T 2 -q -O- http://localhost:8000/-/healthz |
grep success``, ray-project/kuberay#1808): healthy only while the replica is ready, 503 while
it drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from serving.errors import ServingError
from serving.protocol.servers import ReplicaServers
from serving.service.local import LocalInferenceService

from models import add_model

KUBERAY_WORKER_PROBE = "wget -T 2 -q -O- http://localhost:{port}/-/healthz | grep success"


async def probe(port: int) -> tuple[int, str]:
    """Run KubeRay's probe as the kubelet does (a shell; its exit status decides)."""
    shell = await asyncio.create_subprocess_exec(
        "bash", "-c", KUBERAY_WORKER_PROBE.format(port=port), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(shell.communicate(), 10)
    return shell.returncode or 0, out.decode()


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[tuple[ReplicaServers, LocalInferenceService, Path]]:
    add_model(tmp_path, versions=(1,))
    service = LocalInferenceService.from_repository(tmp_path)
    servers = ReplicaServers(
        service, host="127.0.0.1", http_port=0, grpc_port=0, max_request_bytes=1 << 20, drain_seconds=0.5
    )
    await servers.start()
    yield servers, service, tmp_path
    await servers.stop()
    await service.close()


async def test_kuberays_worker_probe_passes_on_a_ready_replica(
    replica: tuple[ReplicaServers, LocalInferenceService, Path],
) -> None:
    servers, _, _ = replica
    assert servers.addresses is not None
    assert await probe(servers.addresses.http_port) == (0, "success\n")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers.addresses.http_port}") as http:
        routes = await http.get("/-/routes")
        assert routes.status_code == 200 and routes.json() == {"/": "serving"}


async def test_kuberays_worker_probe_fails_while_a_model_is_not_ready(
    replica: tuple[ReplicaServers, LocalInferenceService, Path],
) -> None:
    servers, service, repo = replica
    assert servers.addresses is not None
    add_model(repo, "late", versions=(1,))
    (repo / "late" / "1" / "model.onnx").write_bytes(b"not onnx")  # a model that cannot become ready
    assert service.admin is not None
    with pytest.raises(ServingError, match="late"):
        await service.admin.load("late", None, "test")
    code, out = await probe(servers.addresses.http_port)
    assert code != 0 and "success" not in out
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers.addresses.http_port}") as http:
        answer = await http.get("/-/healthz")
        assert answer.status_code == 503 and "not ready" in answer.text.lower()


async def test_healthz_is_503_while_draining(replica: tuple[ReplicaServers, LocalInferenceService, Path]) -> None:
    servers, _, _ = replica
    servers.http_app.draining = True  # what stop() sets first
    transport = httpx.ASGITransport(app=servers.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
        for route in ("/-/healthz", "/-/routes"):
            answer = await http.get(route)
            assert answer.status_code == 503 and "drained" in answer.text
    servers.http_app.draining = False
