"""What the adapters and the batcher record, per request and per batch, over both protocols."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from test_grpc import infer_req

from serving.protocol._pb import inference_pb2_grpc
from serving.service.local import LocalInferenceService
from serving.telemetry.metrics import (
    BATCH_SIZE,
    COMPUTE_SECONDS,
    IN_FLIGHT,
    QUEUE_SECONDS,
    READY,
    REJECTED,
    REQUEST_SECONDS,
    REQUESTS,
    MemoryMetrics,
)

from adapter_support import http_client_for, start_grpc

ADD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture
async def metered(repository: Path) -> AsyncIterator[tuple[LocalInferenceService, MemoryMetrics]]:
    metrics = MemoryMetrics()
    svc = LocalInferenceService.from_repository(repository, metrics=metrics)
    yield svc, metrics
    await svc.registry.close()


async def test_every_request_is_counted_with_bounded_labels(
    metered: tuple[LocalInferenceService, MemoryMetrics],
) -> None:
    svc, m = metered
    server, target = await start_grpc(svc)
    try:
        async with await http_client_for(svc) as http, grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                assert (await http.post("/v2/models/add/infer", json=ADD)).status_code == 200
            assert (await http.post("/v2/models/add/versions/2/infer", json=ADD)).status_code == 200
            assert (await http.post("/v2/models/add/infer", content=b"{nope")).status_code == 400
            assert (await http.post("/v2/models/some-client-typo/infer", json=ADD)).status_code == 404
            assert (await http.post("/v2/models/add/versions/77/infer", json=ADD)).status_code == 404
            await stub.ModelInfer(infer_req())
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(infer_req(shape=[2, 2]))
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff garbage")
    finally:
        await server.stop(None)

    newest = str(svc.registry.get("add").version)
    requests = {k[1]: v for k, v in m.values.items() if k[0] == REQUESTS.name}
    assert requests == {
        ("add", newest, "http", "ok"): 3,
        ("add", "2", "http", "ok"): 1,
        ("add", newest, "http", "invalid_input"): 1,
        ("_unknown", "_unknown", "http", "not_found"): 1,
        ("add", "_unknown", "http", "not_found"): 1,
        ("add", newest, "grpc", "ok"): 1,
        ("add", newest, "grpc", "invalid_input"): 1,
        ("_unknown", "_unknown", "grpc", "invalid_input"): 1,
    }
    latencies = {k[1]: len(v) for k, v in m.observations.items() if k[0] == REQUEST_SECONDS.name}
    assert sum(latencies.values()) == 10
    assert latencies[("add", newest, "http")] == 4
    assert m.values[(IN_FLIGHT.name, ("add", "http"))] == 0
    assert m.values[(READY.name, ("add", newest))] == 1
    batches = m.observations[(BATCH_SIZE.name, ("add", newest))]
    assert sum(batches) == 3 + 1  # rows executed by the newest version: 3 HTTP + 1 gRPC successes
    assert len(m.observations[(COMPUTE_SECONDS.name, ("add", newest))]) == len(batches)
    assert len(m.observations[(QUEUE_SECONDS.name, ("add", newest))]) == 4


async def test_overload_is_counted_as_rejected(metered: tuple[LocalInferenceService, MemoryMetrics]) -> None:
    """The ``slow`` test model holds 1 running + 2 queued; the rest are refused at once."""
    import asyncio

    svc, m = metered
    async with await http_client_for(svc) as http:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [1.0] * 1024}]}
        answers = await asyncio.gather(*(http.post("/v2/models/slow/infer", json=body) for _ in range(8)))
    codes = sorted(a.status_code for a in answers)
    rejected = codes.count(503)
    assert rejected > 0
    version = str(svc.registry.get("slow").version)
    assert m.values[(REJECTED.name, ("slow", version, "http"))] == rejected
    assert m.values[(REQUESTS.name, ("slow", version, "http", "overloaded"))] == rejected
