"""A stopping replica's gRPC side ends once none of our handlers runs, not when grpc's grace ends.

grpc core counts a call as active from its headers on: a unary call whose request message has not
arrived yet (a client that sent its headers and stalled, or one caught by the shutdown) is held
until the grace ends, though no handler of ours will ever run for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from serving.protocol.servers import ReplicaServers
from serving.service.local import LocalInferenceService

from models import add_model

DRAIN_S = 60.0


async def test_a_call_held_by_grpc_core_does_not_hold_the_drain_for_its_grace(tmp_path: Path) -> None:
    add_model(tmp_path, versions=(1,))
    service = LocalInferenceService.from_repository(tmp_path)
    servers = ReplicaServers(
        service, host="127.0.0.1", http_port=0, grpc_port=0, max_request_bytes=1 << 20, drain_seconds=DRAIN_S
    )
    addresses = await servers.start()
    never = asyncio.Event()

    async def no_message() -> AsyncIterator[bytes]:  # headers sent, the request message never comes
        await never.wait()
        yield b""

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{addresses.grpc_port}")
    held = channel.stream_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=bytes, response_deserializer=bytes
    )(no_message())
    try:
        await asyncio.sleep(0.5)  # the call is open on the server
        await asyncio.wait_for(servers.stop(), DRAIN_S / 2)  # not the grace: a hang bound, half of it
        try:
            await asyncio.wait_for(held, 10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), exc
    finally:
        held.cancel()
        await channel.close()
        await service.close()
