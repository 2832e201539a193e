"""The replica's real servers (uvicorn with the bounded httptools protocol, grpc.aio) on
ephemeral ports: a request head that never ends is cut off at the bound with 431 instead of
being buffered, a large but finished head gets the application's 431, gRPC metadata over the
same bound is refused, and good requests are served after each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb import inference_pb2_grpc
from serving.protocol.bounded_http import MAX_HEAD_BYTES
from serving.protocol.servers import ReplicaServers, ServerAddresses
from serving.service.local import LocalInferenceService

GOOD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()


@pytest.fixture
async def servers(service: LocalInferenceService) -> AsyncIterator[ServerAddresses]:
    replica = ReplicaServers(
        service, host="127.0.0.1", http_port=0, grpc_port=0, max_request_bytes=1 << 20, drain_seconds=0.5
    )
    addresses = await replica.start()
    yield addresses
    await replica.stop()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


async def good(port: int) -> bytes:
    head = b"POST /v2/models/add/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    return await exchange(port, head % len(GOOD) + GOOD)


async def test_an_endless_header_is_cut_off_at_the_bound(servers: ServerAddresses) -> None:
    """The server answers 431 and closes once the head passes the bound; a client still sending
    may see the close as a reset (its unread bytes), never a server that keeps buffering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.http_port)
    sent, answer = 0, b""
    try:
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Junk: ")
        while sent < 64 * 1024 * 1024:
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
        answer = await asyncio.wait_for(reader.read(4096), 10)
    except ConnectionError:
        try:
            answer = await asyncio.wait_for(reader.read(4096), 10)
        except ConnectionError:
            answer = b"reset"
    finally:
        writer.close()
    assert sent < 16 * 1024 * 1024, sent  # cut off near the bound (plus what the kernels buffer)
    assert answer.startswith(b"HTTP/1.1 431") or answer in (b"", b"reset"), answer[:100]
    if answer.startswith(b"HTTP/1.1 431"):
        assert f"exceed {MAX_HEAD_BYTES} bytes".encode() in answer
    assert (await good(servers.http_port)).startswith(b"HTTP/1.1 200")


async def test_a_finished_large_head_gets_the_applications_431(servers: ServerAddresses) -> None:
    head = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Junk: " + b"a" * 70000 + b"\r\nConnection: close\r\n\r\n"
    answer = await exchange(servers.http_port, head)
    assert answer.startswith(b"HTTP/1.1 431") and b'"error"' in answer
    assert (await good(servers.http_port)).startswith(b"HTTP/1.1 200")


async def test_grpc_metadata_over_the_bound_is_refused(servers: ServerAddresses) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-junk", "a" * 100_000),), timeout=10)
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
