"""What a gRPC front end itself must get right, over both (the compiled one, and grpc.aio, its
fallback): many calls at once each get their own answer, a call's deadline stops its handler,
an unknown method is UNIMPLEMENTED, and a stop lets open calls finish before it cuts them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving import codecs
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb.inference_pb2_grpc import GRPCInferenceServiceStub
from serving.protocol.grpc_frontends import FrontEndKind, GrpcFrontEnd, chosen, compiled_available
from serving.service.local import LocalInferenceService

from adapter_support import start_grpc
from models import add_model, spin_model

SPIN_SECOND = 1_000_000
"""Loop steps of the spin model that take roughly a second (about a microsecond a step)."""


@pytest.fixture
async def spin_server(
    tmp_path: Path, grpc_front_end: FrontEndKind
) -> AsyncIterator[tuple[LocalInferenceService, GrpcFrontEnd, str]]:
    spin_model(tmp_path, max_batch_size=1)
    add_model(tmp_path, versions=(1,))
    service = LocalInferenceService.from_repository(tmp_path)
    server, target = await start_grpc(service, grpc_front_end)
    try:
        yield service, server, target
    finally:
        await server.stop(None)
        await service.close()


@pytest.fixture
async def stub(
    spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str],
) -> AsyncIterator[GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(spin_server[2]) as channel:
        yield GRPCInferenceServiceStub(channel)


def spin_request(spins: int, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="spin", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="spins", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.extend(
        [codecs.to_raw(np.full((1, 4), float(len(request_id)), np.float32), "FP32"), np.int64([[spins]]).tobytes()]
    )
    return request


async def settled(service: LocalInferenceService) -> tuple[int, int]:
    for _ in range(500):
        if service.in_flight_and_queued() == (0, 0):
            break
        await asyncio.sleep(0.01)
    return service.in_flight_and_queued()


async def test_many_calls_at_once_each_get_their_own_answer(
    spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str], stub: GRPCInferenceServiceStub
) -> None:
    service = spin_server[0]
    ids = [f"call-{'x' * (n % 7)}-{n}" for n in range(300)]
    answers = await asyncio.gather(*(stub.ModelInfer(spin_request(n % 5, i), timeout=30) for n, i in enumerate(ids)))
    for n, (request_id, answer) in enumerate(zip(ids, answers, strict=True)):
        assert answer.id == request_id
        y = np.frombuffer(answer.raw_output_contents[0], np.float32)
        assert y.tolist() == [float(len(request_id) + n % 5)] * 4
    assert await settled(service) == (0, 0)


async def test_a_deadline_stops_the_handler_and_the_server_serves_on(
    spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str], stub: GRPCInferenceServiceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.ModelInfer(spin_request(SPIN_SECOND), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await settled(spin_server[0]) == (0, 0)
    assert (await stub.ModelInfer(spin_request(1, "after"), timeout=30)).id == "after"


async def test_an_unknown_method_is_unimplemented(spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str]) -> None:
    _, _, target = spin_server
    async with grpc.aio.insecure_channel(target) as channel:
        for path in ("/inference.GRPCInferenceService/NoSuchCall", "/other.Service/ModelInfer"):
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary(path)(b"", timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stub = GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live


async def test_a_stop_lets_open_calls_finish_and_refuses_new_ones(
    spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str],
) -> None:
    service, server, target = spin_server
    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        open_call = stub.ModelInfer(spin_request(SPIN_SECOND // 2, "open"), timeout=30)
        while service.in_flight_and_queued()[0] == 0:
            await asyncio.sleep(0.005)
        stopping = asyncio.ensure_future(server.stop(20.0))
        assert (await open_call).id == "open"
        await asyncio.wait_for(stopping, 20)
    async with grpc.aio.insecure_channel(target) as fresh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await GRPCInferenceServiceStub(fresh).ServerLive(pb.ServerLiveRequest(), timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_a_stop_with_no_grace_cancels_open_calls(
    spin_server: tuple[LocalInferenceService, GrpcFrontEnd, str], stub: GRPCInferenceServiceStub
) -> None:
    service, server, _ = spin_server
    held = stub.ModelInfer(spin_request(3 * SPIN_SECOND, "held"), timeout=60)
    while service.in_flight_and_queued()[0] == 0:
        await asyncio.sleep(0.005)
    await asyncio.wait_for(server.stop(None), 20)
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await held
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert await settled(service) == (0, 0)


def test_auto_serves_with_the_compiled_front_end_where_it_is_built() -> None:
    """`make` builds the extension (make compiled-check fails the run otherwise): `auto` takes it."""
    assert compiled_available() is None
    assert chosen("auto").startswith("compiled (grpc++ ")
    assert chosen("aio").startswith("grpc.aio")
