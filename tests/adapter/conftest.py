"""Adapter tests: a real LocalInferenceService over tiny real models, reached through
httpx's ASGI transport (HTTP) and a real gRPC server on an ephemeral port: each gRPC test runs
over both front ends, the compiled one and grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from serving.protocol._pb import inference_pb2_grpc
from serving.protocol.grpc_frontends import FrontEndKind
from serving.service.local import LocalInferenceService

from adapter_support import GRPC_FRONT_ENDS, http_client_for, start_grpc
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


@pytest.fixture(params=GRPC_FRONT_ENDS)
def grpc_front_end(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def grpc_target(service: LocalInferenceService, grpc_front_end: FrontEndKind) -> AsyncIterator[str]:
    server, target = await start_grpc(service, grpc_front_end)
    yield target
    await server.stop(None)


@pytest.fixture
async def stub(grpc_target: str) -> AsyncIterator[inference_pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)
