"""Helpers shared by the adapter tests (real servers, ephemeral ports)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from serving import codecs
from serving.control.admin import OperatorCommands
from serving.protocol.grpc_frontends import FrontEndKind, GrpcFrontEnd, GrpcPort, front_end
from serving.protocol.grpc_v2 import GrpcAdapter
from serving.protocol.http import build_http_app
from serving.service.api import InferenceService

MAX_REQUEST_BYTES = 1 << 20
"""The body limit the adapter tests configure."""


def operator_commands(svc: InferenceService) -> OperatorCommands | None:
    """The commands a repository-backed service was built with (``LocalInferenceService.admin``),
    wired to the adapters beside the service as the deploy layer wires them."""
    admin: OperatorCommands | None = getattr(svc, "admin", None)
    return admin


async def http_client_for(svc: InferenceService) -> httpx.AsyncClient:
    app = build_http_app(svc, max_request_bytes=MAX_REQUEST_BYTES, admin=operator_commands(svc))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


UNBOUNDED_STREAMS = 2**31 - 1
GRPC_FRONT_ENDS: tuple[FrontEndKind, ...] = ("compiled", "aio")
"""Every gRPC adapter test runs over both front ends: the compiled one and grpc.aio, its fallback."""


async def start_grpc(
    svc: InferenceService, kind: FrontEndKind = "auto", adapter: GrpcAdapter | None = None
) -> tuple[GrpcFrontEnd, str]:
    """A gRPC front end serving ``adapter`` (default: an open one over ``svc``) on an ephemeral port,
    with no bound on a connection's concurrent calls (grpc's default; the servers' own bound is
    tested through ReplicaServers)."""
    adapter = adapter or GrpcAdapter(svc, admin=operator_commands(svc))
    server = front_end(kind, adapter, MAX_REQUEST_BYTES, UNBOUNDED_STREAMS)
    (port,) = await server.start([GrpcPort("127.0.0.1:0")])
    return server, f"127.0.0.1:{port}"


def identity_values(datatype: str) -> np.ndarray[Any, Any]:
    """A [2, 2] tensor of ``datatype`` with distinct values (non-ASCII BYTES included)."""
    if datatype == "BYTES":
        return np.array([[b"ab", b""], [b"\xc3\xa9", b"xyz"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.array([[0, 1], [2, 3]]).astype(codecs.numpy_dtype(datatype))
