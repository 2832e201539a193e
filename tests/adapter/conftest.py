"""Adapter tests: a real LocalInferenceService over tiny real models, reached through
httpx's ASGI transport (HTTP) and a real grpc.aio server on an ephemeral port (gRPC)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from serving.protocol._pb import inference_pb2_grpc
from serving.service.local import LocalInferenceService

from adapter_support import http_client_for, start_grpc
from models import build_test_repository


@pytest.fixture(autouse=True)
def disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("adapter tests must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture
async def service(repository: Path) -> AsyncIterator[LocalInferenceService]:
    svc = LocalInferenceService.from_repository(repository)
    yield svc
    await svc.registry.close()


@pytest.fixture
async def http(service: LocalInferenceService) -> AsyncIterator[httpx.AsyncClient]:
    async with await http_client_for(service) as client:
        yield client


@pytest.fixture
async def grpc_target(service: LocalInferenceService) -> AsyncIterator[str]:
    server, target = await start_grpc(service)
    yield target
    await server.stop(None)


@pytest.fixture
async def stub(grpc_target: str) -> AsyncIterator[inference_pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)
